import Glibc
import NBSystem

/// Writes a NumPy `.npy` file (format 1.0, C order) piece by piece, so arrays larger than memory can be
/// exported: the header first, then the data in order.
public final class NpyWriter {
    public let path: String
    private let descriptor: OwnedFileDescriptor
    /// Bytes of the header: data offset 0 is this far into the file.
    public let headerCount: Int

    /// The format-1.0 header for `typestr` (e.g. `<f4`) and `shape`, padded so data starts 64-byte aligned.
    public static func header(typestr: String, shape: [Int]) -> [UInt8] {
        let dims = shape.map(String.init)
        let shapeText = dims.count == 1 ? "(\(dims[0]),)" : "(" + dims.joined(separator: ", ") + ")"
        var dictionary = "{'descr': '\(typestr)', 'fortran_order': False, 'shape': \(shapeText), }"
        let prefix = 10 // magic (6) + version (2) + header length (2)
        let padding = (64 - (prefix + dictionary.utf8.count + 1) % 64) % 64
        dictionary += String(repeating: " ", count: padding) + "\n"
        let length = UInt16(dictionary.utf8.count)
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(length & 0xff), UInt8(length >> 8)] + Array(dictionary.utf8)
    }

    /// Creates (or truncates) `path` and writes the header.
    public init(path: String, typestr: String, shape: [Int]) throws {
        self.path = path
        let header = Self.header(typestr: typestr, shape: shape)
        headerCount = header.count
        descriptor = try OwnedFileDescriptor(creating: path)
        try header.withUnsafeBytes { try write($0) }
    }

    /// Refuses, before anything is written, an export of `bytes` that the file system holding `path`
    /// has no room for (what an existing file at `path` occupies counts as free: it is truncated).
    public static func checkSpace(for path: String, bytes: Int) throws(SystemCallError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        var info = statvfs()
        try retryingSystemCall("statvfs", path: directory) { statvfs(directory, &info) }
        var existing = stat()
        let reclaimed = stat(path, &existing) == 0 && (existing.st_mode & S_IFMT) == S_IFREG ? Int(existing.st_blocks) * 512 : 0
        let (free, overflow) = Int(info.f_bavail).multipliedReportingOverflow(by: Int(info.f_frsize))
        let available = overflow ? Int.max : free + reclaimed
        guard bytes <= available else {
            throw SystemCallError(
                call: "statvfs", path: path, errno: ENOSPC,
                detail: "the export needs \(bytes) bytes, but the file system holding \(directory) has \(available) bytes free; nothing was written")
        }
    }

    /// Writes element bytes at `offset` bytes into the data (after the header), in any order.
    public func write(_ bytes: UnsafeRawBufferPointer, atDataOffset offset: Int) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            let written = try retryingSystemCall("pwrite", path: path) {
                pwrite(descriptor.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(headerCount + offset + done))
            }
            done += written
        }
    }

    /// Appends raw element bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
        try writeAll(descriptor.rawValue, bytes, what: path)
    }

    /// Flushes to disk and closes.
    public func close() throws(SystemCallError) {
        try retryingSystemCall("fsync", path: path) { fsync(descriptor.rawValue) }
        descriptor.close()
    }
}
