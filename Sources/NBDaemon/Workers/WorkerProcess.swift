import CNBSystem
import Glibc
import NBSystem

/// A decoding worker: this same executable started in its hidden `worker` mode with `posix_spawn`
/// (fork + exec in one step), so no Swift code ever runs in a forked copy of the daemon's threads.
/// A dead worker is replaced by spawning another, at any time.
///
/// The child's stdin (fd 0) receives `WorkerTask` records, its stdout (fd 1) returns `WorkerResult`s,
/// fd 3 is the shared batch memory, fd 4 the daemon's config text; stderr is the daemon's (its log).
public final class WorkerProcess {
    public let pid: pid_t
    /// Daemon's end of the task pipe (non-blocking).
    public let taskDescriptor: Int32
    /// Daemon's end of the result pipe (non-blocking).
    public let resultDescriptor: Int32
    /// A pidfd: polls readable once the process has ended (-1 where the kernel has none).
    public let pidDescriptor: Int32
    /// Tasks sent and not yet answered, oldest first.
    public var outstanding: [WorkerTask] = []
    public var completed = 0
    private var pendingResult: [UInt8] = []
    private var closed = false

    /// Starts `executable worker ARGUMENTS…` with the shared memory `memory` as fd 3 and the config text
    /// `config` as fd 4.
    public init(executable: String, arguments: [String], memory: Int32, config: Int32) throws(SystemCallError) {
        var taskPipe: [Int32] = [0, 0]
        var resultPipe: [Int32] = [0, 0]
        guard nb_pipe_cloexec(&taskPipe, 0) == 0 else { throw SystemCallError(call: "pipe2", errno: errno) }
        guard nb_pipe_cloexec(&resultPipe, 0) == 0 else {
            let code = errno
            Glibc.close(taskPipe[0]); Glibc.close(taskPipe[1])
            throw SystemCallError(call: "pipe2", errno: code)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 clears close-on-exec on the target, so exactly fds 0 to 4 reach the worker.
        posix_spawn_file_actions_adddup2(&actions, taskPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, resultPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, memory, 3)
        posix_spawn_file_actions_adddup2(&actions, config, 4)

        let argv = [executable, "worker"] + arguments
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cArguments.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, nil, &cArguments, environ)
        Glibc.close(taskPipe[0])
        Glibc.close(resultPipe[1])
        guard result == 0 else {
            Glibc.close(taskPipe[1]); Glibc.close(resultPipe[0])
            throw SystemCallError(call: "posix_spawn(\(executable))", errno: result)
        }
        pid = child
        pidDescriptor = nb_pidfd_open(child)
        taskDescriptor = taskPipe[1]
        resultDescriptor = resultPipe[0]
        _ = fcntl(taskDescriptor, F_SETFL, fcntl(taskDescriptor, F_GETFL) | O_NONBLOCK)
        _ = fcntl(resultDescriptor, F_SETFL, fcntl(resultDescriptor, F_GETFL) | O_NONBLOCK)
    }

    /// Sends a task. Records are far smaller than a pipe's buffer and few are outstanding per worker, so
    /// a write either completes or fails; a failure means the worker is gone.
    public func send(_ task: WorkerTask) -> Bool {
        let bytes = task.encoded
        let written = bytes.withUnsafeBytes { write(taskDescriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else { return false }
        outstanding.append(task)
        return true
    }

    /// What one read of the result pipe brought.
    public struct Received {
        /// Complete results, in the order the worker wrote them.
        public var results: [WorkerResult] = []
        /// The pipe reached end of file, or carried something that is not a result: the worker is gone (or
        /// must be treated as gone). Results that arrived before are still in `results`.
        public var ended = false
    }

    /// Reads whatever results have arrived, and whether the worker is gone. Results written just before a
    /// worker died still count, so a task it finished is never blamed for its death.
    public func receive() -> Received {
        var received = Received()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(resultDescriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                pendingResult.append(contentsOf: buffer[0..<count])
                continue
            }
            if count == 0 { received.ended = true }
            if count < 0 && errno == EINTR { continue }
            break
        }
        let header = WorkerResult.headerByteCount
        while pendingResult.count >= header {
            let (id, nanoseconds, length) = pendingResult.withUnsafeBytes { bytes in
                (Int64(littleEndian: bytes.loadUnaligned(as: Int64.self)),
                 Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: Int64.self)),
                 Int(Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: Int64.self))))
            }
            guard length >= 0, length <= 1 << 20 else {
                received.ended = true
                break
            }
            guard pendingResult.count >= header + length else { break }
            let message = String(decoding: pendingResult[header..<(header + length)], as: UTF8.self)
            pendingResult.removeFirst(header + length)
            received.results.append(WorkerResult(id: id, decodeNanoseconds: nanoseconds, error: message))
            if let index = outstanding.firstIndex(where: { $0.id == id }) { outstanding.remove(at: index) }
            completed += 1
        }
        return received
    }

    /// Closes the pipes (the worker sees end of file and exits) without waiting.
    public func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(taskDescriptor)
        Glibc.close(resultDescriptor)
    }

    /// Reaps the process if it has ended; nil while it runs.
    public func reap() -> ProcessExit? {
        ProcessExit.reap(pid)
    }

    deinit {
        close()
        if pidDescriptor >= 0 { Glibc.close(pidDescriptor) }
    }
}
