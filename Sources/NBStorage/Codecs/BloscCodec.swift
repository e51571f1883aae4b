import CBlosc

/// numcodecs `Blosc`: every compressor libblosc was built with, any shuffle mode.
/// The settings in `.zarray` are informational; each chunk's own header says how it was written.
struct BloscCodec: ChunkCodec {
    let cname: String
    let clevel: Int
    let shuffle: Int
    let blocksize: Int

    var summary: String {
        let shuffleName = [-1: "auto", 0: "none", 1: "byte", 2: "bit"][shuffle] ?? String(shuffle)
        return "blosc(cname=\(cname), clevel=\(clevel), shuffle=\(shuffleName)\(blocksize != 0 ? ", blocksize=\(blocksize)" : ""))"
    }

    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure) {
        guard let input = source.baseAddress, source.count >= 16 else {
            throw CodecFailure(message: "blosc chunk of \(source.count) bytes is shorter than its 16-byte header")
        }
        // Validates the header and that the compressed length it claims fits in what we have.
        var claimed = 0
        guard blosc_cbuffer_validate(input, source.count, &claimed) == 0 else {
            throw CodecFailure(message: "blosc header is invalid or claims more data than the \(source.count) stored bytes")
        }
        guard claimed == destination.count else {
            throw CodecFailure(message: "blosc header says \(claimed) bytes, expected \(destination.count)")
        }
        if destination.count == 0 { return }
        // The _ctx variant keeps no global state, so decoding is safe from any thread, one at a time each.
        let produced = blosc_decompress_ctx(input, destination.baseAddress, destination.count, 1)
        guard produced == destination.count else {
            let compressor = blosc_cbuffer_complib(input).map { String(cString: $0) } ?? "unknown"
            throw CodecFailure(message: "blosc (\(compressor)) decompression failed (\(produced))")
        }
    }
}
