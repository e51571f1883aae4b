import CZmq
import Glibc
import Synchronization

/// A libzmq context: its I/O threads and the sockets made from it.
///
/// Every ``ZmqSocket`` keeps its context alive, so the context is only terminated (`zmq_ctx_term`) once
/// every socket made from it has been closed. `ZMQ_BLOCKY` is off, which gives every new socket a linger of
/// 0: closing never waits for unsent messages unless a socket sets a linger itself, and then at most that long.
///
/// A context is safe to share between threads (libzmq's contexts are); its sockets are not. Each process
/// must create its own context: never use one across `fork()`.
public final class ZmqContext: Sendable {
    private struct State {
        var handle: UnsafeMutableRawPointer?
        var openSockets = 0
        var closeRequested = false
    }

    private let state: Mutex<State>

    /// Creates a context with `ioThreads` I/O threads (libzmq's default is 1, enough for about 1 GB/s).
    public init(ioThreads: Int32 = 1) throws(ZmqError) {
        guard let handle = zmq_ctx_new() else { throw ZmqError(call: "zmq_ctx_new", errno: zmq_errno()) }
        // Both must be set before the first socket exists; a failure here leaves no half-built context.
        do {
            try retryingZmqCall("zmq_ctx_set(ZMQ_BLOCKY)") { zmq_ctx_set(handle, ZMQ_BLOCKY, 0) }
            try retryingZmqCall("zmq_ctx_set(ZMQ_IO_THREADS)") { zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads) }
        } catch {
            _ = zmq_ctx_term(handle)
            throw error
        }
        state = Mutex(State(handle: handle))
    }

    /// Ends the context: blocking calls on its sockets return `ETERM` at once and new sockets are refused.
    /// The context is terminated now when no socket is open, otherwise when the last one closes. Never blocks
    /// for longer than the longest linger of a socket closed with messages still queued.
    public func close() {
        let handle: UnsafeMutableRawPointer? = state.withLock { state in
            guard !state.closeRequested, let handle = state.handle else { return nil }
            state.closeRequested = true
            // Wakes any thread blocked in a send, receive or poll on this context's sockets.
            _ = zmq_ctx_shutdown(handle)
            guard state.openSockets == 0 else { return nil }
            state.handle = nil
            return handle
        }
        if let handle { ZmqContext.terminate(handle) }
    }

    deinit {
        // Sockets keep their context alive, so no socket is open here and termination cannot wait for one.
        if let handle = state.withLock({ $0.handle }) { ZmqContext.terminate(handle) }
    }

    /// Creates a socket and counts it open; used by ``ZmqSocket/init(_:context:)``.
    func makeSocketHandle(type: Int32) throws(ZmqError) -> UnsafeMutableRawPointer {
        let result: Result<UnsafeMutableRawPointer, ZmqError> = state.withLock { state in
            guard !state.closeRequested, let handle = state.handle else {
                return .failure(ZmqError(call: "zmq_socket", errno: ETERM))
            }
            guard let socket = zmq_socket(handle, type) else {
                return .failure(ZmqError(call: "zmq_socket", errno: zmq_errno()))
            }
            state.openSockets += 1
            return .success(socket)
        }
        return try result.get()
    }

    /// Called once by each socket when it closes; finishes a `close()` that was waiting for it.
    func socketDidClose() {
        let handle: UnsafeMutableRawPointer? = state.withLock { state in
            state.openSockets -= 1
            guard state.closeRequested, state.openSockets == 0, let handle = state.handle else { return nil }
            state.handle = nil
            return handle
        }
        if let handle { ZmqContext.terminate(handle) }
    }

    private static func terminate(_ handle: UnsafeMutableRawPointer) {
        // zmq_ctx_term may be interrupted by a signal and must then be called again; any other failure
        // (EFAULT) means the handle is already gone.
        while zmq_ctx_term(handle) == -1, zmq_errno() == EINTR {}
    }
}
