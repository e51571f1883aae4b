import Glibc

/// Tells systemd about the service's state the way `sd_notify(3)` does, without linking libsystemd: one
/// datagram of `KEY=value` lines to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`.
///
/// When the variable is unset (not started by systemd, or not `Type=notify`) every call does nothing and
/// returns false. Socket names starting with `@` are in the abstract namespace; others are paths.
public struct SystemdNotify: Sendable {
    /// `$NOTIFY_SOCKET` as found, or nil.
    public let socketName: String?

    /// Reads `$NOTIFY_SOCKET` from the process environment.
    public init() {
        socketName = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
    }

    /// Uses `socketName` instead of the environment (tests, or a caller that already read it); nil or empty
    /// disables notification.
    public init(socketName: String?) {
        self.socketName = socketName
    }

    /// `READY=1`: start-up is finished (sockets are bound); systemd now considers the service started.
    @discardableResult
    public func ready() throws(SystemdNotifyError) -> Bool { try notify(["READY=1"]) }

    /// `STOPPING=1`: shutdown has begun.
    @discardableResult
    public func stopping() throws(SystemdNotifyError) -> Bool { try notify(["STOPPING=1"]) }

    /// `WATCHDOG=1`: the service is alive (sent while it is healthy, at least every `WatchdogSec=`/2).
    @discardableResult
    public func watchdog() throws(SystemdNotifyError) -> Bool { try notify(["WATCHDOG=1"]) }

    /// How often systemd wants `WATCHDOG=1` (`WatchdogSec=`, passed as `$WATCHDOG_USEC`), halved as
    /// sd_watchdog_enabled(3) advises; nil when the watchdog is off or the variable names another process
    /// (`$WATCHDOG_PID`).
    public static func watchdogInterval() -> Duration? {
        guard let text = getenv("WATCHDOG_USEC").map({ String(cString: $0) }), let usec = Int64(text), usec > 0 else { return nil }
        if let pid = getenv("WATCHDOG_PID").map({ String(cString: $0) }), pid != String(getpid()) { return nil }
        return .microseconds(usec / 2)
    }

    /// `STATUS=…`: one line shown by `systemctl status`. Line breaks become spaces (a newline would start a
    /// new assignment).
    @discardableResult
    public func status(_ text: String) throws(SystemdNotifyError) -> Bool {
        let line = String(text.map { $0.isNewline ? " " : $0 })
        return try notify(["STATUS=" + line])
    }

    /// Sends `assignments` (`KEY=value` each, no newlines inside) as one datagram.
    /// - Returns: false when `$NOTIFY_SOCKET` is unset, true when the datagram was sent.
    @discardableResult
    public func notify(_ assignments: [String]) throws(SystemdNotifyError) -> Bool {
        guard let socketName, !socketName.isEmpty else { return false }
        var address = try Self.address(socketName)
        let message = Array(assignments.joined(separator: "\n").utf8)

        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw .systemCall(call: "socket", socket: socketName, errno: errno) }
        defer { _ = close(descriptor) }

        while true {
            let sent = message.withUnsafeBytes { bytes in
                withUnsafePointer(to: &address.storage) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, address.length)
                    }
                }
            }
            if sent >= 0 { return true }
            let code = errno
            if code != EINTR { throw .systemCall(call: "sendto", socket: socketName, errno: code) }
        }
    }

    /// The `sockaddr_un` for `name`: `@name` is abstract (a leading NUL, length without terminator), `/path` a
    /// file. Anything else (e.g. systemd's newer `vsock:` addresses) is refused.
    private static func address(_ name: String) throws(SystemdNotifyError) -> (storage: sockaddr_un, length: socklen_t) {
        var path = Array(name.utf8)
        let abstract = path.first == UInt8(ascii: "@")
        guard abstract || path.first == UInt8(ascii: "/") else { throw .unsupportedAddress(name) }
        if abstract { path[0] = 0 }

        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        // A path needs room for its terminating NUL; an abstract name is counted exactly and has none.
        guard path.count + (abstract ? 0 : 1) <= capacity else { throw .unsupportedAddress(name) }
        withUnsafeMutableBytes(of: &storage.sun_path) { $0.copyBytes(from: path) }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path) ?? 2
        return (storage, socklen_t(offset + path.count + (abstract ? 0 : 1)))
    }
}

/// Why a notification could not be sent to systemd.
public enum SystemdNotifyError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `$NOTIFY_SOCKET` is neither `@abstract` nor an absolute path, or too long for `sockaddr_un`.
    case unsupportedAddress(String)
    /// A system call failed.
    case systemCall(call: String, socket: String, errno: Int32)

    public var description: String {
        switch self {
        case .unsupportedAddress(let name):
            "NOTIFY_SOCKET '\(name)': not an absolute path or @abstract name that fits a unix socket address"
        case .systemCall(let call, let socket, let code):
            "NOTIFY_SOCKET '\(socket)': \(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        }
    }
}
