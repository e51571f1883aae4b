import Glibc
import NBVocabulary

/// A failed system call: which call, on what, and `errno`'s text. The one error type of nb-serve's system
/// calls (storage, daemon and client alike).
public struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    public let call: String
    public let path: String
    public let errno: Int32
    /// Says more than `errno`'s text where that would mislead (e.g. "not a regular file (a FIFO)").
    public let detail: String?

    /// A failed call on a file (`path` names it) or, with an empty path, on something else (a pipe, a socket
    /// `call` describes).
    public init(call: String, path: String = "", errno: Int32, detail: String? = nil) {
        self.call = call
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let subject = path.isEmpty ? "" : "\(path): "
        if let detail { return displayText(subject + detail) }
        return displayText("\(subject)\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))")
    }
}

/// Runs `body` until it stops failing with `EINTR`; turns any other `-1` into a typed error.
/// Never use it for `close`: on Linux the descriptor is gone even when `close` reports `EINTR`.
@discardableResult
public func retryingSystemCall<T: BinaryInteger>(_ call: String, path: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemCallError(call: call, path: path, errno: code)
    }
}

/// An open file descriptor, owned: closed exactly once by `close()` or on deinit.
public final class OwnedFileDescriptor {
    public let rawValue: Int32
    private var isOpen = true

    public init(opening path: String, flags: Int32) throws(SystemCallError) {
        rawValue = try retryingSystemCall("open", path: path) { open(path, flags | O_CLOEXEC) }
    }

    /// Creates or truncates a regular file for writing, mode 0644 before the umask.
    public init(creating path: String) throws(SystemCallError) {
        rawValue = try retryingSystemCall("open", path: path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
    }

    public func close() {
        guard isOpen else { return }
        isOpen = false
        _ = Glibc.close(rawValue)
    }

    deinit { close() }
}

/// Writes all of `bytes` to `fd`, retrying after `EINTR` and short writes; `what` names the target in errors.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, what: String) throws(SystemCallError) {
    var done = 0
    while done < bytes.count {
        let count = try retryingSystemCall("write", path: what) { write(fd, bytes.baseAddress! + done, bytes.count - done) }
        guard count > 0 else { throw SystemCallError(call: "write", path: what, errno: EIO, detail: "write made no progress") }
        done += count
    }
}

/// Reads exactly `buffer.count` bytes from `fd`. Returns false at end of file before the first byte (the
/// writer closed cleanly); end of file in the middle is an error.
public func readExactly(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, what: String) throws(SystemCallError) -> Bool {
    var done = 0
    while done < buffer.count {
        let count = try retryingSystemCall("read", path: what) { read(fd, buffer.baseAddress! + done, buffer.count - done) }
        if count == 0 {
            guard done == 0 else { throw SystemCallError(call: "read", path: what, errno: EIO, detail: "ended after \(done) of \(buffer.count) bytes") }
            return false
        }
        done += count
    }
    return true
}

/// Creates `path` and any missing parents with `mode` (before the umask), like `mkdir -p`; an existing
/// directory is fine, anything else in the way is an error naming it.
public func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemCallError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
        if mkdir(prefix, mode) == 0 { continue }
        let code = errno
        var info = stat()
        guard code == EEXIST, stat(prefix, &info) == 0 else { throw SystemCallError(call: "mkdir", path: prefix, errno: code) }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SystemCallError(call: "mkdir", path: prefix, errno: ENOTDIR, detail: "exists and is not a directory")
        }
    }
}
