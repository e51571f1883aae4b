import CZmq
import Glibc

extension ZmqSocket {
    /// Sends `parts` as one multipart message (each but the last with `ZMQ_SNDMORE`).
    ///
    /// Returns false when nothing was sent because the socket cannot take the message now: with
    /// `dontWait`, because every peer is at its high-water mark (or, for `push`, no peer is connected yet);
    /// without it, because ``ZmqIntOption/sendTimeout`` ran out. Any other failure throws.
    ///
    /// A multipart message is atomic in ZeroMQ: once libzmq has accepted the first part it accepts the rest
    /// (the high-water mark counts whole messages), so only the first part is sent with `ZMQ_DONTWAIT`; the
    /// rest are sent blocking, which then never waits. Zero-copy parts are released as ``ZeroCopyBuffer``
    /// describes, on every path, including a throw.
    public func send(_ parts: [ZmqPart], dontWait: Bool = false) throws(ZmqError) -> Bool {
        try sendMultipart(count: parts.count, dontWait: dontWait) { index, message in
            switch parts[index] {
            case .bytes(let bytes):
                return bytes.withUnsafeBytes { ZmqSocket.initializeCopy(message, of: $0) }
            case .zeroCopy(let buffer):
                return ZmqSocket.initializeZeroCopy(message, with: buffer)
            }
        } abandon: { range in
            // Parts never turned into messages still owe their release callback.
            for case .zeroCopy(let buffer) in parts[range] { buffer.onRelease() }
        }
    }

    /// Sends byte arrays as one multipart message; see the `[ZmqPart]` overload.
    public func send(_ parts: [[UInt8]], dontWait: Bool = false) throws(ZmqError) -> Bool {
        try sendMultipart(count: parts.count, dontWait: dontWait) { index, message in
            parts[index].withUnsafeBytes { ZmqSocket.initializeCopy(message, of: $0) }
        } abandon: { _ in }
    }

    /// Sends memory as one multipart message, copying each buffer into its message before anything is sent,
    /// so the buffers need only be valid during the call; see the `[ZmqPart]` overload.
    public func send(copying parts: [UnsafeRawBufferPointer], dontWait: Bool = false) throws(ZmqError) -> Bool {
        try sendMultipart(count: parts.count, dontWait: dontWait) { index, message in
            ZmqSocket.initializeCopy(message, of: parts[index])
        } abandon: { _ in }
    }

    /// Builds every message first, so that a failure part-way leaves nothing half-sent, then sends them in order.
    /// `initialize` returns 0 or an errno; `abandon` gets the parts that never became messages.
    private func sendMultipart(
        count: Int,
        dontWait: Bool,
        initialize: (Int, UnsafeMutablePointer<zmq_msg_t>) -> Int32,
        abandon: (Range<Int>) -> Void
    ) throws(ZmqError) -> Bool {
        guard count > 0 else {
            abandon(0..<count)
            throw ZmqError(call: "zmq_msg_send", errno: EINVAL)
        }
        let messages = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: count)
        var initialized = 0
        // Every message not sent is closed, which runs the release of a zero-copy part that was never queued.
        var sent = 0
        defer {
            for index in sent..<initialized { _ = zmq_msg_close(messages + index) }
            messages.deallocate()
        }
        while initialized < count {
            let code = initialize(initialized, messages + initialized)
            if code != 0 {
                abandon((initialized + 1)..<count)
                throw ZmqError(call: "zmq_msg_init", errno: code)
            }
            initialized += 1
        }

        let handle = try openHandle("zmq_msg_send")
        while sent < count {
            let more = sent < count - 1 ? ZMQ_SNDMORE : 0
            let flags = more | (sent == 0 && dontWait ? ZMQ_DONTWAIT : 0)
            if zmq_msg_send(messages + sent, handle, flags) == -1 {
                let code = zmq_errno()
                if code == EINTR { continue }
                // Nothing of the message has gone yet: "would block" (or the send timeout) is an answer, not an error.
                if code == EAGAIN && sent == 0 { return false }
                throw ZmqError(call: "zmq_msg_send", errno: code)
            }
            // A sent message belongs to libzmq now (the zmq_msg_t is left empty); it must not be closed here.
            sent += 1
        }
        return true
    }

    /// A message holding a copy of `bytes`; 0 or an errno.
    static func initializeCopy(_ message: UnsafeMutablePointer<zmq_msg_t>, of bytes: UnsafeRawBufferPointer) -> Int32 {
        guard zmq_msg_init_size(message, bytes.count) == 0 else { return zmq_errno() }
        if let source = bytes.baseAddress, bytes.count > 0, let destination = zmq_msg_data(message) {
            destination.copyMemory(from: source, byteCount: bytes.count)
        }
        return 0
    }

    /// A message pointing at `buffer`'s memory, with its release callback attached; 0 or an errno. On failure
    /// the callback has already run, so the caller must not run it again.
    static func initializeZeroCopy(_ message: UnsafeMutablePointer<zmq_msg_t>, with buffer: ZeroCopyBuffer) -> Int32 {
        let release = Unmanaged.passRetained(ZeroCopyRelease(buffer.onRelease)).toOpaque()
        // libzmq only reads the data of a message it sends; the mutable pointer is its API's spelling.
        let data = buffer.bytes.baseAddress.map { UnsafeMutableRawPointer(mutating: $0) }
        let result = zmq_msg_init_data(message, data, buffer.bytes.count, { _, hint in
            // Runs on a libzmq I/O thread once the message's last reference is gone: exactly once per message.
            guard let hint else { return }
            Unmanaged<ZeroCopyRelease>.fromOpaque(hint).takeRetainedValue().onRelease()
        }, release)
        guard result == 0 else {
            let code = zmq_errno()
            Unmanaged<ZeroCopyRelease>.fromOpaque(release).takeRetainedValue().onRelease()
            return code
        }
        return 0
    }
}
