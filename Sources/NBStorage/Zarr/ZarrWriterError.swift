/// Why a Zarr v2 group or array could not be written. Every case names the store's file and, where it
/// applies, the array and the chunk key.
public enum ZarrWriterError: Error, CustomStringConvertible, Sendable {
    /// The underlying ZIP archive could not be written.
    case zip(ZipWriterError)
    /// An array definition that Zarr v2 cannot express, or a second array of the same name.
    case invalidArray(file: String, array: String, reason: String)
    /// Chunk data of the wrong size or at an index outside the chunk grid.
    case invalidChunk(file: String, array: String, key: String, reason: String)
    /// The compressor refused the chunk.
    case compression(file: String, array: String, key: String, reason: String)

    public var description: String {
        switch self {
        case .zip(let error):
            return error.description
        case .invalidArray(let file, let array, let reason):
            return "\(file): cannot write array '\(array)': \(reason)"
        case .invalidChunk(let file, let array, let key, let reason):
            return "\(file): array '\(array)' chunk '\(key)': \(reason)"
        case .compression(let file, let array, let key, let reason):
            return "\(file): array '\(array)' chunk '\(key)': compression failed: \(reason)"
        }
    }
}
