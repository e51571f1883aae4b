import Glibc

/// A failed system call: which call, on what, and `errno`'s text.
public struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    public let call: String
    public let path: String
    public let errno: Int32
    /// Says more than `errno`'s text where that would mislead (e.g. "not a regular file (a FIFO)").
    public let detail: String?

    public init(call: String, path: String, errno: Int32, detail: String? = nil) {
        self.call = call
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        if let detail { return displayText("\(path): \(detail)") }
        return displayText("\(path): \(call) failed: \(String(cString: strerror(errno))) (errno \(errno))")
    }
}

/// Runs `body` until it stops failing with `EINTR`; turns any other `-1` into a typed error.
/// Never use it for `close`: on Linux the descriptor is gone even when `close` reports `EINTR`.
@discardableResult
func retryingSystemCall<T: BinaryInteger>(_ call: String, path: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemCallError(call: call, path: path, errno: code)
    }
}

/// An open file descriptor, owned: closed exactly once by `close()` or on deinit.
final class OwnedFileDescriptor {
    let rawValue: Int32
    private var isOpen = true

    init(opening path: String, flags: Int32) throws(SystemCallError) {
        rawValue = try retryingSystemCall("open", path: path) { open(path, flags | O_CLOEXEC) }
    }

    /// Creates or truncates a regular file for writing, mode 0644 before the umask.
    init(creating path: String) throws(SystemCallError) {
        rawValue = try retryingSystemCall("open", path: path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
    }

    func close() {
        guard isOpen else { return }
        isOpen = false
        _ = Glibc.close(rawValue)
    }

    deinit { close() }
}
