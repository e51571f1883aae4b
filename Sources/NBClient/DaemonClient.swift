import Foundation
import Glibc
import NBSystem
import NBTransport

/// The trainer's side of the daemon's protocol, in Swift: used by `nb-serve demo` and `nb-serve bench`
/// to consume epochs over the real sockets, as a trainer would.
public final class DaemonClient {
    public let control: String
    let context: ZmqContext
    var pulls: [Int: ZmqSocket] = [:]
    let endpointTemplate: String
    /// The daemon's `frames_per_sequence`, learned from its status on the first epoch.
    var framesPerSequence: Int?

    public init(control: String, endpointTemplate: String) throws {
        self.control = control
        self.endpointTemplate = endpointTemplate
        context = try ZmqContext(ioThreads: 1)
    }

    /// One control request; nil when the daemon does not answer within `timeout` seconds.
    public func request(_ body: [String: Any], timeout: Double = 10) throws -> [String: Any]? {
        do {
            return try ControlClient(endpoint: control, timeout: timeout, context: context).request(body)
        } catch is ClientError {
            return nil
        }
    }

    /// Waits until the daemon answers `status`, or throws after `timeout` seconds.
    public func waitUntilReady(timeout: Double, daemon: pid_t) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try? request(["cmd": "status"], timeout: 0.5)) != nil { return }
            if let exit = ProcessExit.reap(daemon) { throw ClientError("the daemon \(exit) during start-up") }
        }
        throw ClientError("the daemon did not answer on \(control) within \(Int(timeout)) s")
    }

    /// A received message: the decoded header and the raw tensor frames.
    public struct Received {
        public let header: WireProtocol.Header
        public let frames: [[UInt8]]
        /// The batch a `batch` or `lease` message carries.
        public var batch: WireProtocol.BatchHeader? {
            switch header {
            case .batch(let header): header
            case .lease(let lease): lease.batch
            case .end, .error: nil
            }
        }
        /// Bytes of tensor data: the frames', or a lease's tensors in shared memory.
        public var byteCount: Int {
            if case .lease(let lease) = header { return lease.tensors.reduce(0) { $0 + ($1.spec.byteCount ?? 0) } }
            return frames.reduce(0) { $0 + $1.count }
        }
    }

    /// Shared-memory sessions, per rank, once opened.
    var sessions: [Int: LeaseClient] = [:]

    /// Opens `rank`'s shared-memory session at `path` (the daemon's `status` names it as `shm_socket`).
    public func openSession(rank: Int, path: String) throws {
        sessions[rank] = try LeaseClient(path: path, rank: rank)
    }

    /// Asks for `epoch` of `stage` on `rank` and calls `body` with each message until `end` (or until
    /// `body` returns false). Acknowledges each batch. With a shared-memory session open for the rank, the
    /// batches come as leases, each released after `body` returns. Returns the number of batches received.
    @discardableResult
    public func consume(rank: Int, stage: String, epoch: Int, timeout: Double = 60, _ body: (Received) throws -> Bool) throws -> Int {
        let pull: ZmqSocket
        if let existing = pulls[rank] {
            pull = existing
        } else {
            pull = try ZmqSocket(.pull, context: context)
            try pull.set(.linger, 0)
            guard let endpoint = EndpointTemplate.render(endpointTemplate, rank: rank) else { throw ClientError("bad endpoint template") }
            try pull.connect(endpoint)
            pulls[rank] = pull
        }
        let session = sessions[rank]
        var epochRequest: [String: Any] = ["cmd": "epoch", "rank": rank, "stage": stage, "epoch": epoch]
        if session != nil { epochRequest["transport"] = "shm" }
        guard let reply = try request(epochRequest), reply["ok"] as? Bool == true, let stream = reply["stream"] as? Int else {
            throw ClientError("the daemon refused epoch \(epoch) for rank \(rank)")
        }
        // Acknowledged as trainers do: at every sequence group (the resume state's granularity) and at the end.
        if framesPerSequence == nil, let status = try request(["cmd": "status"]) {
            framesPerSequence = max(1, status["frames_per_sequence"] as? Int ?? 1)
        }
        let group = framesPerSequence ?? 1
        var batches = 0
        var position = 0
        while true {
            guard let frames = try pull.receiveMultipart(timeout: .milliseconds(Int(timeout * 1000))), let first = frames.first else {
                throw ClientError("no batch within \(Int(timeout)) s")
            }
            let header = try WireProtocol.decodeHeader(first)
            // Left over from an earlier stream of this rank: stale.
            guard header.stream == stream else { continue }
            if case .end = header {
                if position % group != 0 {
                    _ = try request(["cmd": "ack", "rank": rank, "stage": stage, "epoch": epoch, "batches": position, "stream": stream])
                }
                return batches
            }
            if case .batch = header { batches += 1 }
            if case .lease = header { batches += 1 }
            position += 1
            let received = Received(header: header, frames: Array(frames.dropFirst()))
            if position % group == 0 {
                _ = try request(["cmd": "ack", "rank": rank, "stage": stage, "epoch": epoch, "batches": position, "stream": stream])
            }
            let more = try body(received)
            if case .lease(let lease) = header { try session?.release([lease.lease]) }
            if !more { return batches }
        }
    }

    public func close() {
        for socket in pulls.values { socket.close() }
        context.close()
    }
}

/// A daemon started as a child process (`nb-serve run` with overrides), for `demo` and `bench`.
public final class ChildDaemon {
    public let pid: pid_t
    public let control: String
    public let endpoint: String
    public let directory: String

    public init(executable: String, config: String, workers: Int?) throws {
        directory = NSTemporaryDirectory() + "nb-serve-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        control = "ipc://\(directory)/control.sock"
        endpoint = "ipc://\(directory)/rank{rank}.sock"
        var arguments = [executable, "run", "--config", config, "--control", control, "--endpoint", endpoint]
        if let workers { arguments += ["--workers", String(workers)] }
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { cArguments.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, nil, nil, &cArguments, environ)
        guard result == 0 else { throw SystemCallError(call: "posix_spawn(\(executable) run)", errno: result) }
        pid = child
    }

    /// Asks the daemon to stop and waits for it (killing it after `timeoutMilliseconds`); returns how it
    /// ended, so a daemon that crashed is never reported as a clean stop.
    public func stop(client: DaemonClient, timeoutMilliseconds: Int32 = 10_000) -> ProcessExit {
        _ = try? client.request(["cmd": "stop"], timeout: 5)
        var exit = ProcessExit.wait(pid, timeoutMilliseconds: timeoutMilliseconds)
        if exit == nil {
            kill(pid, SIGKILL)
            exit = ProcessExit.wait(pid, timeoutMilliseconds: 5000)
        }
        try? FileManager.default.removeItem(atPath: directory)
        return exit ?? .signaled(SIGKILL)
    }
}
