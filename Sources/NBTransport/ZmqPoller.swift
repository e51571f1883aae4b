import CZmq
import Glibc

/// Waits on ZeroMQ sockets and plain file descriptors (pipes from worker processes, signal fds) at once,
/// with `zmq_poll`.
///
/// Register each source once and keep its ``Token``; every ``poll(timeout:)`` reports the events of all of
/// them. The poller keeps registered sockets alive but does not own file descriptors: remove a descriptor
/// before closing it. Like sockets, a poller belongs to one thread.
public final class ZmqPoller {
    /// Readiness of one source. On a file descriptor, `error` also stands for a hang-up (`POLLHUP`: the
    /// other end of a pipe closed) — libzmq folds every `poll()` event other than in/out into `ZMQ_POLLERR` —
    /// so a reader waiting for `readable` should ask for both and read to find the end of file.
    public struct Events: OptionSet, Sendable, Hashable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }

        /// A message can be received (socket), or a read will not block (descriptor).
        public static let readable = Events(rawValue: Int16(ZMQ_POLLIN))
        /// A message can be sent without blocking (socket), or a write will not block (descriptor).
        public static let writable = Events(rawValue: Int16(ZMQ_POLLOUT))
        /// An error condition or hang-up on a descriptor. Always reported; asking for it is optional.
        public static let error = Events(rawValue: Int16(ZMQ_POLLERR))
    }

    /// Names a registered source.
    public struct Token: Sendable, Hashable {
        let index: Int
    }

    /// What one ``poll(timeout:)`` found, by token.
    public struct Ready: Sendable {
        fileprivate let events: [Events]

        /// The events `token`'s source is ready for (empty if none, or if the token is not registered).
        public subscript(token: Token) -> Events {
            events.indices.contains(token.index) ? events[token.index] : []
        }

        /// Whether no source is ready (the poll timed out).
        public var isEmpty: Bool { events.allSatisfy(\.isEmpty) }
    }

    private enum Source {
        case socket(ZmqSocket)
        case fileDescriptor(Int32)
        case removed
    }

    private var sources: [Source] = []
    private var items: [zmq_pollitem_t] = []

    public init() {}

    /// Watches `socket` for `events`.
    @discardableResult
    public func add(_ socket: ZmqSocket, events: Events = .readable) -> Token {
        insert(.socket(socket), events: events)
    }

    /// Watches the file descriptor `fileDescriptor` (not owned: the caller closes it, after ``remove(_:)``).
    @discardableResult
    public func add(fileDescriptor: Int32, events: Events = .readable) -> Token {
        insert(.fileDescriptor(fileDescriptor), events: events)
    }

    /// Changes what `token`'s source is watched for, e.g. `.writable` only while something waits to be sent.
    public func update(_ token: Token, events: Events) {
        guard items.indices.contains(token.index) else { return }
        if case .removed = sources[token.index] { return }
        items[token.index].events = events.rawValue
    }

    /// Stops watching `token`'s source; its slot (and token) may be reused by a later `add`.
    public func remove(_ token: Token) {
        guard sources.indices.contains(token.index) else { return }
        sources[token.index] = .removed
        // poll() skips negative descriptors, so a removed slot costs nothing until it is reused.
        items[token.index] = zmq_pollitem_t(socket: nil, fd: -1, events: 0, revents: 0)
    }

    /// Waits until at least one source is ready or `timeout` passes (nil: forever; `.zero`: just look), and
    /// reports every source's events. Interrupted by a signal, it waits again for the time left.
    public func poll(timeout: Duration?) throws(ZmqError) -> Ready {
        // A socket closed since it was added would leave a dangling handle in the poll set: refuse it.
        for (index, source) in sources.enumerated() {
            if case .socket(let socket) = source {
                items[index].socket = try socket.openHandle("zmq_poll")
            }
            items[index].revents = 0
        }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            let wait = deadline.map { milliseconds($0 - ContinuousClock.now) } ?? -1
            let result = items.withUnsafeMutableBufferPointer { buffer in
                zmq_poll(buffer.baseAddress, Int32(buffer.count), wait)
            }
            if result != -1 { break }
            let code = zmq_errno()
            if code != EINTR { throw ZmqError(call: "zmq_poll", errno: code) }
        }
        return Ready(events: items.map { Events(rawValue: $0.revents) })
    }

    private func insert(_ source: Source, events: Events) -> Token {
        var item = zmq_pollitem_t(socket: nil, fd: -1, events: events.rawValue, revents: 0)
        if case .fileDescriptor(let descriptor) = source { item.fd = descriptor }
        if let free = sources.firstIndex(where: { if case .removed = $0 { true } else { false } }) {
            sources[free] = source
            items[free] = item
            return Token(index: free)
        }
        sources.append(source)
        items.append(item)
        return Token(index: sources.count - 1)
    }
}
