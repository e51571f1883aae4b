/// One unit of work for a worker: decode frame `frame` of sequence `sequence` with `orientation` into
/// slot `slot` of the batch buffer at `bufferOffset` in shared memory. Sent as 8 little-endian Int64s.
public struct WorkerTask: Sendable, Equatable {
    public var id: Int64
    public var bufferOffset: Int64
    public var slot: Int64
    public var sequence: Int64
    public var frame: Int64
    public var orientation: Int64
    /// Which loader config layout (batch size) the buffer has: the per-rank batch size.
    public var batchSize: Int64
    public var reserved: Int64 = 0

    public static let byteCount = 64

    public init(id: Int64, bufferOffset: Int64, slot: Int64, sequence: Int64, frame: Int64, orientation: Int64, batchSize: Int64) {
        self.id = id
        self.bufferOffset = bufferOffset
        self.slot = slot
        self.sequence = sequence
        self.frame = frame
        self.orientation = orientation
        self.batchSize = batchSize
    }

    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.byteCount)
        for value in [id, bufferOffset, slot, sequence, frame, orientation, batchSize, reserved] {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        return bytes
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        var values: [Int64] = []
        var iterator = bytes.makeIterator()
        for _ in 0..<8 {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 64, by: 8) { value |= UInt64(iterator.next()!) << UInt64(shift) }
            values.append(Int64(bitPattern: value))
        }
        self.init(id: values[0], bufferOffset: values[1], slot: values[2], sequence: values[3], frame: values[4], orientation: values[5], batchSize: values[6])
        reserved = values[7]
    }
}

/// A worker's answer: the task id, how long the worker took to decode it, and for a failure the
/// file/array/chunk and reason, as one line of JSON after a 24-byte header (id, nanoseconds, message length).
public struct WorkerResult: Sendable, Equatable {
    public var id: Int64
    /// Worker time spent reading, decoding and augmenting the frame (for `nbserve_decode_seconds`).
    public var decodeNanoseconds: Int64
    /// Empty on success; otherwise `{"file": …, "array": …, "chunk": …, "reason": …}`.
    public var error: String

    public static let headerByteCount = 24

    public init(id: Int64, decodeNanoseconds: Int64 = 0, error: String) {
        self.id = id
        self.decodeNanoseconds = decodeNanoseconds
        self.error = error
    }

    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        let message = Array(error.utf8)
        for value in [id, decodeNanoseconds, Int64(message.count)] {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        return bytes + message
    }
}
