import CZlib

/// Why an inflate (or any codec) failed, in words for an error message.
struct InflateFailure: Error {
    let message: String
}

/// zlib's inflate over whole buffers: the output size is known in advance and must come out exactly.
enum Inflater {
    enum Format {
        /// Bare deflate, as inside ZIP entries.
        case raw
        /// RFC 1950 zlib stream (numcodecs `Zlib`).
        case zlib
        /// RFC 1952 gzip member (numcodecs `GZip`).
        case gzip

        var windowBits: Int32 {
            switch self {
            case .raw: -15
            case .zlib: 15
            case .gzip: 31
            }
        }
    }

    static func inflate(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer, format: Format) throws(InflateFailure) {
        // z_stream counts in 32-bit `uInt`; chunks and ZIP entries that large are not ours to read.
        guard source.count <= Int(UInt32.max), destination.count <= Int(UInt32.max) else {
            throw InflateFailure(message: "buffer larger than 4 GiB")
        }
        var stream = z_stream()
        // inflateInit2 is a C macro; call the function it expands to.
        let initResult = inflateInit2_(&stream, format.windowBits, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        guard initResult == Z_OK else { throw InflateFailure(message: "inflateInit2 failed (\(initResult))") }
        defer { inflateEnd(&stream) }

        // zlib takes non-const pointers but never writes through next_in.
        stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(source.count)
        stream.next_out = destination.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(destination.count)
        var spare: UInt8 = 0
        while true {
            let result = CZlib.inflate(&stream, Z_FINISH)
            switch result {
            case Z_STREAM_END:
                let produced = destination.count - Int(stream.avail_out)
                guard produced == destination.count else {
                    throw InflateFailure(message: "inflated to \(produced) bytes, expected \(destination.count)")
                }
                return
            case Z_OK, Z_BUF_ERROR:
                if stream.avail_out == 0 && stream.avail_in > 0 {
                    // Output is full but input remains: probe one more byte to tell "too long" from
                    // a stream that only has its trailer left.
                    let extra = withUnsafeMutablePointer(to: &spare) { pointer -> Int32 in
                        stream.next_out = pointer
                        stream.avail_out = 1
                        return CZlib.inflate(&stream, Z_FINISH)
                    }
                    if extra == Z_STREAM_END && stream.avail_out == 1 { return }
                    throw InflateFailure(message: "inflates to more than the expected \(destination.count) bytes")
                }
                if stream.avail_in == 0 {
                    throw InflateFailure(message: "data ends early (\(destination.count - Int(stream.avail_out)) of \(destination.count) bytes)")
                }
            default:
                let detail = stream.msg.map { String(cString: $0) } ?? "zlib error \(result)"
                throw InflateFailure(message: detail)
            }
        }
    }
}
