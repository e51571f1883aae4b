/// Turns one stored Zarr chunk back into its raw bytes.
///
/// Every codec writes exactly `destination.count` bytes (the chunk's size from `.zarray`) or throws; sizes
/// recorded inside compressed data are checked against it before anything is written, so a corrupt or
/// hostile header never sizes an allocation.
public protocol ChunkCodec {
    /// The codec's settings as `inspect` prints them, e.g. `blosc(cname=lz4, clevel=5, shuffle=byte)`.
    var summary: String { get }
    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure)
}

/// Why a chunk did not decode.
public struct CodecFailure: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Chunks stored without a compressor (`"compressor": null`): the bytes are the chunk.
struct RawCodec: ChunkCodec {
    var summary: String { "none" }

    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure) {
        guard source.count == destination.count else {
            throw CodecFailure(message: "uncompressed chunk has \(source.count) bytes, expected \(destination.count)")
        }
        if let from = source.baseAddress, let to = destination.baseAddress { to.copyMemory(from: from, byteCount: source.count) }
    }
}

/// numcodecs `Zlib` and `GZip`.
struct ZlibCodec: ChunkCodec {
    let gzip: Bool
    let level: Int?

    var summary: String { "\(gzip ? "gzip" : "zlib")(level=\(level.map(String.init) ?? "?"))" }

    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure) {
        do {
            try Inflater.inflate(source, into: destination, format: gzip ? .gzip : .zlib)
        } catch {
            throw CodecFailure(message: "\(gzip ? "gzip" : "zlib") data: \(error.message)")
        }
    }
}
