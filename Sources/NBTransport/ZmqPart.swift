/// One frame of an outgoing multipart message.
public enum ZmqPart {
    /// Bytes copied into the message during `send`.
    case bytes([UInt8])
    /// Memory handed to libzmq as it is, without a copy; see ``ZeroCopyBuffer``.
    case zeroCopy(ZeroCopyBuffer)

    /// The frame's length in bytes.
    public var byteCount: Int {
        switch self {
        case .bytes(let bytes): bytes.count
        case .zeroCopy(let buffer): buffer.bytes.count
        }
    }
}

/// Memory that libzmq sends straight from where it lies (`zmq_msg_init_data`), for tensor frames that live
/// in a shared-memory batch buffer.
///
/// The contract, each time the buffer is passed to ``ZmqSocket/send(_:dontWait:)`` (as one part):
/// - `onRelease` runs **exactly once** for that part, whatever the outcome: after libzmq has finished with the
///   bytes (written them to the kernel, or dropped them because the peer went away or the socket closed), or
///   before `send` returns when the message was never queued (the socket would block, or `send` threw).
/// - Until it runs, the caller keeps the memory mapped and unchanged. libzmq never writes to it.
/// - It runs on whichever thread drops libzmq's last reference to the message: a **libzmq I/O thread** for
///   `tcp://` and `ipc://`, the receiving thread for `inproc://`, the sending thread in the "never queued"
///   case. It must return at once: set an atomic flag, bump an atomic counter or write a byte to a pipe.
///   Never block, take a contended lock, allocate much or call back into libzmq.
/// - A context terminated with messages still queued drops them, so every release has run once the
///   ``ZmqContext`` is gone.
public struct ZeroCopyBuffer {
    /// The bytes to send; `baseAddress` may be nil only when the count is 0.
    public let bytes: UnsafeRawBufferPointer
    let onRelease: @Sendable () -> Void

    public init(_ bytes: UnsafeRawBufferPointer, onRelease: @escaping @Sendable () -> Void) {
        self.bytes = bytes
        self.onRelease = onRelease
    }
}

/// Carries a release callback through libzmq's `void *hint`.
final class ZeroCopyRelease: Sendable {
    let onRelease: @Sendable () -> Void

    init(_ onRelease: @escaping @Sendable () -> Void) {
        self.onRelease = onRelease
    }
}
