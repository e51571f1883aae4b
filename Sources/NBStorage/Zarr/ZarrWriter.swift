import CBlosc
import NBVocabulary

/// numcodecs' `Blosc` compressor settings, as written into `.zarray`.
public struct BloscCompressor: Sendable, Equatable {
    /// One of libblosc's compressors: blosclz, lz4, lz4hc, zlib, zstd.
    public let cname: String
    public let clevel: Int
    /// 0 none, 1 byte shuffle, 2 bit shuffle (numcodecs' NOSHUFFLE, SHUFFLE, BITSHUFFLE).
    public let shuffle: Int
    /// 0: libblosc chooses.
    public let blocksize: Int

    public init(cname: String, clevel: Int, shuffle: Int, blocksize: Int = 0) {
        self.cname = cname
        self.clevel = clevel
        self.shuffle = shuffle
        self.blocksize = blocksize
    }

    /// What noisebase's format page asks for ("level 9 LZ4HC"): `Blosc(cname='lz4hc', clevel=9, shuffle=SHUFFLE)`.
    public static let noisebase = BloscCompressor(cname: "lz4hc", clevel: 9, shuffle: 1)

    /// The `compressor` object zarr-python writes for these settings.
    public var json: JSONValue {
        .object([
            "blocksize": .int(Int64(blocksize)), "clevel": .int(Int64(clevel)), "cname": .string(cname),
            "id": .string("blosc"), "shuffle": .int(Int64(shuffle)),
        ])
    }
}

/// Writes a Zarr v2 group into a `ZipWriter` the way zarr-python 2.x does: `.zgroup`, then for each array
/// its `.zarray` (the same fields, key order and indentation zarr-python writes) and its chunks, each
/// Blosc-compressed, edge chunks padded with the fill value (zero).
///
/// The caller finishes the `ZipWriter` once every array is written.
public final class ZarrWriter {
    public let zip: ZipWriter
    private var arrays: Set<String> = []

    /// Writes `.zgroup` (and `.zattrs` when `attributes` is given).
    public init(zip: ZipWriter, attributes: [String: JSONValue]? = nil) throws(ZarrWriterError) {
        self.zip = zip
        do {
            try zip.add(".zgroup", bytes: Array(PythonJSON.format(.object(["zarr_format": .int(2)])).utf8))
            if let attributes {
                try zip.add(".zattrs", bytes: Array(PythonJSON.format(.object(attributes)).utf8))
            }
        } catch {
            throw .zip(error)
        }
    }

    /// Writes `name/.zarray` and returns the writer for the array's chunks.
    public func createArray(
        _ name: String, shape: [Int], chunks: [Int], dataType: DataType, compressor: BloscCompressor?
    ) throws(ZarrWriterError) -> ZarrArrayWriter {
        func invalid(_ reason: String) -> ZarrWriterError { .invalidArray(file: zip.path, array: name, reason: reason) }
        guard !name.isEmpty, !name.hasPrefix("."), !name.contains("/") else {
            throw invalid("an array name must be non-empty, without '/' and not start with '.'")
        }
        guard !arrays.contains(name) else { throw invalid("an array of this name was already written") }
        guard shape.count == chunks.count else { throw invalid("shape \(shape) and chunks \(chunks) have different lengths") }
        guard shape.allSatisfy({ $0 >= 0 }), chunks.allSatisfy({ $0 >= 1 }) else {
            throw invalid("shape \(shape) must be ≥ 0 and chunks \(chunks) ≥ 1")
        }
        // Blosc holds less than 2 GiB per chunk, and readers (ours included) refuse larger chunks.
        var chunkBytes = dataType.itemSize
        for extent in chunks {
            let (product, overflow) = chunkBytes.multipliedReportingOverflow(by: extent)
            guard !overflow, product <= Int(Int32.max) - Int(BLOSC_MAX_OVERHEAD) else {
                throw invalid("chunks \(chunks) of \(dataType.itemSize)-byte items exceed what one Blosc chunk holds")
            }
            chunkBytes = product
        }
        if let compressor {
            guard ["blosclz", "lz4", "lz4hc", "zlib", "zstd"].contains(compressor.cname),
                  (0...9).contains(compressor.clevel), (0...2).contains(compressor.shuffle), compressor.blocksize >= 0
            else { throw invalid("unsupported Blosc settings \(compressor.json)") }
        }
        let fill: JSONValue = switch dataType.kind {
        case .bool: .bool(false)
        case .float: .double(0)
        case .signed, .unsigned: .int(0)
        }
        let metadata: JSONValue = .object([
            "chunks": .array(chunks.map { .int(Int64($0)) }),
            "compressor": compressor?.json ?? .null,
            "dtype": .string(dataType.littleEndianTypestr),
            "fill_value": fill,
            "filters": .null,
            "order": .string("C"),
            "shape": .array(shape.map { .int(Int64($0)) }),
            "zarr_format": .int(2),
        ])
        do {
            try zip.add("\(name)/.zarray", bytes: Array(PythonJSON.format(metadata).utf8))
        } catch {
            throw .zip(error)
        }
        arrays.insert(name)
        return ZarrArrayWriter(
            zip: zip, name: name, shape: shape, chunks: chunks, dataType: dataType, compressor: compressor,
            chunkByteCount: chunkBytes)
    }
}

/// Writes the chunks of one array created by `ZarrWriter.createArray`.
public final class ZarrArrayWriter {
    public let name: String
    public let shape: [Int]
    public let chunks: [Int]
    public let dataType: DataType
    public let compressor: BloscCompressor?
    /// Bytes of one (whole) chunk.
    public let chunkByteCount: Int
    private let zip: ZipWriter
    private var compressed: [UInt8] = []

    init(zip: ZipWriter, name: String, shape: [Int], chunks: [Int], dataType: DataType, compressor: BloscCompressor?, chunkByteCount: Int) {
        self.zip = zip
        self.name = name
        self.shape = shape
        self.chunks = chunks
        self.dataType = dataType
        self.compressor = compressor
        self.chunkByteCount = chunkByteCount
    }

    /// Number of chunks along each dimension.
    public var chunkGrid: [Int] { zip_(shape, chunks).map { ($0 + $1 - 1) / $1 } }

    /// The store key of the chunk at `index` (e.g. `color/3.0.0.0.1`).
    public func key(_ index: [Int]) -> String {
        "\(name)/" + (index.isEmpty ? "0" : index.map(String.init).joined(separator: "."))
    }

    /// Compresses and stores one whole chunk: `bytes` holds the chunk in C order, `chunkByteCount` bytes,
    /// edge chunks padded to full size.
    public func writeChunk(_ index: [Int], _ bytes: UnsafeRawBufferPointer) throws(ZarrWriterError) {
        let key = key(index)
        let grid = chunkGrid
        guard index.count == grid.count, zip_(index, grid).allSatisfy({ $0 >= 0 && $0 < $1 }) else {
            throw .invalidChunk(file: zip.path, array: name, key: key, reason: "index \(index) lies outside the chunk grid \(grid)")
        }
        guard bytes.count == chunkByteCount else {
            throw .invalidChunk(file: zip.path, array: name, key: key, reason: "\(bytes.count) bytes given, a chunk has \(chunkByteCount)")
        }
        guard let compressor else {
            do throws(ZipWriterError) { try zip.add(key, contents: bytes) } catch { throw .zip(error) }
            return
        }
        let capacity = bytes.count + Int(BLOSC_MAX_OVERHEAD)
        if compressed.count < capacity { compressed = [UInt8](repeating: 0, count: capacity) }
        // The _ctx variant keeps no global state (safe while other threads compress), and one internal
        // thread makes the output independent of the machine; numcodecs calls the same function.
        let produced = compressed.withUnsafeMutableBytes { destination in
            blosc_compress_ctx(
                Int32(compressor.clevel), Int32(compressor.shuffle), dataType.itemSize, bytes.count,
                bytes.baseAddress, destination.baseAddress, capacity, compressor.cname, compressor.blocksize, 1)
        }
        guard produced > 0 else {
            throw .compression(file: zip.path, array: name, key: key, reason: "blosc_compress_ctx returned \(produced)")
        }
        let failure: ZipWriterError? = compressed.withUnsafeBytes { buffer in
            do throws(ZipWriterError) { try zip.add(key, contents: UnsafeRawBufferPointer(rebasing: buffer[0..<Int(produced)])) } catch { return error }
            return nil
        }
        if let failure { throw .zip(failure) }
    }

    /// Writes the whole array from `data` (C order, native little-endian), chunk by chunk in C order of
    /// the chunk grid, as zarr-python does for `create_dataset(data=...)`.
    public func write(_ data: UnsafeRawBufferPointer) throws(ZarrWriterError) {
        let total = shape.reduce(dataType.itemSize, *)
        guard data.count == total else {
            throw .invalidArray(file: zip.path, array: name, reason: "\(data.count) bytes given for shape \(shape) of \(dataType), which has \(total)")
        }
        let grid = chunkGrid
        if grid.contains(0) { return }
        var chunk = [UInt8](repeating: 0, count: chunkByteCount)
        var index = [Int](repeating: 0, count: grid.count)
        while true {
            let origin = zip_(index, chunks).map { $0 * $1 }
            let extent = zip_(origin, zip_(shape, chunks)).map { Swift.min($1.1, $1.0 - $0) }
            let failure: ZarrWriterError? = chunk.withUnsafeMutableBytes { destination in
                // Edge chunks: the part outside the array holds the fill value (zero).
                if extent != chunks { destination.initializeMemory(as: UInt8.self, repeating: 0) }
                BlockCopy(
                    itemSize: dataType.itemSize, extent: extent, sourceShape: shape, sourceOrigin: origin,
                    destinationShape: chunks, destinationOrigin: [Int](repeating: 0, count: chunks.count)
                ).copy(from: data, to: destination)
                do throws(ZarrWriterError) { try writeChunk(index, UnsafeRawBufferPointer(destination)) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            var d = grid.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < grid[d] { break }
                index[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }
}

/// `zip` under another name: `ZarrArrayWriter` has a property called `zip`.
private func zip_<A: Sequence, B: Sequence>(_ a: A, _ b: B) -> Zip2Sequence<A, B> { zip(a, b) }

/// JSON text as Python's `json.dumps(value, indent=4, sort_keys=True, ensure_ascii=True)` writes it, which
/// is how zarr-python 2.x writes `.zgroup`, `.zarray` and `.zattrs`.
enum PythonJSON {
    static func format(_ value: JSONValue) -> String {
        var out = ""
        write(value, level: 0, into: &out)
        return out
    }

    private static func write(_ value: JSONValue, level: Int, into out: inout String) {
        let indent = String(repeating: " ", count: 4 * (level + 1))
        let closing = String(repeating: " ", count: 4 * level)
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .int(let number): out += String(number)
        case .uint(let number): out += String(number)
        case .double(let number):
            // Python writes the shortest repr that round-trips, as Swift does; non-finite values as bare words.
            if number.isNaN { out += "NaN" } else if number.isInfinite { out += number > 0 ? "Infinity" : "-Infinity" } else { out += "\(number)" }
        case .string(let text): out += quote(text)
        case .array(let values):
            if values.isEmpty { out += "[]"; return }
            out += "[\n"
            for (position, element) in values.enumerated() {
                out += indent
                write(element, level: level + 1, into: &out)
                out += position + 1 < values.count ? ",\n" : "\n"
            }
            out += closing + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{\n"
            let keys = members.keys.sorted()
            for (position, key) in keys.enumerated() {
                out += indent + quote(key) + ": "
                write(members[key]!, level: level + 1, into: &out)
                out += position + 1 < keys.count ? ",\n" : "\n"
            }
            out += closing + "}"
        }
    }

    /// A JSON string with every non-ASCII character escaped (`ensure_ascii`), UTF-16 surrogate pairs included.
    private static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{8}": out += "\\b"
            case "\u{c}": out += "\\f"
            case _ where scalar.value < 0x20 || scalar.value > 0x7e:
                for unit in String(scalar).utf16 {
                    let hex = String(unit, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                }
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
