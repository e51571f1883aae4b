import Foundation
import Glibc
import NBTransport

/// Why a client of the daemon could not do what it was asked (no answer, a refusal, a broken session).
public struct ClientError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One request/reply exchange with the daemon's control socket, bounded in time.
public struct ControlClient {
    public let endpoint: String
    public let timeout: Double
    public var curve: ClientCurve?
    /// A context to open the request's socket in (kept by the caller across requests); nil: one of its own.
    let context: ZmqContext?

    public init(endpoint: String, timeout: Double, curve: ClientCurve? = nil, context: ZmqContext? = nil) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self.context = context
    }

    /// Sends `body` and returns the reply; throws ``ClientError`` when nothing answers within `timeout`.
    public func request(_ body: [String: Any]) throws -> [String: Any] {
        let owned = self.context == nil ? try ZmqContext(ioThreads: 1) : nil
        defer { owned?.close() }
        guard let context = self.context ?? owned else { throw ClientError("no ZeroMQ context") }
        let socket = try ZmqSocket(.req, context: context)
        defer { socket.close() }
        try socket.set(.linger, 0)
        try curve?.apply(to: socket, endpoint: endpoint)
        try checkIPCAccess(endpoint)
        try socket.connect(endpoint)
        let data = try JSONSerialization.data(withJSONObject: body)
        _ = try socket.send([Array(data)])
        guard let frames = try socket.receiveMultipart(timeout: .milliseconds(Int(timeout * 1000))), let first = frames.first else {
            let hint = endpoint.hasPrefix("tcp://") && curve == nil ? "; if its tcp endpoints use CURVE, give --server-key and --client-key" : ""
            throw ClientError("no answer from \(endpoint) within \(timeout) s (is nb-serve run running?\(hint))")
        }
        guard let reply = try JSONSerialization.jsonObject(with: Data(first)) as? [String: Any] else {
            throw ClientError("\(endpoint) answered something other than a JSON object")
        }
        return reply
    }
}

/// A client's CURVE keys: applied to every tcp endpoint it connects to.
public struct ClientCurve {
    public let serverKey: CurveKey
    public let keyPair: CurveKeyPair

    public init(serverKey: CurveKey, keyPair: CurveKeyPair) {
        self.serverKey = serverKey
        self.keyPair = keyPair
    }

    public func apply(to socket: ZmqSocket, endpoint: String) throws {
        guard endpoint.hasPrefix("tcp://") else { return }
        try socket.makeCurveClient(serverKey: serverKey, keyPair: keyPair)
    }
}

/// A clear error, rather than a wait that ends in a timeout, when this user may not connect to an ipc
/// endpoint: connecting to a unix socket needs search permission on its directories and write
/// permission on the socket file.
public func checkIPCAccess(_ endpoint: String) throws {
    guard endpoint.hasPrefix("ipc://") else { return }
    let path = String(endpoint.dropFirst(6))
    if access(path, W_OK) == 0 { return }
    let code = errno
    guard code == EACCES else { return }  // ENOENT: not started yet; the timeout says so
    var info = stat()
    let detail = stat(path, &info) == 0
        ? String(format: "the socket is mode %04o, group %u", info.st_mode & 0o7777, info.st_gid)
        : "a directory on the path is not searchable"
    throw ClientError(
        "permission denied connecting to \(endpoint): \(detail), and this user (uid \(getuid())) may not connect; the daemon's serve.socket_mode and serve.socket_group decide who may (README \"Trust model\")")
}
