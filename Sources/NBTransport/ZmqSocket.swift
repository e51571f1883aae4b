import CZmq
import Glibc

/// A ZeroMQ socket with exactly one owner.
///
/// libzmq sockets are not thread-safe, so `ZmqSocket` is not `Sendable`: use it from one thread (or hand it
/// over whole). It keeps its ``ZmqContext`` alive, so the context cannot be terminated under it. `close()`
/// is explicit; `deinit` closes a socket that is still open, silently. Every call on a closed socket throws
/// a ``ZmqError`` with `ENOTSOCK`.
public final class ZmqSocket {
    /// The context this socket was made from, kept alive for as long as the socket.
    public let context: ZmqContext
    public let type: ZmqSocketType
    private var handle: UnsafeMutableRawPointer?

    public init(_ type: ZmqSocketType, context: ZmqContext) throws(ZmqError) {
        self.context = context
        self.type = type
        handle = try context.makeSocketHandle(type: type.rawValue)
    }

    deinit { close() }

    /// Whether `close()` has not been called yet.
    public var isOpen: Bool { handle != nil }

    /// Closes the socket. Queued outgoing messages are kept for up to ``ZmqIntOption/linger`` milliseconds
    /// (0 unless set) by the context's I/O thread; this call itself never blocks. Calling it again does nothing.
    public func close() {
        guard let handle else { return }
        self.handle = nil
        // zmq_close only fails with ENOTSOCK, which cannot happen for a handle we still own.
        _ = zmq_close(handle)
        context.socketDidClose()
    }

    /// The raw handle for a call named `call`; throws `ENOTSOCK` when the socket is closed.
    func openHandle(_ call: String) throws(ZmqError) -> UnsafeMutableRawPointer {
        guard let handle else { throw ZmqError(call: call, errno: ENOTSOCK) }
        return handle
    }

    // MARK: Endpoints

    /// Binds to `endpoint`, e.g. `tcp://127.0.0.1:5560`, `tcp://127.0.0.1:*` (an ephemeral port: read it back
    /// with ``lastEndpoint``) or `ipc:///run/nb-serve/rank0.sock`.
    public func bind(_ endpoint: String) throws(ZmqError) {
        let handle = try openHandle("zmq_bind")
        try retryingZmqCall("zmq_bind", endpoint: endpoint) { zmq_bind(handle, endpoint) }
    }

    /// Connects to `endpoint`. The connection is made (and remade) in the background; this does not wait for it.
    public func connect(_ endpoint: String) throws(ZmqError) {
        let handle = try openHandle("zmq_connect")
        try retryingZmqCall("zmq_connect", endpoint: endpoint) { zmq_connect(handle, endpoint) }
    }

    /// Stops listening on `endpoint`, which must be spelled as ``lastEndpoint`` reported it for wildcard binds.
    public func unbind(_ endpoint: String) throws(ZmqError) {
        let handle = try openHandle("zmq_unbind")
        try retryingZmqCall("zmq_unbind", endpoint: endpoint) { zmq_unbind(handle, endpoint) }
    }

    /// Drops the connection to `endpoint` made with ``connect(_:)``.
    public func disconnect(_ endpoint: String) throws(ZmqError) {
        let handle = try openHandle("zmq_disconnect")
        try retryingZmqCall("zmq_disconnect", endpoint: endpoint) { zmq_disconnect(handle, endpoint) }
    }

    /// The endpoint of the last `bind` or `connect`, resolved: a wildcard port becomes the port chosen.
    public var lastEndpoint: String {
        get throws(ZmqError) {
            let handle = try openHandle("zmq_getsockopt(ZMQ_LAST_ENDPOINT)")
            // An ipc:// path is at most 107 bytes (sun_path) and a tcp:// address far less; 512 is ample.
            var buffer = [CChar](repeating: 0, count: 512)
            var size = buffer.count
            try retryingZmqCall("zmq_getsockopt(ZMQ_LAST_ENDPOINT)") {
                zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size)
            }
            // `size` counts the terminating NUL; never trust it beyond the buffer.
            let length = min(max(size - 1, 0), buffer.count - 1)
            return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    // MARK: Options

    /// Sets an `int` option, e.g. `try socket.set(.sendHighWaterMark, 4)`.
    public func set(_ option: ZmqIntOption, _ value: Int32) throws(ZmqError) {
        let handle = try openHandle("zmq_setsockopt(\(option.name))")
        var value = value
        try retryingZmqCall("zmq_setsockopt(\(option.name))") {
            zmq_setsockopt(handle, option.rawValue, &value, MemoryLayout<Int32>.size)
        }
    }

    /// Reads an `int` option.
    public func get(_ option: ZmqIntOption) throws(ZmqError) -> Int32 {
        let handle = try openHandle("zmq_getsockopt(\(option.name))")
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try retryingZmqCall("zmq_getsockopt(\(option.name))") { zmq_getsockopt(handle, option.rawValue, &value, &size) }
        return value
    }

    /// Sets an `int64_t` option, e.g. `try socket.set(.maximumMessageSize, 65536)`.
    public func set(_ option: ZmqInt64Option, _ value: Int64) throws(ZmqError) {
        let handle = try openHandle("zmq_setsockopt(\(option.name))")
        var value = value
        try retryingZmqCall("zmq_setsockopt(\(option.name))") {
            zmq_setsockopt(handle, option.rawValue, &value, MemoryLayout<Int64>.size)
        }
    }

    /// Sets a boolean option, e.g. `try socket.set(.immediate, true)`.
    public func set(_ option: ZmqBoolOption, _ value: Bool) throws(ZmqError) {
        try set(ZmqIntOption(rawValue: option.rawValue, name: option.name), value ? 1 : 0)
    }

    /// Reads a boolean option.
    public func get(_ option: ZmqBoolOption) throws(ZmqError) -> Bool {
        try get(ZmqIntOption(rawValue: option.rawValue, name: option.name)) != 0
    }
}
