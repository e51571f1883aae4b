extension WireProtocol.Header {
    /// Frame 0 of this message: compact UTF-8 JSON, `"v"` and `"type"` first.
    ///
    /// - Parameter payloadByteCounts: the byte length of each tensor frame that will follow, checked against
    ///   `prod(shape) * itemsize` of the header's tensors; empty for `end` and `error`.
    /// - Throws: ``WireProtocolError`` when the header breaks a rule of protocol v1 or a length does not match,
    ///   so a sender can never put on the wire what a reader would refuse.
    public func encoded(payloadByteCounts: [Int] = []) throws(WireProtocolError) -> [UInt8] {
        try WireProtocol.validate(self, payloadByteCounts: payloadByteCounts)
        var json = JSONWriter()
        json.beginObject()
        json.key("v"); json.int(WireProtocol.version)
        json.key("type"); json.string(typeName)
        switch self {
        case .batch(let batch):
            Self.writeBatchFields(batch, into: &json)
            Self.writeTensors(batch.tensors.map { ($0, nil) }, into: &json)
        case .lease(let lease):
            Self.writeBatchFields(lease.batch, into: &json)
            json.key("lease"); json.int(lease.lease)
            Self.writeTensors(lease.tensors.map { ($0.spec, $0.offset) }, into: &json)
        case .end(let end):
            json.key("stream"); json.int(end.stream)
            json.key("stage"); json.string(end.stage.rawValue)
            json.key("epoch"); json.int(end.epoch)
            json.key("batches"); json.int(end.batches)
        case .error(let error):
            json.key("stream"); json.int(error.stream)
            json.key("stage"); json.string(error.stage.rawValue)
            json.key("epoch"); json.int(error.epoch)
            json.key("batch"); json.int(error.batch)
            json.key("file"); json.optionalString(error.file)
            json.key("array"); json.optionalString(error.array)
            json.key("chunk"); json.optionalString(error.chunk)
            json.key("reason"); json.string(error.reason)
        }
        json.endObject()
        return json.bytes
    }

    /// `"tensors"`: name, dtype and shape of each, and where it lies in shared memory for a lease.
    private static func writeTensors(_ tensors: [(WireProtocol.TensorSpec, Int?)], into json: inout JSONWriter) {
        json.key("tensors")
        json.beginArray()
        for (tensor, offset) in tensors {
            json.beginObject()
            json.key("name"); json.string(tensor.name)
            json.key("dtype"); json.string(tensor.dataType.littleEndianTypestr)
            json.key("shape"); json.ints(tensor.shape)
            if let offset { json.key("offset"); json.int(offset) }
            json.endObject()
        }
        json.endArray()
    }

    private static func writeBatchFields(_ batch: WireProtocol.BatchHeader, into json: inout JSONWriter) {
        json.key("stream"); json.int(batch.stream)
        json.key("stage"); json.string(batch.stage.rawValue)
        json.key("epoch"); json.int(batch.epoch)
        json.key("batch"); json.int(batch.batch)
        json.key("frame_index"); json.int(batch.frameIndex)
        json.key("rank"); json.int(batch.rank)
        json.key("world_size"); json.int(batch.worldSize)
        json.key("sequences"); json.ints(batch.sequences)
        json.key("orientations"); json.ints(batch.orientations)
    }
}

extension WireProtocol {
    /// The parts of a `batch` message ready for ``ZmqSocket/send(_:dontWait:)``: the header frame, then
    /// `payloads` as they are (zero-copy buffers stay zero-copy). Checks each payload's length against its
    /// tensor first; when this throws nothing has been handed to libzmq and no release callback will run.
    public static func batchParts(_ header: BatchHeader, payloads: [ZmqPart]) throws(WireProtocolError) -> [ZmqPart] {
        let frame = try Header.batch(header).encoded(payloadByteCounts: payloads.map(\.byteCount))
        return [.bytes(frame)] + payloads
    }

    /// All frames of `message`, copied (for tests and tools; the daemon sends tensors with ``batchParts(_:payloads:)``).
    public static func encode(_ message: Message) throws(WireProtocolError) -> [[UInt8]] {
        [try message.header.encoded(payloadByteCounts: message.payloads.map(\.count))] + message.payloads
    }
}

/// Appends compact JSON to a byte buffer; just enough for protocol headers. Commas are placed automatically.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    /// Whether the next value or key in the current container needs a comma before it.
    private var needsComma = false

    mutating func beginObject() { separate(); bytes.append(UInt8(ascii: "{")); needsComma = false }
    mutating func endObject() { bytes.append(UInt8(ascii: "}")); needsComma = true }
    mutating func beginArray() { separate(); bytes.append(UInt8(ascii: "[")); needsComma = false }
    mutating func endArray() { bytes.append(UInt8(ascii: "]")); needsComma = true }

    mutating func key(_ name: String) {
        string(name)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    mutating func int(_ value: Int) {
        separate()
        bytes.append(contentsOf: String(value).utf8)
        needsComma = true
    }

    mutating func ints(_ values: [Int]) {
        beginArray()
        for value in values { int(value) }
        endArray()
    }

    mutating func optionalString(_ value: String?) {
        guard let value else {
            separate()
            bytes.append(contentsOf: "null".utf8)
            needsComma = true
            return
        }
        string(value)
    }

    /// A JSON string: `"` and `\` escaped, control characters as `\u00XX`, everything else as UTF-8.
    mutating func string(_ value: String) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    private mutating func separate() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
    }
}
