import NBVocabulary

/// Builds the codec a `.zarray` `compressor` object names, checking its settings.
public enum CodecRegistry {
    /// The `id`s nb-serve decodes.
    public static let supportedIDs = ["blosc", "zstd", "lz4", "zlib", "gzip"]

    /// The codec for `compressor` (nil: chunks stored raw); `file`/`array` name the source in errors.
    public static func codec(for compressor: JSONValue?, file: String, array: String) throws(ZarrError) -> any ChunkCodec {
        guard let compressor else { return RawCodec() }
        guard case .object = compressor, let id = compressor["id"]?.stringValue else {
            throw .invalidMetadata(file: file, array: array, reason: "compressor \(compressor) has no string 'id'")
        }
        func integer(_ key: String, default fallback: Int) throws(ZarrError) -> Int {
            guard let value = compressor[key], value != .null else { return fallback }
            guard let number = value.intValue else {
                throw .invalidMetadata(file: file, array: array, reason: "compressor \(id): '\(key)' is \(value), not an integer")
            }
            return number
        }
        switch id {
        case "blosc":
            let cname = compressor["cname"]?.stringValue ?? "lz4"
            guard ["blosclz", "lz4", "lz4hc", "zlib", "zstd", "snappy"].contains(cname) else {
                throw .unsupported(file: file, array: array, feature: "blosc cname '\(cname)'")
            }
            let shuffle = try integer("shuffle", default: 1)
            guard (-1...2).contains(shuffle) else {
                throw .invalidMetadata(file: file, array: array, reason: "blosc shuffle \(shuffle) is not -1, 0, 1 or 2")
            }
            return BloscCodec(
                cname: cname, clevel: try integer("clevel", default: 5), shuffle: shuffle,
                blocksize: try integer("blocksize", default: 0))
        case "zstd":
            return ZstdCodec(level: try integer("level", default: 1))
        case "lz4":
            return LZ4Codec(acceleration: try integer("acceleration", default: 1))
        case "zlib", "gzip":
            return ZlibCodec(gzip: id == "gzip", level: try integer("level", default: -1))
        default:
            throw .unsupported(file: file, array: array, feature: "compressor '\(id)' (supported: \(supportedIDs.joined(separator: ", ")), or none)")
        }
    }
}
