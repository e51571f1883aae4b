import CNBSystem
import Glibc

/// How a child process ended, decoded from a `waitpid` status: the one place the package reads one.
public enum ProcessExit: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public init(waitStatus status: Int32) {
        if status & 0x7f == 0 {
            self = .exited((status >> 8) & 0xff)
        } else {
            self = .signaled(status & 0x7f)
        }
    }

    /// Whether the process exited by itself with status 0.
    public var isClean: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal): "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
        }
    }

    /// Reaps `pid` if it has ended; nil while it runs.
    public static func reap(_ pid: pid_t) -> ProcessExit? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return nil }
        return ProcessExit(waitStatus: status)
    }

    /// Waits up to `timeoutMilliseconds` for `pid` to end, without sleeping: polls its pidfd. Reaps and
    /// returns how it ended, or nil when it is still running at the deadline.
    public static func wait(_ pid: pid_t, timeoutMilliseconds: Int32) -> ProcessExit? {
        if let done = reap(pid) { return done }
        let fd = nb_pidfd_open(pid)
        guard fd >= 0 else { return reap(pid) }
        defer { close(fd) }
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var result: Int32
        repeat { result = poll(&entry, 1, timeoutMilliseconds) } while result < 0 && errno == EINTR
        return reap(pid)
    }
}
