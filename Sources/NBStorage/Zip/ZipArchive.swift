import CZlib
import Glibc
import NBSystem

/// A ZIP archive read through one memory mapping, opened once and reused for every entry.
///
/// Only the central directory is parsed at open time (ZIP64 included). Stored entries are handed out as
/// slices of the mapping, without a copy; deflated entries are inflated into a temporary buffer.
///
/// A file changed under a long-running reader is noticed: every read compares the file at `path` (device,
/// inode, size, mtime, ctime) with the one mapped, and a changed file is mapped again, its central
/// directory read again and every entry's CRC-32 checked again on its next read. Damage written into the
/// file therefore surfaces as a CRC error, never as silently different data. (The alternative, checking
/// every entry's CRC on every read, costs far more: see README "Integrity checks".)
public final class ZipArchive {
    /// One file inside the archive, as the central directory describes it (ZIP64 fields resolved).
    public struct Entry: Sendable {
        public let name: String
        public let method: UInt16
        public let crc32: UInt32
        public let compressedSize: Int
        public let uncompressedSize: Int
        /// Offset of the entry's data (after its local header), checked to lie inside the file.
        let dataOffset: Int
        /// Position in `names`, indexing `checksummed`.
        let index: Int
    }

    public let path: String
    public private(set) var entries: [String: Entry] = [:]
    /// Entry names in central-directory order.
    public private(set) var names: [String] = []
    private var file: MappedFile
    /// Entries whose CRC-32 has been checked: each entry is checked on its first read only, so a
    /// damaged entry never yields data and repeated reads (every epoch) cost nothing extra.
    private var checksummed: [Bool] = []
    /// How many times the file was found changed and mapped again.
    public private(set) var reopenCount = 0
    /// Why the changed file could not be read again, if it could not.
    private var reopenFailure: ZipError?

    /// Deflate cannot expand data by more than about 1032:1, so a larger claimed size is a lie and
    /// must not size an allocation.
    static let maximumDeflateRatio = 1032

    public init(path: String) throws(ZipError) {
        self.path = path
        do { file = try MappedFile(path: path) } catch { throw .io(error) }
        try readCentralDirectory()
    }

    /// Calls `body` with the entry's uncompressed bytes; returns nil when there is no such entry.
    /// For stored entries the bytes are the mapping itself. CRC-32 is checked on an entry's first read
    /// (and on every read with `verifyChecksum`); deflated entries are checked on every read.
    public func withContents<R>(
        of name: String, verifyChecksum: Bool = false, _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R? {
        try reopenIfChanged()
        guard let entry = entries[name] else { return nil }
        guard let data = file.slice(offset: entry.dataOffset, count: entry.compressedSize) else {
            throw ZipError.corrupt(file: path, entry: name, reason: "data lies outside the file")
        }
        switch entry.method {
        case 0:
            // A file changed within the timestamp clock's resolution may change again without its
            // signature changing: until it has settled, every read is checked.
            if verifyChecksum || !checksummed[entry.index] || file.signature.changedRecently() {
                try checkCRC(entry, data)
                checksummed[entry.index] = true
            }
            return try body(data)
        case 8:
            var output = [UInt8](repeating: 0, count: entry.uncompressedSize)
            try output.withUnsafeMutableBytes { destination in
                try inflateRaw(entry, from: data, into: destination)
                try checkCRC(entry, UnsafeRawBufferPointer(destination))
            }
            return try output.withUnsafeBytes { try body($0) }
        default:
            throw ZipError.unsupported(file: path, entry: name, feature: "compression method \(entry.method)")
        }
    }

    /// Maps the file again when the one at `path` is not the version mapped (rewritten in place,
    /// replaced, truncated). The new mapping is read like a newly opened archive.
    func reopenIfChanged() throws(ZipError) {
        guard let current = FileSignature.current(of: path) else {
            throw .io(SystemCallError(call: "stat", path: path, errno: errno))
        }
        if current == file.signature {
            if let reopenFailure { throw reopenFailure }
            return
        }
        do { file = try MappedFile(path: path) } catch { throw .io(error) }
        entries = [:]
        names = []
        reopenCount += 1
        reopenFailure = nil
        do {
            try readCentralDirectory()
        } catch {
            // Until the file changes again, every read fails the same way (an empty directory must
            // not read as "every chunk missing", which would be fill values).
            reopenFailure = error
            throw error
        }
    }

    // MARK: - Central directory

    private static let endOfCentralDirectorySignature: UInt32 = 0x0605_4b50
    private static let zip64EndSignature: UInt32 = 0x0606_4b50
    private static let zip64LocatorSignature: UInt32 = 0x0706_4b50
    private static let centralHeaderSignature: UInt32 = 0x0201_4b50
    private static let localHeaderSignature: UInt32 = 0x0403_4b50

    private func readCentralDirectory() throws(ZipError) {
        let reader = ByteReader(bytes: file.bytes)
        let eocd = try findEndOfCentralDirectory(reader)
        guard let diskNumber = reader.u16(at: eocd + 4), let cdDisk = reader.u16(at: eocd + 6),
              let count16 = reader.u16(at: eocd + 10), let size32 = reader.u32(at: eocd + 12),
              let offset32 = reader.u32(at: eocd + 16)
        else { throw ZipError.notAZip(file: path, reason: "end-of-central-directory record is truncated") }

        var entryCount = Int(count16)
        var directorySize = Int(size32)
        var directoryOffset = Int(offset32)
        var isMultiDisk = diskNumber != 0 || cdDisk != 0

        // A ZIP64 locator sits right before the classic record whenever any field overflowed.
        if eocd >= 20, reader.u32(at: eocd - 20) == Self.zip64LocatorSignature {
            guard let zip64Offset = reader.u64(at: eocd - 12), let diskCount = reader.u32(at: eocd - 4) else {
                throw ZipError.corrupt(file: path, entry: nil, reason: "ZIP64 locator is truncated")
            }
            let at = Int(clamping: zip64Offset)
            guard reader.u32(at: at) == Self.zip64EndSignature,
                  let disk64 = reader.u32(at: at + 16), let cdDisk64 = reader.u32(at: at + 20),
                  let count64 = reader.u64(at: at + 32), let size64 = reader.u64(at: at + 40),
                  let offset64 = reader.u64(at: at + 48)
            else { throw ZipError.corrupt(file: path, entry: nil, reason: "ZIP64 end record missing at offset \(zip64Offset)") }
            entryCount = Int(clamping: count64)
            directorySize = Int(clamping: size64)
            directoryOffset = Int(clamping: offset64)
            isMultiDisk = isMultiDisk && !(disk64 == 0 && cdDisk64 == 0) || diskCount > 1
        }
        if isMultiDisk {
            throw ZipError.unsupported(file: path, entry: nil, feature: "multi-disk (spanned) archive")
        }
        guard let directory = reader.slice(at: directoryOffset, count: directorySize) else {
            throw ZipError.corrupt(
                file: path, entry: nil,
                reason: "central directory (offset \(directoryOffset), \(directorySize) bytes) lies outside the \(file.count)-byte file")
        }
        // Each central header is at least 46 bytes: a count the directory cannot hold is corrupt, and
        // must not size the table.
        guard entryCount <= directorySize / 46 else {
            throw ZipError.corrupt(file: path, entry: nil, reason: "central directory claims \(entryCount) entries in \(directorySize) bytes")
        }
        entries.reserveCapacity(entryCount)
        names.reserveCapacity(entryCount)
        var cursor = 0
        let directoryReader = ByteReader(bytes: directory)
        for index in 0..<entryCount {
            let (entry, next) = try readCentralHeader(directoryReader, at: cursor, index: index)
            cursor = next
            if entry.name.hasSuffix("/") { continue }
            // A rewritten key appears twice (zipfile appends); the last central-directory entry wins.
            if let earlier = entries[entry.name] {
                entries[entry.name] = entry.withIndex(earlier.index)
            } else {
                entries[entry.name] = entry.withIndex(names.count)
                names.append(entry.name)
            }
        }
        checksummed = [Bool](repeating: false, count: names.count)
    }

    private func findEndOfCentralDirectory(_ reader: ByteReader) throws(ZipError) -> Int {
        let minimum = 22
        guard file.count >= minimum else {
            throw ZipError.notAZip(file: path, reason: "\(file.count) bytes is shorter than the smallest ZIP")
        }
        // The record ends the file, followed only by a comment of at most 65535 bytes.
        let lowest = max(0, file.count - minimum - 65535)
        var at = file.count - minimum
        while at >= lowest {
            if reader.u32(at: at) == Self.endOfCentralDirectorySignature,
               let commentLength = reader.u16(at: at + 20), at + minimum + Int(commentLength) == file.count {
                return at
            }
            at -= 1
        }
        throw ZipError.notAZip(file: path, reason: "no end-of-central-directory record (truncated or not a ZIP file)")
    }

    private func readCentralHeader(_ reader: ByteReader, at offset: Int, index: Int) throws(ZipError) -> (Entry, Int) {
        guard reader.u32(at: offset) == Self.centralHeaderSignature,
              let flags = reader.u16(at: offset + 8), let method = reader.u16(at: offset + 10),
              let crc = reader.u32(at: offset + 16), let csize32 = reader.u32(at: offset + 20),
              let usize32 = reader.u32(at: offset + 24), let nameLength = reader.u16(at: offset + 28),
              let extraLength = reader.u16(at: offset + 30), let commentLength = reader.u16(at: offset + 32),
              let disk16 = reader.u16(at: offset + 34), let local32 = reader.u32(at: offset + 42),
              let nameBytes = reader.slice(at: offset + 46, count: Int(nameLength)),
              let extra = reader.slice(at: offset + 46 + Int(nameLength), count: Int(extraLength))
        else {
            throw ZipError.corrupt(file: path, entry: nil, reason: "central directory header #\(index) is truncated or malformed")
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        var compressedSize = UInt64(csize32)
        var uncompressedSize = UInt64(usize32)
        var localOffset = UInt64(local32)
        var disk = UInt32(disk16)
        // ZIP64 extended information: only the fields whose classic value overflowed are present, in order.
        if csize32 == .max || usize32 == .max || local32 == .max || disk16 == .max {
            var field = try zip64Extra(in: extra, entry: name)
            func next64() throws(ZipError) -> UInt64 {
                guard let value = field.u64() else {
                    throw ZipError.corrupt(file: path, entry: name, reason: "ZIP64 extra field is too short")
                }
                return value
            }
            if usize32 == .max { uncompressedSize = try next64() }
            if csize32 == .max { compressedSize = try next64() }
            if local32 == .max { localOffset = try next64() }
            if disk16 == .max {
                guard let value = field.u32() else {
                    throw ZipError.corrupt(file: path, entry: name, reason: "ZIP64 extra field is too short")
                }
                disk = value
            }
        }
        if flags & 1 != 0 { throw ZipError.unsupported(file: path, entry: name, feature: "encryption") }
        if disk != 0 { throw ZipError.unsupported(file: path, entry: name, feature: "entry on disk \(disk)") }
        guard compressedSize <= UInt64(file.count), localOffset < UInt64(file.count) else {
            throw ZipError.corrupt(
                file: path, entry: name,
                reason: "claims \(compressedSize) bytes at offset \(localOffset), beyond the \(file.count)-byte file")
        }
        if method == 0 && compressedSize != uncompressedSize {
            throw ZipError.corrupt(file: path, entry: name, reason: "stored entry has compressed size \(compressedSize) ≠ size \(uncompressedSize)")
        }
        if method == 8 && uncompressedSize > compressedSize * UInt64(Self.maximumDeflateRatio) + 1024 {
            throw ZipError.corrupt(file: path, entry: name, reason: "claims \(uncompressedSize) bytes inflated from \(compressedSize), more than deflate can produce")
        }
        let dataOffset = try localDataOffset(Int(localOffset), entry: name)
        guard file.slice(offset: dataOffset, count: Int(compressedSize)) != nil else {
            throw ZipError.corrupt(
                file: path, entry: name,
                reason: "data (\(compressedSize) bytes at offset \(dataOffset)) runs past the end of the \(file.count)-byte file")
        }
        let entry = Entry(
            name: name, method: method, crc32: crc, compressedSize: Int(compressedSize),
            uncompressedSize: Int(uncompressedSize), dataOffset: dataOffset, index: 0)
        return (entry, offset + 46 + Int(nameLength) + Int(extraLength) + Int(commentLength))
    }

    /// A cursor over the ZIP64 extended-information block (header id 1) of an extra field.
    private struct FieldCursor {
        let reader: ByteReader
        var offset = 0
        mutating func u64() -> UInt64? { defer { offset += 8 }; return reader.u64(at: offset) }
        mutating func u32() -> UInt32? { defer { offset += 4 }; return reader.u32(at: offset) }
    }

    private func zip64Extra(in extra: UnsafeRawBufferPointer, entry: String) throws(ZipError) -> FieldCursor {
        let reader = ByteReader(bytes: extra)
        var at = 0
        while let id = reader.u16(at: at), let size = reader.u16(at: at + 2) {
            if id == 1, let block = reader.slice(at: at + 4, count: Int(size)) {
                return FieldCursor(reader: ByteReader(bytes: block))
            }
            at += 4 + Int(size)
        }
        throw ZipError.corrupt(file: path, entry: entry, reason: "ZIP64 sizes announced but no ZIP64 extra field")
    }

    private func localDataOffset(_ offset: Int, entry: String) throws(ZipError) -> Int {
        let reader = ByteReader(bytes: file.bytes)
        guard reader.u32(at: offset) == Self.localHeaderSignature,
              let nameLength = reader.u16(at: offset + 26), let extraLength = reader.u16(at: offset + 28)
        else {
            throw ZipError.corrupt(file: path, entry: entry, reason: "no local header at offset \(offset)")
        }
        return offset + 30 + Int(nameLength) + Int(extraLength)
    }

    // MARK: - Entry data

    private func checkCRC(_ entry: Entry, _ bytes: UnsafeRawBufferPointer) throws(ZipError) {
        guard let base = bytes.baseAddress else {
            if entry.crc32 != 0 { throw ZipError.corrupt(file: path, entry: entry.name, reason: "CRC-32 mismatch") }
            return
        }
        // zlib's crc32 takes a 32-bit length; walk big entries in pieces.
        var crc = crc32(0, nil, 0)
        var done = 0
        while done < bytes.count {
            let piece = min(bytes.count - done, 1 << 30)
            crc = crc32(crc, base.advanced(by: done).assumingMemoryBound(to: Bytef.self), uInt(piece))
            done += piece
        }
        if UInt32(crc) != entry.crc32 {
            throw ZipError.corrupt(file: path, entry: entry.name, reason: "CRC-32 mismatch (data damaged)")
        }
    }

    private func inflateRaw(_ entry: Entry, from source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(ZipError) {
        do {
            try Inflater.inflate(source, into: destination, format: .raw)
        } catch let reason {
            throw ZipError.corrupt(file: path, entry: entry.name, reason: "deflate data: \(reason.message)")
        }
    }
}

extension ZipArchive.Entry {
    func withIndex(_ index: Int) -> Self {
        .init(name: name, method: method, crc32: crc32, compressedSize: compressedSize,
              uncompressedSize: uncompressedSize, dataOffset: dataOffset, index: index)
    }
}
