import NBSystem
import NBVocabulary

/// Why a ZIP archive could not be opened or one of its entries read. Every case names the file.
public enum ZipError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file could not be opened or mapped.
    case io(SystemCallError)
    /// No end-of-central-directory record: not a ZIP file, or truncated at the end.
    case notAZip(file: String, reason: String)
    /// The central directory or a local header is inconsistent with the file.
    case corrupt(file: String, entry: String?, reason: String)
    /// A valid ZIP feature nb-serve does not read (encryption, multi-disk, a compression method).
    case unsupported(file: String, entry: String?, feature: String)

    /// Entry names and paths pass through `displayText`: they come from the file.
    public var description: String { displayText(rawDescription) }

    private var rawDescription: String {
        switch self {
        case .io(let error):
            return error.description
        case .notAZip(let file, let reason):
            return "\(file): not a ZIP archive: \(reason)"
        case .corrupt(let file, let entry, let reason):
            return "\(file): corrupt ZIP\(entry.map { " entry '\($0)'" } ?? ""): \(reason)"
        case .unsupported(let file, let entry, let feature):
            return "\(file): unsupported ZIP feature\(entry.map { " in entry '\($0)'" } ?? ""): \(feature)"
        }
    }
}
