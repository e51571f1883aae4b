import CZmq

/// Counts the peers connected to a bound socket, from libzmq's socket monitor (`zmq_socket_monitor`):
/// `ZMQ_EVENT_ACCEPTED` adds one, `ZMQ_EVENT_DISCONNECTED` takes one away. Events arrive on an inproc
/// `PAIR` socket that the owner polls (``socket``) and drains (``drain()``).
public final class ZmqPeerMonitor {
    /// The monitor's event socket: readable when events are waiting.
    public let socket: ZmqSocket
    /// Peers connected now.
    public private(set) var peers = 0

    /// Starts monitoring `monitored` (which must live in `context`) on `inproc://address`.
    public init(_ monitored: ZmqSocket, context: ZmqContext, address: String) throws(ZmqError) {
        let handle = try monitored.openHandle("zmq_socket_monitor")
        let endpoint = "inproc://" + address
        let events = Int32(ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED)
        try retryingZmqCall("zmq_socket_monitor", endpoint: endpoint) { zmq_socket_monitor(handle, endpoint, events) }
        socket = try ZmqSocket(.pair, context: context)
        try socket.set(.linger, 0)
        try socket.connect(endpoint)
    }

    /// Reads every waiting event and updates ``peers``.
    public func drain() throws(ZmqError) {
        while let frames = try socket.receiveMultipart(timeout: .zero) {
            // Frame 0: the event (16 bits, native order) and its value (32 bits); frame 1: the endpoint.
            guard let first = frames.first, first.count >= 2 else { continue }
            let event = UInt16(first[0]) | UInt16(first[1]) << 8
            if Int32(event) == ZMQ_EVENT_ACCEPTED { peers += 1 }
            if Int32(event) == ZMQ_EVENT_DISCONNECTED { peers = max(0, peers - 1) }
        }
    }

    public func close() {
        socket.close()
    }
}
