import ArgumentParser
import Foundation
import NBStorage
import NBSystem

extension NBServe {
    /// `nb-serve inspect PATH`: what a Zarr v2 group holds, and whether every chunk decodes.
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the arrays of a Zarr v2 group (a .zip ZipStore or a directory), verify or export them.",
            discussion: """
                Exit status: 0 on success, 1 when the store, an array or a chunk cannot be read (or --verify \
                finds a bad chunk), 2 on a command-line error.
                """
        )

        @Argument(help: "A ZIP file written by zarr's ZipStore, or a directory written by its DirectoryStore.")
        var path: String

        @Flag(help: "Print one JSON object {\"arrays\": {NAME: {shape, dtype, chunks, compressor, …}}}.")
        var json = false

        @Flag(help: "Decode every stored chunk (and check ZIP CRCs); list each bad chunk and exit 1 if any fails.")
        var verify = false

        @Option(help: "The array to export with --npy (nested arrays by path, e.g. sub/array).")
        var array: String?

        @Option(help: ArgumentHelp("Write the array, decoded, to this .npy file (NumPy format 1.0, little-endian, C order).", valueName: "file"))
        var npy: String?

        @Option(parsing: .unconditional, help: ArgumentHelp("Export only this NumPy-style selection, e.g. '3,:,0:64,0:64' (an index drops its axis).", valueName: "selection"))
        var region: String?

        @Option(help: ArgumentHelp("Export many selections in one run: each line of this file is ARRAY<tab>SELECTION<tab>OUT.npy (an empty SELECTION is the whole array); a line that fails is reported with its line number and the others are still written.", valueName: "file"))
        var regions: String?

        func validate() throws {
            if regions != nil && (array != nil || npy != nil || region != nil || json || verify) {
                throw ValidationError("--regions goes alone (no --array, --npy, --region, --json or --verify).")
            }
            if (array == nil) != (npy == nil) { throw ValidationError("--array and --npy go together.") }
            if region != nil && npy == nil { throw ValidationError("--region needs --array and --npy.") }
            if let region, Region(parsing: region) == nil {
                throw ValidationError("--region '\(region)' is not a selection like '0,:,2:5'.")
            }
        }

        func run() throws {
            do {
                if let regions {
                    let exports = try RegionList(path: regions)
                    try exportAll(exports, from: ZarrGroup(path: path))
                    return
                }
                let group = try ZarrGroup(path: path)
                if let array, let npy {
                    let selected = try group.array(array)
                    let shape = try selected.exportNpy(region.flatMap(Region.init(parsing:)) ?? .all, to: npy)
                    printError("wrote \(npy): \(selected.dataType) \(shape)")
                    return
                }
                let summaries = try group.arrayNames.map { name in try ArraySummary(group.array(name)) }
                if json {
                    print(InspectReport.json(summaries))
                } else {
                    print(InspectReport.table(path: path, summaries))
                }
                if verify { try verifyAll(group) }
            } catch let error as ZarrError {
                printError("error: \(error)")
                throw ExitCode.failure
            } catch let error as SystemCallError {
                printError("error: \(error)")
                throw ExitCode.failure
            }
        }

        /// Writes every export of the list, reporting each one that fails (with its line) and going on.
        private func exportAll(_ exports: RegionList, from group: ZarrGroup) throws {
            var arrays: [String: ZarrArray] = [:]
            var failures = 0
            for export in exports.lines {
                do {
                    let selected: ZarrArray
                    if let opened = arrays[export.array] {
                        selected = opened
                    } else {
                        selected = try group.array(export.array)
                        arrays[export.array] = selected
                    }
                    _ = try selected.exportNpy(export.region, to: export.output)
                } catch let error as ZarrError {
                    printError("error: \(exports.path):\(export.line): \(error)")
                    failures += 1
                } catch let error as SystemCallError {
                    printError("error: \(exports.path):\(export.line): \(error)")
                    failures += 1
                }
            }
            if failures > 0 {
                printError("regions: \(failures) of \(exports.lines.count) exports failed")
                throw ExitCode.failure
            }
            printError("regions: wrote \(exports.lines.count) exports")
        }

        private func verifyAll(_ group: ZarrGroup) throws {
            var failures = 0
            var chunks = 0
            for name in group.arrayNames {
                let array = try group.array(name)
                array.verifyChecksums = true
                chunks += try array.storedChunkKeys().count
                for failure in try array.verify() {
                    printError("error: \(failure)")
                    failures += 1
                }
            }
            if failures > 0 {
                printError("verify: \(failures) of \(chunks) chunks failed in \(path)")
                throw ExitCode.failure
            }
            printError("verify: all \(chunks) chunks of \(group.arrayNames.count) arrays decode")
        }
    }
}

/// The exports `inspect --regions FILE` reads: one `ARRAY<tab>SELECTION<tab>OUT.npy` per line.
struct RegionList {
    struct Export {
        let line: Int
        let array: String
        let region: Region
        let output: String
    }

    let path: String
    let lines: [Export]

    /// Reads and parses the whole list first, so that a malformed line is a usage error (exit 2) before
    /// anything is written.
    init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("--regions: cannot read '\(path)'.")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--regions: '\(path)' is not UTF-8 text.")
        }
        var lines: [Export] = []
        for (offset, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 3, !fields[0].isEmpty, !fields[2].isEmpty else {
                throw ValidationError("--regions: \(path):\(offset + 1): expected ARRAY<tab>SELECTION<tab>OUT.npy.")
            }
            let region: Region
            if fields[1].isEmpty {
                region = .all
            } else if let parsed = Region(parsing: fields[1]) {
                region = parsed
            } else {
                throw ValidationError("--regions: \(path):\(offset + 1): '\(fields[1])' is not a selection like '0,:,2:5'.")
            }
            lines.append(Export(line: offset + 1, array: fields[0], region: region, output: fields[2]))
        }
        self.path = path
        self.lines = lines
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
