import CZmq
import Glibc

/// A failed libzmq call: which call, on which endpoint (when there is one), and libzmq's `errno`.
public struct ZmqError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The C function that failed, e.g. `zmq_bind`.
    public let call: String
    /// The endpoint the call was about (`bind`, `connect`, `unbind`, `disconnect`), or nil.
    public let endpoint: String?
    /// `zmq_errno()` right after the failure: a POSIX code or one of libzmq's own (`ETERM`, `EFSM`, …).
    public let errno: Int32

    public init(call: String, endpoint: String? = nil, errno: Int32) {
        self.call = call
        self.endpoint = endpoint
        self.errno = errno
    }

    /// `zmq_strerror` rather than `strerror`: it also knows libzmq's own codes (`ETERM`, `EFSM`, `EMTHREAD`).
    public var description: String {
        let text = String(cString: zmq_strerror(errno))
        let target = endpoint.map { "(\($0))" } ?? ""
        return "\(call)\(target) failed: \(text) (errno \(errno))"
    }

    /// The context was shut down or terminated: the socket must be closed, nothing else will work.
    public var isContextTerminated: Bool { errno == ETERM }
}

/// Runs `body` until it stops failing with `EINTR` (a signal arrived during a blocking call) and turns any
/// other `-1` into a ``ZmqError`` naming `call`. Never wrap `zmq_close` or `zmq_msg_close` in it: they do not
/// fail with `EINTR`, and retrying a close is never right.
@discardableResult
func retryingZmqCall(_ call: String, endpoint: String? = nil, _ body: () -> Int32) throws(ZmqError) -> Int32 {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = zmq_errno()
        if code == EINTR { continue }
        throw ZmqError(call: call, endpoint: endpoint, errno: code)
    }
}
