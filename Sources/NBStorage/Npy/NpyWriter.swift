import Glibc

/// Writes a NumPy `.npy` file (format 1.0, C order) piece by piece, so arrays larger than memory can be
/// exported: the header first, then the data in order.
public final class NpyWriter {
    public let path: String
    private let descriptor: OwnedFileDescriptor

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
        descriptor = try OwnedFileDescriptor(creating: path)
        try Self.header(typestr: typestr, shape: shape).withUnsafeBytes { try write($0) }
    }

    /// Appends raw element bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            let written = try retryingSystemCall("write", path: path) {
                Glibc.write(descriptor.rawValue, bytes.baseAddress! + done, bytes.count - done)
            }
            done += written
        }
    }

    /// Flushes to disk and closes.
    public func close() throws(SystemCallError) {
        try retryingSystemCall("fsync", path: path) { fsync(descriptor.rawValue) }
        descriptor.close()
    }
}
