import CZlib
import Glibc
import NBSystem

/// Writes a ZIP archive of stored (uncompressed) entries the way zarr-python's `ZipStore` does, so the
/// result reads like any zarr-written store: Unix permissions 0644, no data descriptors, entries in the
/// order they are added.
///
/// Every entry carries the same timestamp (1980-01-01 00:00, the earliest DOS time), so the same entries
/// give the same bytes. The archive is written to a hidden temporary file beside `path` and renamed into
/// place by `finish()`: a reader never sees a half-written archive, and an archive that is not finished
/// (an error, a crash) leaves nothing at `path`. Entries, offsets and counts past the classic format's
/// limits (4 GiB, 65535 entries) take their ZIP64 forms.
public final class ZipWriter {
    /// When the ZIP64 forms are used.
    public enum Zip64Policy: Sendable {
        /// Only for what the classic fields cannot hold (what zipfile and zarr do).
        case whenNeeded
        /// For every entry and for the end record (like zipfile's `force_zip64`), e.g. to test readers.
        case always
    }

    public let path: String
    private let temporaryPath: String
    private let zip64: Zip64Policy
    private var descriptor: Int32
    private var offset: UInt64 = 0
    private var centralDirectory: [UInt8] = []
    private var entryCount = 0
    private var names: Set<String> = []
    private var isFinished = false

    /// The classic fields' largest value; it also marks a field whose value is in the ZIP64 extra field.
    private static let classicLimit: UInt64 = 0xFFFF_FFFF
    /// 1980-01-01 00:00:00 in MS-DOS date and time format.
    private static let dosDate: UInt16 = (0 << 9) | (1 << 5) | 1
    private static let dosTime: UInt16 = 0
    /// Version made by: Unix (3) in the high byte, the ZIP specification version in the low byte.
    private static let unixHost: UInt16 = 3 << 8
    /// `-rw-r--r--` regular file, in the high half of the external attributes (as zarr's ZipStore sets).
    private static let entryAttributes: UInt32 = 0o644 << 16

    /// Creates the temporary file beside `path` (mode 0644 before the umask); `path` itself is untouched
    /// until `finish()`.
    public init(path: String, zip64: Zip64Policy = .whenNeeded) throws(ZipWriterError) {
        self.path = path
        self.zip64 = zip64
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[...$0]) } ?? ""
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        temporaryPath = "\(directory).\(base).\(getpid()).tmp"
        let temporary = temporaryPath
        do throws(SystemCallError) {
            descriptor = try retryingSystemCall("open", path: temporary) {
                open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            }
        } catch {
            throw .io(error)
        }
    }

    deinit {
        if !isFinished { abandon() }
    }

    /// Appends a stored entry holding `contents`. Names must be unique, non-empty and at most 65535 bytes.
    public func add(_ name: String, contents: UnsafeRawBufferPointer) throws(ZipWriterError) {
        guard !isFinished else { throw .finished(file: path, entry: name) }
        let nameBytes = Array(name.utf8)
        guard !nameBytes.isEmpty, nameBytes.count <= Int(UInt16.max) else {
            throw .invalidName(file: path, entry: name, reason: "a name must have 1 to 65535 bytes")
        }
        guard names.insert(name).inserted else { throw .duplicateEntry(file: path, entry: name) }

        let size = UInt64(contents.count)
        let crc = Self.crc32(of: contents)
        let localOffset = offset
        let bigSize = zip64 == .always || size >= Self.classicLimit
        let bigOffset = zip64 == .always || localOffset >= Self.classicLimit
        let version: UInt16 = bigSize || bigOffset ? 45 : 20
        // Bit 11: the name is UTF-8 (otherwise readers take it as code page 437); set, as zipfile does,
        // only for names that are not plain ASCII.
        let flags: UInt16 = nameBytes.allSatisfy { $0 < 0x80 } ? 0 : 0x800

        var local = ByteWriter()
        local.u32(0x0403_4b50)
        local.u16(version)
        local.u16(flags) // no data descriptor: sizes are known before the data is written
        local.u16(0) // method: stored
        local.u16(Self.dosTime)
        local.u16(Self.dosDate)
        local.u32(crc)
        local.u32(bigSize ? UInt32(Self.classicLimit) : UInt32(size))
        local.u32(bigSize ? UInt32(Self.classicLimit) : UInt32(size))
        local.u16(UInt16(nameBytes.count))
        local.u16(bigSize ? 20 : 0)
        local.bytes(nameBytes)
        if bigSize {
            // In a local header the ZIP64 field holds both sizes, uncompressed first.
            local.u16(1)
            local.u16(16)
            local.u64(size)
            local.u64(size)
        }
        try write(local.buffer, entry: name)
        try write(contents, entry: name)

        var extra = ByteWriter()
        if bigSize || bigOffset {
            // In the central directory only the overflowing fields appear, in this order.
            extra.u16(1)
            extra.u16(UInt16((bigSize ? 16 : 0) + (bigOffset ? 8 : 0)))
            if bigSize {
                extra.u64(size)
                extra.u64(size)
            }
            if bigOffset { extra.u64(localOffset) }
        }
        var central = ByteWriter()
        central.u32(0x0201_4b50)
        central.u16(Self.unixHost | version)
        central.u16(version)
        central.u16(flags)
        central.u16(0) // method: stored
        central.u16(Self.dosTime)
        central.u16(Self.dosDate)
        central.u32(crc)
        central.u32(bigSize ? UInt32(Self.classicLimit) : UInt32(size))
        central.u32(bigSize ? UInt32(Self.classicLimit) : UInt32(size))
        central.u16(UInt16(nameBytes.count))
        central.u16(UInt16(extra.buffer.count))
        central.u16(0) // comment length
        central.u16(0) // disk number
        central.u16(0) // internal attributes
        central.u32(Self.entryAttributes)
        central.u32(bigOffset ? UInt32(Self.classicLimit) : UInt32(localOffset))
        central.bytes(nameBytes)
        central.bytes(extra.buffer)
        centralDirectory += central.buffer
        entryCount += 1
    }

    /// Appends a stored entry holding `contents`.
    public func add(_ name: String, bytes contents: [UInt8]) throws(ZipWriterError) {
        // withUnsafeBytes rethrows untyped errors: carry the typed one out as a value.
        let failure: ZipWriterError? = contents.withUnsafeBytes { buffer in
            do throws(ZipWriterError) { try add(name, contents: buffer) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// Writes the central directory, flushes the file to disk and renames it to `path`.
    public func finish() throws(ZipWriterError) {
        guard !isFinished else { throw .finished(file: path, entry: nil) }
        let directoryOffset = offset
        let directorySize = UInt64(centralDirectory.count)
        let count = UInt64(entryCount)
        let big = zip64 == .always || count >= 0xFFFF || directorySize >= Self.classicLimit
            || directoryOffset >= Self.classicLimit
        var end = ByteWriter()
        if big {
            let zip64EndOffset = directoryOffset + directorySize
            end.u32(0x0606_4b50)
            end.u64(44) // size of the rest of this record
            end.u16(Self.unixHost | 45)
            end.u16(45)
            end.u32(0) // this disk
            end.u32(0) // disk holding the central directory
            end.u64(count)
            end.u64(count)
            end.u64(directorySize)
            end.u64(directoryOffset)
            end.u32(0x0706_4b50)
            end.u32(0)
            end.u64(zip64EndOffset)
            end.u32(1) // disks in all
        }
        end.u32(0x0605_4b50)
        end.u16(0)
        end.u16(0)
        end.u16(big ? 0xFFFF : UInt16(count))
        end.u16(big ? 0xFFFF : UInt16(count))
        end.u32(big ? UInt32(Self.classicLimit) : UInt32(directorySize))
        end.u32(big ? UInt32(Self.classicLimit) : UInt32(directoryOffset))
        end.u16(0) // comment length
        try write(centralDirectory, entry: nil)
        try write(end.buffer, entry: nil)
        let fd = descriptor
        let temporary = temporaryPath
        do throws(SystemCallError) {
            try retryingSystemCall("fsync", path: temporary) { fsync(fd) }
        } catch {
            abandon()
            throw .io(error)
        }
        _ = Glibc.close(fd)
        descriptor = -1
        let destination = path
        do throws(SystemCallError) {
            try retryingSystemCall("rename", path: destination) { rename(temporary, destination) }
        } catch {
            abandon()
            throw .io(error)
        }
        isFinished = true
    }

    /// Closes and removes the temporary file; `path` is left as it was. Called for an unfinished writer
    /// on deinit.
    public func abandon() {
        if descriptor >= 0 {
            _ = Glibc.close(descriptor)
            descriptor = -1
        }
        if !isFinished {
            _ = unlink(temporaryPath)
            isFinished = true
        }
    }

    // MARK: - Writing

    private func write(_ bytes: [UInt8], entry: String?) throws(ZipWriterError) {
        let failure: ZipWriterError? = bytes.withUnsafeBytes { buffer in
            do throws(ZipWriterError) { try write(buffer, entry: entry) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    private func write(_ bytes: UnsafeRawBufferPointer, entry: String?) throws(ZipWriterError) {
        guard descriptor >= 0 else { throw .finished(file: path, entry: entry) }
        let fd = descriptor
        let temporary = temporaryPath
        do throws(SystemCallError) {
            try writeAll(fd, bytes, what: temporary)
        } catch {
            abandon()
            throw .io(error)
        }
        offset += UInt64(bytes.count)
    }

    /// zlib's CRC-32; its length argument is 32 bits wide, so large buffers go in pieces.
    static func crc32(of bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc = CZlib.crc32(0, nil, 0)
        guard let base = bytes.baseAddress else { return UInt32(crc) }
        var done = 0
        while done < bytes.count {
            let piece = min(bytes.count - done, 1 << 30)
            crc = CZlib.crc32(crc, base.advanced(by: done).assumingMemoryBound(to: Bytef.self), uInt(piece))
            done += piece
        }
        return UInt32(crc)
    }
}

/// Little-endian fields appended to a byte array.
private struct ByteWriter {
    var buffer: [UInt8] = []
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { buffer += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { buffer += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { buffer += $0 } }
    mutating func bytes(_ value: [UInt8]) { buffer += value }
}
