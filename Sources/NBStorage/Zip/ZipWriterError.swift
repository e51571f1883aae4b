import NBSystem

/// Why a ZIP archive could not be written. Every case names the archive's final path.
public enum ZipWriterError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A system call on the temporary file (or the final rename) failed; the temporary file is removed.
    case io(SystemCallError)
    /// A second entry with a name already written.
    case duplicateEntry(file: String, entry: String)
    /// An empty name, or one longer than a ZIP header can hold.
    case invalidName(file: String, entry: String, reason: String)
    /// The writer was already finished or abandoned.
    case finished(file: String, entry: String?)

    public var description: String {
        switch self {
        case .io(let error):
            return error.description
        case .duplicateEntry(let file, let entry):
            return "\(file): ZIP entry '\(entry)' written twice"
        case .invalidName(let file, let entry, let reason):
            return "\(file): invalid ZIP entry name '\(entry)': \(reason)"
        case .finished(let file, let entry):
            return "\(file): the ZIP archive is already finished or abandoned\(entry.map { " (writing '\($0)')" } ?? "")"
        }
    }
}
