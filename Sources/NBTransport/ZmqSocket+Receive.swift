import CZmq
import Glibc

extension ZmqSocket {
    /// Receives one whole multipart message, each part copied into an array the caller owns.
    ///
    /// - Parameter timeout: how long to wait for the message: nil waits as ``ZmqIntOption/receiveTimeout``
    ///   says (forever by default), `.zero` only takes a message already there. Millisecond resolution,
    ///   rounded up.
    /// - Returns: the parts, or nil when no message arrived in time.
    public func receiveMultipart(timeout: Duration? = nil) throws(ZmqError) -> [[UInt8]]? {
        let handle = try openHandle("zmq_msg_recv")
        // On the heap, so the address libzmq sees (and a small message's inline data) stays put between calls.
        let message = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        zmq_msg_init(message)
        defer {
            _ = zmq_msg_close(message)
            message.deallocate()
        }

        guard try receiveFirstPart(message, handle: handle, timeout: timeout) else { return nil }
        var parts = [ZmqSocket.copyOut(message)]
        // ZeroMQ delivers a multipart message whole: once the first part is here, all of it is, so these
        // blocking receives never wait.
        while zmq_msg_more(message) == 1 {
            try retryingZmqCall("zmq_msg_recv") { zmq_msg_recv(message, handle, 0) }
            parts.append(ZmqSocket.copyOut(message))
        }
        return parts
    }

    /// Waits for the first part; false on timeout.
    private func receiveFirstPart(
        _ message: UnsafeMutablePointer<zmq_msg_t>, handle: UnsafeMutableRawPointer, timeout: Duration?
    ) throws(ZmqError) -> Bool {
        guard let timeout else {
            while true {
                if zmq_msg_recv(message, handle, 0) != -1 { return true }
                let code = zmq_errno()
                if code == EAGAIN { return false }
                // A signal interrupted the wait: wait again, as the socket's own timeout says.
                if code != EINTR { throw ZmqError(call: "zmq_msg_recv", errno: code) }
            }
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            if zmq_msg_recv(message, handle, ZMQ_DONTWAIT) != -1 { return true }
            let code = zmq_errno()
            guard code == EAGAIN || code == EINTR else { throw ZmqError(call: "zmq_msg_recv", errno: code) }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { return false }
            // Sleep in zmq_poll until something arrives or time is up; then try the receive once more.
            var item = zmq_pollitem_t(socket: handle, fd: -1, events: Int16(ZMQ_POLLIN), revents: 0)
            if zmq_poll(&item, 1, milliseconds(remaining)) == -1 {
                let code = zmq_errno()
                if code != EINTR { throw ZmqError(call: "zmq_poll", errno: code) }
            }
        }
    }

    /// The message's bytes as an owned array.
    private static func copyOut(_ message: UnsafeMutablePointer<zmq_msg_t>) -> [UInt8] {
        let count = zmq_msg_size(message)
        guard count > 0, let data = zmq_msg_data(message) else { return [] }
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            if let base = buffer.baseAddress { UnsafeMutableRawPointer(base).copyMemory(from: data, byteCount: count) }
            initialized = count
        }
    }
}

/// `duration` in whole milliseconds, rounded up (so a short wait is never turned into no wait), for libzmq's
/// `long` timeouts; negative durations are 0.
func milliseconds(_ duration: Duration) -> Int {
    let (seconds, attoseconds) = duration.components
    if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
    let (wholeMilliseconds, overflow) = seconds.multipliedReportingOverflow(by: 1000)
    if overflow { return Int.max }
    let fraction = (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    let (total, overflowed) = wholeMilliseconds.addingReportingOverflow(fraction)
    return overflowed ? Int.max : Int(clamping: total)
}
