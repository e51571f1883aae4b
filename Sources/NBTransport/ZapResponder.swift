import Glibc

/// A ZAP handler (ZeroMQ RFC 27) for CURVE: accepts a connection only when the client's public key is in
/// an allow list, in one ZAP domain.
///
/// libzmq asks the handler bound at `inproc://zeromq.zap.01` of the same context about every new
/// connection to a CURVE server socket, and holds the connection until it answers. Without a handler,
/// any client that knows the server's public key (which is not a secret) would be let in. The responder
/// never blocks: the owner polls ``socket`` for `.readable` and calls ``answerPending()``. Bind it before
/// any CURVE server socket binds, so no connection is ever accepted without it.
public final class ZapResponder {
    /// The endpoint libzmq sends ZAP requests to.
    public static let endpoint = "inproc://zeromq.zap.01"

    /// The REP socket to poll for `.readable`.
    public let socket: ZmqSocket
    public let domain: String
    private let allowed: Set<CurveKey>
    /// Called once per refused connection, with the peer address and the reason (no key material beyond
    /// the client's public key, which is not secret).
    private let onRefusal: (String) -> Void

    public init(context: ZmqContext, domain: String, allowed: Set<CurveKey>, onRefusal: @escaping (String) -> Void) throws(ZmqError) {
        socket = try ZmqSocket(.rep, context: context)
        self.domain = domain
        self.allowed = allowed
        self.onRefusal = onRefusal
        do {
            try socket.set(.linger, 0)
            try socket.bind(Self.endpoint)
        } catch {
            socket.close()
            throw error
        }
    }

    /// Answers every request already queued; returns how many it answered. Never waits.
    @discardableResult
    public func answerPending() throws(ZmqError) -> Int {
        var answered = 0
        while let request = try socket.receiveMultipart(timeout: .zero) {
            _ = try socket.send(reply(to: request), dontWait: true)
            answered += 1
        }
        return answered
    }

    /// The reply to one ZAP request: version, request id, status code, status text, user id, metadata.
    func reply(to request: [[UInt8]]) -> [[UInt8]] {
        // Request: version "1.0", request id, domain, address, routing id, mechanism, credentials…
        let requestID = request.count > 1 ? request[1] : []
        func answer(_ code: String, _ text: String, user: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard request.count >= 6, request[0] == Array("1.0".utf8) else {
            onRefusal("malformed ZAP request (\(request.count) frames)")
            return answer("500", "malformed request")
        }
        let domainText = String(decoding: request[2], as: UTF8.self)
        let address = String(decoding: request[3], as: UTF8.self)
        let mechanism = String(decoding: request[5], as: UTF8.self)
        guard domainText == domain else {
            onRefusal("connection from \(address) in ZAP domain '\(domainText)' refused (not '\(domain)')")
            return answer("400", "unknown domain")
        }
        guard mechanism == "CURVE", request.count == 7, let key = CurveKey(bytes: request[6]) else {
            onRefusal("connection from \(address) with mechanism \(mechanism) refused (only CURVE is allowed)")
            return answer("400", "CURVE required")
        }
        guard allowed.contains(key) else {
            onRefusal("connection from \(address) with client key \(key.z85) refused: not in the authorised keys")
            return answer("400", "client key not authorised")
        }
        return answer("200", "OK", user: key.z85)
    }

    /// Unbinds and closes the handler; call before the context is closed.
    public func close() { socket.close() }
}
