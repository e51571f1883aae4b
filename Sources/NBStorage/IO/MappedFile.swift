import Glibc
import NBSystem

/// A whole file mapped read-only into memory. Readers take bounds-checked slices of it and never copy.
///
/// The mapping lives as long as this object; slices handed out by `withBytes` must not escape the closure.
public final class MappedFile {
    public let path: String
    public let count: Int
    private let base: UnsafeRawPointer?

    /// The identity and version of the file that was mapped (device, inode, size, times).
    public let signature: FileSignature

    /// Maps the regular file at `path`. Anything else is refused before a byte is read: opening is
    /// non-blocking, so a FIFO (or a device) where a file should be cannot hang the reader.
    public init(path: String) throws(SystemCallError) {
        self.path = path
        let fd = try OwnedFileDescriptor(opening: path, flags: O_RDONLY | O_NONBLOCK)
        defer { fd.close() }
        var info = stat()
        try retryingSystemCall("fstat", path: path) { fstat(fd.rawValue, &info) }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw SystemCallError(call: "open", path: path, errno: EISDIR)
        default: throw SystemCallError(call: "open", path: path, errno: EINVAL, detail: "not a regular file (\(FileSignature.kind(info.st_mode)))")
        }
        signature = FileSignature(info)
        count = Int(info.st_size)
        if count == 0 {
            // mmap of length 0 is an error; an empty file is simply an empty byte range.
            base = nil
            return
        }
        let address = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd.rawValue, 0)
        guard let address, address != MAP_FAILED else {
            throw SystemCallError(call: "mmap", path: path, errno: errno)
        }
        // Chunks are read once each, front to back within an entry.
        _ = madvise(address, count, MADV_WILLNEED)
        base = UnsafeRawPointer(address)
    }

    /// All bytes of the file.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// `count` bytes at `offset`, or nil when that range is not inside the file.
    public func slice(offset: Int, count length: Int) -> UnsafeRawBufferPointer? {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else { return nil }
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }
}
