import Foundation
import NBStorage
import NBVocabulary

/// How `inspect` prints array summaries: an aligned table for people, JSON for programs.
enum InspectReport {
    static func table(path: String, _ summaries: [ArraySummary]) -> String {
        let header = ["array", "shape", "dtype", "chunks", "codec", "stored", "uncompressed", "ratio"]
        let rows = summaries.map { summary -> [String] in
            [
                // Names come from the file: escape sequences in them are printed, never interpreted.
                summary.name.isEmpty ? "(root)" : displayText(summary.name),
                tuple(summary.metadata.shape),
                summary.metadata.dataType.numpyName,
                tuple(summary.metadata.chunks),
                summary.codec,
                bytes(summary.storedBytes),
                bytes(summary.byteCount),
                summary.ratio.map { String(format: "%.2f", $0) } ?? "-",
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            zip(cells, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        let stored = summaries.reduce(0) { $0 + $1.storedBytes }
        let total = summaries.reduce(0) { $0 + $1.byteCount }
        return ([
            "\(displayText(path)): \(summaries.count) arrays, \(bytes(stored)) stored, \(bytes(total)) uncompressed",
            line(header),
        ] + rows.map(line)).joined(separator: "\n")
    }

    static func json(_ summaries: [ArraySummary]) -> String {
        var arrays: [String: JSONValue] = [:]
        for summary in summaries {
            let metadata = summary.metadata
            arrays[summary.name] = .object([
                "shape": .array(metadata.shape.map { .int(Int64($0)) }),
                "chunks": .array(metadata.chunks.map { .int(Int64($0)) }),
                "dtype": .string(metadata.dataType.numpyName),
                "typestr": .string(metadata.dataType.littleEndianTypestr),
                "byteorder": .string(metadata.dataType.isBigEndian ? "big" : "little"),
                "compressor": metadata.compressor ?? .null,
                "fill_value": metadata.fillValue,
                "stored_bytes": .int(Int64(summary.storedBytes)),
                "nbytes": .int(Int64(summary.byteCount)),
                "chunks_stored": .int(Int64(summary.storedChunks)),
                "chunks_total": .int(Int64(summary.totalChunks)),
            ])
        }
        return JSONValue.object(["arrays": .object(arrays)]).description
    }

    /// A shape as NumPy prints it: `(3,)`, `(2, 4)`, `()`.
    static func tuple(_ values: [Int]) -> String {
        values.count == 1 ? "(\(values[0]),)" : "(" + values.map(String.init).joined(separator: ", ") + ")"
    }

    /// Bytes in binary units, e.g. `12.3 MiB`.
    static func bytes(_ count: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }
}
