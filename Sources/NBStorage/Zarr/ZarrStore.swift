import Glibc
import NBSystem

/// Where a Zarr group's keys live: a ZIP file (zarr-python's `ZipStore`) or a directory (`DirectoryStore`).
/// Keys are `/`-separated paths relative to the group's root, e.g. `color/.zarray`, `color/0.0.0.0.0`.
public protocol ZarrStore: AnyObject {
    /// The path the store was opened from, used in every error message.
    var path: String { get }
    /// Every key in the store.
    func allKeys() throws -> [String]
    /// The stored (possibly compressed) size of a key's value, or nil when absent.
    func storedSize(of key: String) -> Int?
    /// Calls `body` with a key's bytes, or returns nil when the key is absent.
    func withContents<R>(of key: String, verifyChecksum: Bool, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R?
}

extension ZipArchive: ZarrStore {
    public func allKeys() -> [String] { names }
    public func storedSize(of key: String) -> Int? { entries[key]?.compressedSize }
}

/// A group stored as plain files under a directory, as zarr-python's `DirectoryStore` writes it.
public final class DirectoryStore: ZarrStore {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    private func filePath(_ key: String) -> String { path + "/" + key }

    public func allKeys() throws -> [String] {
        var keys: [String] = []
        try collect(relative: "", into: &keys)
        return keys.sorted()
    }

    private func collect(relative: String, into keys: inout [String]) throws {
        let directoryPath = relative.isEmpty ? path : filePath(relative)
        guard let directory = opendir(directoryPath) else {
            throw SystemCallError(call: "opendir", path: directoryPath, errno: errno)
        }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name == "." || name == ".." { continue }
            let key = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            guard lstat(filePath(key), &info) == 0 else { continue }
            // Every entry is a key, whatever it is: a FIFO, a device, a symbolic link (dangling, looping
            // or to a directory) or a directory where a chunk belongs then fails by name when read or
            // verified instead of being skipped. Only real directories are walked (as zarr-python's
            // os.walk does), so a link cannot make the walk loop.
            keys.append(key)
            if (info.st_mode & S_IFMT) == S_IFDIR {
                try collect(relative: key, into: &keys)
            }
        }
    }

    public func storedSize(of key: String) -> Int? {
        var info = stat()
        guard stat(filePath(key), &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int(info.st_size)
    }

    /// A missing file (or a dangling link, as zarr-python reads it) is an absent key; anything at the
    /// key that is not a regular file (a directory, a FIFO, a link loop) is an error naming it.
    public func withContents<R>(of key: String, verifyChecksum: Bool, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        let file: MappedFile
        do {
            file = try MappedFile(path: filePath(key))
        } catch {
            if error.errno == ENOENT || error.errno == ENOTDIR { return nil }
            throw error
        }
        return try body(file.bytes)
    }
}
