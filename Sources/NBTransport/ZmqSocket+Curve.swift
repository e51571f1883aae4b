import CZmq
import Glibc

/// A CURVE key (a Curve25519 public or secret key): 32 bytes, written as 40 Z85 characters in key files
/// and in libzmq's API.
public struct CurveKey: Sendable, Hashable {
    /// The 32 raw key bytes.
    public let bytes: [UInt8]

    /// A key from its 32 raw bytes; nil for any other length.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    /// A key from its 40-character Z85 text; nil when the text is not exactly that.
    public init?(z85 text: String) {
        let characters = Array(text.utf8)
        // zmq_z85_decode checks the alphabet and the length (a multiple of 5), not that the result is 32 bytes.
        guard characters.count == 40 else { return nil }
        var decoded = [UInt8](repeating: 0, count: 32)
        let ok = (characters.map { CChar(bitPattern: $0) } + [0]).withUnsafeBufferPointer { text in
            decoded.withUnsafeMutableBufferPointer { zmq_z85_decode($0.baseAddress, text.baseAddress) != nil }
        }
        guard ok else { return nil }
        bytes = decoded
    }

    /// The key's 40-character Z85 text.
    public var z85: String {
        var text = [CChar](repeating: 0, count: 41)
        _ = bytes.withUnsafeBufferPointer { zmq_z85_encode(&text, $0.baseAddress, 32) }
        return String(decoding: text[..<40].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A CURVE key pair: a public key and the secret key it belongs to.
public struct CurveKeyPair: Sendable, Hashable {
    public let publicKey: CurveKey
    public let secretKey: CurveKey

    /// A pair whose public key is checked against the secret key (nil when they do not belong together).
    public init?(publicKey: CurveKey, secretKey: CurveKey) {
        guard let derived = try? CurveKeyPair.publicKey(of: secretKey), derived == publicKey else { return nil }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A fresh key pair from libzmq (libsodium's random source).
    public static func generate() throws(ZmqError) -> CurveKeyPair {
        var publicText = [CChar](repeating: 0, count: 41)
        var secretText = [CChar](repeating: 0, count: 41)
        try retryingZmqCall("zmq_curve_keypair") { zmq_curve_keypair(&publicText, &secretText) }
        defer { for index in secretText.indices { secretText[index] = 0 } }
        func key(_ text: [CChar]) throws(ZmqError) -> CurveKey {
            guard let key = CurveKey(z85: String(decoding: text[..<40].map { UInt8(bitPattern: $0) }, as: UTF8.self)) else {
                throw ZmqError(call: "zmq_curve_keypair", errno: EINVAL)
            }
            return key
        }
        let publicKey = try key(publicText)
        let secretKey = try key(secretText)
        return CurveKeyPair(checked: publicKey, secretKey: secretKey)
    }

    private init(checked publicKey: CurveKey, secretKey: CurveKey) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// The public key that belongs to `secretKey`.
    public static func publicKey(of secretKey: CurveKey) throws(ZmqError) -> CurveKey {
        var publicText = [CChar](repeating: 0, count: 41)
        let secretText = secretKey.z85.utf8.map { CChar(bitPattern: $0) } + [0]
        try retryingZmqCall("zmq_curve_public") { zmq_curve_public(&publicText, secretText) }
        guard let key = CurveKey(z85: String(decoding: publicText[..<40].map { UInt8(bitPattern: $0) }, as: UTF8.self)) else {
            throw ZmqError(call: "zmq_curve_public", errno: EINVAL)
        }
        return key
    }

    /// Whether this libzmq was built with CURVE (libsodium or tweetnacl): `zmq_has("curve")`.
    public static var isAvailable: Bool { zmq_has("curve") == 1 }
}

/// A socket option whose value is a ``CurveKey`` (`zmq_setsockopt` with 32 bytes).
public struct ZmqCurveKeyOption: Sendable, Hashable {
    public let rawValue: Int32
    /// The C name, for error messages.
    public let name: String

    /// This socket's own public key (a client's; a server's is derived from its secret key).
    public static let publicKey = ZmqCurveKeyOption(rawValue: ZMQ_CURVE_PUBLICKEY, name: "ZMQ_CURVE_PUBLICKEY")
    /// This socket's own secret key (client and server).
    public static let secretKey = ZmqCurveKeyOption(rawValue: ZMQ_CURVE_SECRETKEY, name: "ZMQ_CURVE_SECRETKEY")
    /// The server's public key, on a client socket: the handshake fails unless the server holds its secret key.
    public static let serverKey = ZmqCurveKeyOption(rawValue: ZMQ_CURVE_SERVERKEY, name: "ZMQ_CURVE_SERVERKEY")
}

/// A socket option whose value is a string.
public struct ZmqStringOption: Sendable, Hashable {
    public let rawValue: Int32
    /// The C name, for error messages.
    public let name: String

    /// The ZAP domain this socket's connections are authenticated in (sent to the ZAP handler).
    public static let zapDomain = ZmqStringOption(rawValue: ZMQ_ZAP_DOMAIN, name: "ZMQ_ZAP_DOMAIN")
}

extension ZmqBoolOption {
    /// Act as a CURVE server (with ``ZmqCurveKeyOption/secretKey``): every connection must complete the
    /// CURVE handshake, and is then authenticated by the context's ZAP handler, if one is bound.
    public static let curveServer = ZmqBoolOption(rawValue: ZMQ_CURVE_SERVER, name: "ZMQ_CURVE_SERVER")
}

extension ZmqIntOption {
    /// Bind to this already bound and listening file descriptor instead of creating one (for ipc: libzmq
    /// then neither unlinks the path before binding nor after closing). libzmq closes it with the socket.
    public static let useFileDescriptor = ZmqIntOption(rawValue: ZMQ_USE_FD, name: "ZMQ_USE_FD")
}

extension ZmqSocket {
    /// Sets a CURVE key option. Keys are copied by libzmq.
    public func set(_ option: ZmqCurveKeyOption, _ key: CurveKey) throws(ZmqError) {
        let handle = try openHandle("zmq_setsockopt(\(option.name))")
        try retryingZmqCall("zmq_setsockopt(\(option.name))") {
            key.bytes.withUnsafeBytes { zmq_setsockopt(handle, option.rawValue, $0.baseAddress, 32) }
        }
    }

    /// Sets a string option.
    public func set(_ option: ZmqStringOption, _ value: String) throws(ZmqError) {
        let handle = try openHandle("zmq_setsockopt(\(option.name))")
        let bytes = Array(value.utf8)
        try retryingZmqCall("zmq_setsockopt(\(option.name))") {
            bytes.withUnsafeBytes { zmq_setsockopt(handle, option.rawValue, $0.baseAddress, $0.count) }
        }
    }

    /// Makes this socket a CURVE server with `secretKey`, its connections authenticated in `zapDomain`.
    /// Set before `bind`.
    public func makeCurveServer(secretKey: CurveKey, zapDomain: String) throws(ZmqError) {
        try set(.curveServer, true)
        try set(.secretKey, secretKey)
        try set(.zapDomain, zapDomain)
    }

    /// Makes this socket a CURVE client of the server with public key `serverKey`, authenticating with
    /// `keyPair`. Set before `connect`.
    public func makeCurveClient(serverKey: CurveKey, keyPair: CurveKeyPair) throws(ZmqError) {
        try set(.serverKey, serverKey)
        try set(.publicKey, keyPair.publicKey)
        try set(.secretKey, keyPair.secretKey)
    }
}
