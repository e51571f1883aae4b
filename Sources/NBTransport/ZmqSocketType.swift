import CZmq

/// The ZeroMQ socket patterns nb-serve uses.
public enum ZmqSocketType: Sendable, CaseIterable {
    /// Sends to connected `pull` peers, round-robin; blocks (or says "would block") when none can take more.
    case push
    /// Receives from connected `push` peers, fair-queued.
    case pull
    /// Strict send/receive alternation (a client of `rep` or `router`).
    case req
    /// Strict receive/send alternation (a server of `req`).
    case rep
    /// Addressed replies: every received message starts with the peer's routing id.
    case router
    /// Asynchronous `req`: round-robin sends, fair-queued receives.
    case dealer
    /// Exactly one peer, both directions.
    case pair

    var rawValue: Int32 {
        switch self {
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        case .req: ZMQ_REQ
        case .rep: ZMQ_REP
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .pair: ZMQ_PAIR
        }
    }
}

/// An `int`-valued socket option (`zmq_setsockopt` with an `int`). The common ones are named; any other
/// libzmq `int` option can be made with ``init(rawValue:name:)``.
public struct ZmqIntOption: Sendable, Hashable {
    public let rawValue: Int32
    /// The C name, for error messages.
    public let name: String

    public init(rawValue: Int32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    /// Milliseconds `close` (and context termination) keeps trying to deliver queued messages; -1 forever.
    /// 0 on every socket of a ``ZmqContext`` until set.
    public static let linger = ZmqIntOption(rawValue: ZMQ_LINGER, name: "ZMQ_LINGER")
    /// Outgoing high-water mark in messages (not bytes) per peer; 0 unlimited. libzmq's default is 1000.
    public static let sendHighWaterMark = ZmqIntOption(rawValue: ZMQ_SNDHWM, name: "ZMQ_SNDHWM")
    /// Incoming high-water mark in messages per peer; 0 unlimited. libzmq's default is 1000.
    public static let receiveHighWaterMark = ZmqIntOption(rawValue: ZMQ_RCVHWM, name: "ZMQ_RCVHWM")
    /// Milliseconds a blocking send waits before giving up (`EAGAIN`); -1 forever (the default).
    public static let sendTimeout = ZmqIntOption(rawValue: ZMQ_SNDTIMEO, name: "ZMQ_SNDTIMEO")
    /// Milliseconds a blocking receive waits before giving up (`EAGAIN`); -1 forever (the default).
    public static let receiveTimeout = ZmqIntOption(rawValue: ZMQ_RCVTIMEO, name: "ZMQ_RCVTIMEO")
    /// Kernel send buffer (`SO_SNDBUF`) in bytes; -1 leaves the OS default.
    public static let sendBuffer = ZmqIntOption(rawValue: ZMQ_SNDBUF, name: "ZMQ_SNDBUF")
    /// Kernel receive buffer (`SO_RCVBUF`) in bytes; -1 leaves the OS default.
    public static let receiveBuffer = ZmqIntOption(rawValue: ZMQ_RCVBUF, name: "ZMQ_RCVBUF")
}

/// A boolean socket option (an `int` that is 0 or 1 in C).
public struct ZmqBoolOption: Sendable, Hashable {
    public let rawValue: Int32
    /// The C name, for error messages.
    public let name: String

    public init(rawValue: Int32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    /// Queue messages only to peers whose connection is complete, so nothing waits in the pipe of a peer
    /// that may never come up.
    public static let immediate = ZmqBoolOption(rawValue: ZMQ_IMMEDIATE, name: "ZMQ_IMMEDIATE")
    /// Allow IPv6 on TCP endpoints (off by default: IPv4 only).
    public static let ipv6 = ZmqBoolOption(rawValue: ZMQ_IPV6, name: "ZMQ_IPV6")
}

/// An `int64_t`-valued socket option.
public struct ZmqInt64Option: Sendable, Hashable {
    public let rawValue: Int32
    /// The C name, for error messages.
    public let name: String

    public init(rawValue: Int32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    /// The largest message, in bytes, a peer may send; libzmq disconnects a peer that sends a larger one
    /// before any of it is delivered. -1 (the default) is no limit.
    public static let maximumMessageSize = ZmqInt64Option(rawValue: ZMQ_MAXMSGSIZE, name: "ZMQ_MAXMSGSIZE")
}
