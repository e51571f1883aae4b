import CZstd

/// numcodecs `Zstd`: one or more zstd frames.
final class ZstdCodec: ChunkCodec {
    let level: Int
    /// Reused across chunks: creating a decompression context per chunk costs an allocation of ~100 KiB.
    private let context: OpaquePointer?

    init(level: Int) {
        self.level = level
        context = ZSTD_createDCtx()
    }

    deinit { ZSTD_freeDCtx(context) }

    var summary: String { "zstd(level=\(level))" }

    func decode(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(CodecFailure) {
        guard let input = source.baseAddress else { throw CodecFailure(message: "empty zstd chunk") }
        let declared = ZSTD_getFrameContentSize(input, source.count)
        if declared == ZSTD_CONTENTSIZE_ERROR {
            throw CodecFailure(message: "not a zstd frame")
        }
        if declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != UInt64(destination.count) {
            throw CodecFailure(message: "zstd frame says \(declared) bytes, expected \(destination.count)")
        }
        var spare: UInt8 = 0
        let result = withUnsafeMutablePointer(to: &spare) { fallback in
            ZSTD_decompressDCtx(context, destination.baseAddress ?? UnsafeMutableRawPointer(fallback), destination.count, input, source.count)
        }
        if ZSTD_isError(result) != 0 {
            throw CodecFailure(message: "zstd: \(String(cString: ZSTD_getErrorName(result)))")
        }
        guard result == destination.count else {
            throw CodecFailure(message: "zstd produced \(result) bytes, expected \(destination.count)")
        }
    }
}
