import CLZ4

/// numcodecs `LZ4`: a 4-byte little-endian uncompressed size, then one LZ4 block.
struct LZ4Codec: ChunkCodec {
    let acceleration: Int

    var summary: String { "lz4(acceleration=\(acceleration))" }

    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure) {
        guard source.count >= 4, let input = source.baseAddress else {
            throw CodecFailure(message: "lz4 chunk of \(source.count) bytes has no size header")
        }
        let declared = Int(UInt32(littleEndian: source.loadUnaligned(as: UInt32.self)))
        guard declared == destination.count else {
            throw CodecFailure(message: "lz4 header says \(declared) bytes, expected \(destination.count)")
        }
        guard destination.count <= Int(Int32.max), source.count - 4 <= Int(Int32.max) else {
            throw CodecFailure(message: "lz4 block larger than 2 GiB")
        }
        if destination.count == 0 { return }
        let produced = LZ4_decompress_safe(
            (input + 4).assumingMemoryBound(to: CChar.self),
            destination.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(source.count - 4), Int32(destination.count))
        guard produced == Int32(destination.count) else {
            throw CodecFailure(message: produced < 0 ? "lz4 block is corrupt" : "lz4 produced \(produced) bytes, expected \(destination.count)")
        }
    }
}
