/// Little-endian field reads from a byte range, each checked against its bounds.
/// Returns nil instead of reading past the end, so callers can report *which* structure was short.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer

    func u16(at offset: Int) -> UInt16? { load(at: offset) }
    func u32(at offset: Int) -> UInt32? { load(at: offset) }
    func u64(at offset: Int) -> UInt64? { load(at: offset) }

    private func load<T: FixedWidthInteger>(at offset: Int) -> T? {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= bytes.count - size else { return nil }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// The bytes `offset..<offset+count` as a sub-range, or nil when out of bounds.
    func slice(at offset: Int, count: Int) -> UnsafeRawBufferPointer? {
        guard offset >= 0, count >= 0, offset <= bytes.count, count <= bytes.count - offset else { return nil }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }
}
