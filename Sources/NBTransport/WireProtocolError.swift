/// A message (or a header about to be sent) that breaks wire protocol v1, saying which rule and where.
public enum WireProtocolError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A ZeroMQ message with no frames at all.
    case emptyMessage
    /// Frame 0 is not UTF-8 JSON text holding an object.
    case malformedHeader(reason: String)
    /// `"v"` is not 1: a message from a newer (or broken) sender. `found` is the value as JSON.
    case unsupportedVersion(found: String)
    /// `"type"` is none of `batch`, `end`, `error`.
    case unknownMessageType(String)
    /// A required header field is absent.
    case missingField(type: String, field: String)
    /// A header field has the wrong JSON type or an out-of-range value.
    case invalidField(type: String, field: String, reason: String)
    /// The message has a different number of frames than its header implies (1 + one per tensor).
    case frameCountMismatch(type: String, expected: Int, found: Int)
    /// A tensor frame's length is not `prod(shape) * itemsize`.
    case tensorSizeMismatch(tensor: String, dtype: String, shape: [Int], expectedBytes: Int, foundBytes: Int)

    public var description: String {
        switch self {
        case .emptyMessage:
            "wire protocol: empty message (no header frame)"
        case .malformedHeader(let reason):
            "wire protocol: header frame is not a JSON object: \(reason)"
        case .unsupportedVersion(let found):
            "wire protocol: unsupported version \(found) (this reader speaks version \(WireProtocol.version))"
        case .unknownMessageType(let type):
            "wire protocol: unknown message type \(type) (known: batch, end, error)"
        case .missingField(let type, let field):
            "wire protocol: \(type) header has no '\(field)'"
        case .invalidField(let type, let field, let reason):
            "wire protocol: \(type) header field '\(field)': \(reason)"
        case .frameCountMismatch(let type, let expected, let found):
            "wire protocol: \(type) message has \(found) frames, its header implies \(expected)"
        case .tensorSizeMismatch(let tensor, let dtype, let shape, let expected, let found):
            "wire protocol: tensor '\(tensor)' (\(dtype) \(shape)) frame has \(found) bytes, expected \(expected)"
        }
    }
}
