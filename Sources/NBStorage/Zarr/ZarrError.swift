import NBVocabulary

/// Why a Zarr group, array or chunk could not be read. Every case names the file (the store's path) and,
/// where it applies, the array and the chunk key, so a log line points at the exact object at fault.
/// Names come from files: `description` and `location` pass them through `displayText`, so a name with
/// escape sequences reaches a terminal, a log, `ctl status` or a protocol error as visible text.
public enum ZarrError: Error, CustomStringConvertible, Sendable {
    /// The store itself could not be opened or read.
    case store(file: String, reason: String)
    /// Neither `.zgroup` nor any array at the root.
    case notAGroup(file: String)
    /// No `.zarray` for the array asked for.
    case missingArray(file: String, array: String, available: [String])
    /// `.zarray` is missing, not JSON, or inconsistent.
    case invalidMetadata(file: String, array: String, reason: String)
    /// A valid Zarr feature nb-serve does not implement (dtype, codec, filters, order).
    case unsupported(file: String, array: String, feature: String)
    /// A stored chunk that does not decode to exactly one chunk of data.
    case corruptChunk(file: String, array: String, key: String, reason: String)
    /// A region outside the array's shape.
    case badRegion(file: String, array: String, reason: String)

    public var description: String { displayText(rawDescription) }

    private var rawDescription: String {
        switch self {
        case .store(let file, let reason):
            return "\(file): \(reason)"
        case .notAGroup(let file):
            return "\(file): not a Zarr v2 group (no .zgroup and no arrays at its root)"
        case .missingArray(let file, let array, let available):
            let known = available.isEmpty ? "it has no arrays" : "it has: \(available.joined(separator: ", "))"
            return "\(file): no array '\(array)' (\(known))"
        case .invalidMetadata(let file, let array, let reason):
            return "\(file): array '\(array)': invalid .zarray: \(reason)"
        case .unsupported(let file, let array, let feature):
            return "\(file): array '\(array)': unsupported \(feature)"
        case .corruptChunk(let file, let array, let key, let reason):
            return "\(file): array '\(array)' chunk '\(key)': \(reason)"
        case .badRegion(let file, let array, let reason):
            return "\(file): array '\(array)': \(reason)"
        }
    }

    /// The error split into what a protocol message reports: file, array (may be empty), chunk key (may
    /// be empty) and the reason on its own.
    public var location: (file: String, array: String, chunk: String, reason: String) {
        let (file, array, chunk, reason) = rawLocation
        return (displayText(file), displayText(array), displayText(chunk), displayText(reason))
    }

    private var rawLocation: (file: String, array: String, chunk: String, reason: String) {
        switch self {
        case .store(let file, let reason): return (file, "", "", reason)
        case .notAGroup(let file): return (file, "", "", "not a Zarr v2 group")
        case .missingArray(let file, let array, _): return (file, array, "", "no such array")
        case .invalidMetadata(let file, let array, let reason): return (file, array, "", "invalid .zarray: \(reason)")
        case .unsupported(let file, let array, let feature): return (file, array, "", "unsupported \(feature)")
        case .corruptChunk(let file, let array, let key, let reason): return (file, array, key, reason)
        case .badRegion(let file, let array, let reason): return (file, array, "", reason)
        }
    }
}
