import CSystem
import Foundation
import Glibc
import NBLoader
import NBStorage
import NBTransport

/// How `nb-serve run` was asked to start.
public struct DaemonOptions: Sendable {
    public var configPath: String
    /// This executable, spawned again as `nb-serve worker` for each worker.
    public var executable: String
    /// A resume state file to start from (`--resume`), if any.
    public var resumePath: String?
    /// Overrides of `serve.endpoint`, `serve.control` and `num_workers` (for `demo` and `bench`).
    public var endpoint: String?
    public var control: String?
    public var workers: Int?

    public init(configPath: String, executable: String, resumePath: String?, endpoint: String? = nil, control: String? = nil, workers: Int? = nil) {
        self.configPath = configPath
        self.executable = executable
        self.resumePath = resumePath
        self.endpoint = endpoint
        self.control = control
        self.workers = workers
    }
}

/// Why the daemon could not start or had to stop.
public struct DaemonError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Which stream, batch and buffer a task belongs to.
struct TaskOwner {
    let rank: Int
    let batch: Int
    let epoch: Int
    let stage: Stage
    let buffer: Int
}

/// Written by the signal handler, read by the main loop through `zmq_poll`.
nonisolated(unsafe) private var signalPipeWrite: Int32 = -1

/// `nb-serve run`: one process, one thread of its own (plus libzmq's I/O thread), a poll loop over the
/// control socket, the rank sockets, the worker pipes and a signal pipe. Workers decode into shared
/// memory; the loop assembles lockstep batches there and sends them in plan order, per rank.
public final class Daemon {
    let config: LoaderConfig
    let options: DaemonOptions
    let ranks: [Int]
    let worldSize: Int
    let layout: BatchLayout
    let context: ZmqContext
    let control: ZmqSocket
    let controlEndpoint: String
    var sockets: [Int: ZmqSocket] = [:]
    var endpoints: [Int: String] = [:]
    var streams: [Int: RankStream] = [:]
    let memory: SharedBatchMemory
    var workers: [WorkerProcess] = []
    var restarts = 0
    /// Tasks no worker has yet, oldest first; `taskOwners` says whose they are.
    var taskQueue: [WorkerTask] = []
    var taskOwners: [Int64: TaskOwner] = [:]
    var nextTaskID: Int64 = 1
    var stopping = false
    var resumeState: ResumeStateFile?
    var errors: [String] = []
    let started = Date()
    var framesSent = 0
    var bytesSent = 0
    let signalPipe: [Int32]
    /// Zero-copy sends report here (from libzmq's I/O thread) which batch buffer a frame released.
    let releasePipe: [Int32]
    let buffersPerRank: Int

    public init(options: DaemonOptions) throws {
        self.options = options
        var loaded = try LoaderConfig.load(path: options.configPath)
        if let endpoint = options.endpoint { loaded.serve.endpoint = endpoint }
        if let control = options.control { loaded.serve.control = control }
        if let workers = options.workers { loaded.numWorkers = workers }
        config = loaded
        worldSize = config.serve.worldSize
        ranks = config.serve.ranks ?? Array(0..<worldSize)
        guard config.batchSize % worldSize == 0 else {
            throw ConfigError(file: config.file, key: "batch_size", reason: "\(config.batchSize) is not divisible by serve.world_size \(worldSize)")
        }
        layout = BatchLayout(buffers: config.buffers, batchSize: config.batchSize / worldSize, crop: config.source.crop, samples: config.samples)

        // Every sequence file is checked before anything is served, and all missing ones are reported.
        let missing = (0..<config.source.sequences).map(config.sequencePath).filter { !FileManager.default.fileExists(atPath: $0) }
        if !missing.isEmpty {
            let shown = missing.prefix(20).joined(separator: "\n  ")
            throw DaemonError("\(missing.count) of \(config.source.sequences) sequence files are missing:\n  \(shown)\(missing.count > 20 ? "\n  …" : "")")
        }
        try StartupCheck.run(config)
        if let path = options.resumePath ?? Self.autoResumePath(config) {
            let state = try ResumeStateFile.read(path, for: config)
            guard state.configFingerprint == config.fingerprint else {
                throw DaemonError("\(path): resume state belongs to another configuration (fingerprint \(state.configFingerprint), this config is \(config.fingerprint)); refusing to resume")
            }
            resumeState = state
        }

        buffersPerRank = config.serve.prefetch + 1
        memory = try SharedBatchMemory(creating: max(1, ranks.count * buffersPerRank * layout.byteCount))
        for (index, rank) in ranks.enumerated() {
            streams[rank] = RankStream(rank: rank, bufferIndices: Array((index * buffersPerRank)..<((index + 1) * buffersPerRank)))
        }

        context = try ZmqContext(ioThreads: 1)
        control = try ZmqSocket(.rep, context: context)
        controlEndpoint = Self.controlEndpoint(config)
        try Self.prepareIPC(controlEndpoint)
        try control.bind(controlEndpoint)
        if let path = Self.ipcPath(controlEndpoint) { chmod(path, mode_t(config.serve.controlMode)) }
        for rank in ranks {
            guard let endpoint = EndpointTemplate.render(config.serve.endpoint, rank: rank) else {
                throw ConfigError(file: config.file, key: "serve.endpoint", reason: "'\(config.serve.endpoint)' has a placeholder other than {rank} or {N+rank}")
            }
            let socket = try ZmqSocket(.push, context: context)
            try socket.set(.sendHighWaterMark, Int32(config.serve.prefetch))
            try socket.set(.linger, 2000)
            try Self.prepareIPC(endpoint)
            try socket.bind(endpoint)
            sockets[rank] = socket
            endpoints[rank] = endpoint
        }

        var pipeFDs: [Int32] = [0, 0]
        guard nb_pipe_cloexec(&pipeFDs, 1) == 0 else { throw SystemError(call: "pipe2", errno: errno) }
        signalPipe = pipeFDs
        signalPipeWrite = pipeFDs[1]
        var releaseFDs: [Int32] = [0, 0]
        guard nb_pipe_cloexec(&releaseFDs, 0) == 0 else { throw SystemError(call: "pipe2", errno: errno) }
        // Only the reading end is non-blocking: a release must never be lost to a full pipe.
        _ = fcntl(releaseFDs[0], F_SETFL, fcntl(releaseFDs[0], F_GETFL) | O_NONBLOCK)
        releasePipe = releaseFDs
        signal(SIGPIPE, SIG_IGN)
        let handler: @convention(c) (Int32) -> Void = { _ in
            var byte: UInt8 = 1
            _ = write(signalPipeWrite, &byte, 1)
        }
        signal(SIGTERM, handler)
        signal(SIGINT, handler)

        for _ in 0..<max(1, config.numWorkers) { workers.append(try spawnWorker()) }
    }

    /// The default control endpoint: an ipc socket in the runtime directory (systemd's
    /// `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR/nb-serve`, else `/tmp/nb-serve-UID`).
    public static func controlEndpoint(_ config: LoaderConfig) -> String {
        if let control = config.serve.control { return control }
        return "ipc://" + defaultRuntimeDirectory() + "/control.sock"
    }

    public static func defaultRuntimeDirectory() -> String {
        let environment = ProcessInfo.processInfo.environment
        if let directory = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first { return String(directory) }
        if let directory = environment["XDG_RUNTIME_DIR"] { return directory + "/nb-serve" }
        return "/tmp/nb-serve-\(getuid())"
    }

    static func ipcPath(_ endpoint: String) -> String? {
        endpoint.hasPrefix("ipc://") ? String(endpoint.dropFirst(6)) : nil
    }

    /// Creates an ipc socket's directory and removes a stale socket file a killed daemon left behind.
    static func prepareIPC(_ endpoint: String) throws {
        guard let path = ipcPath(endpoint) else { return }
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        unlink(path)
    }

    static func autoResumePath(_ config: LoaderConfig) -> String? {
        guard config.serve.resume == "auto", let directory = config.serve.stateDirectory else { return nil }
        let path = directory + "/" + ResumeStateFile.fileName
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    func spawnWorker() throws -> WorkerProcess {
        try WorkerProcess(
            executable: options.executable,
            arguments: ["--config", options.configPath, "--memory-bytes", String(memory.byteCount), "--parent", String(getpid())],
            memory: memory.descriptor)
    }

    static func log(_ text: String) {
        let stamp = ISO8601DateFormatter().string(from: Date())
        FileHandle.standardError.write(Data("\(stamp) nb-serve: \(text)\n".utf8))
    }

    // MARK: - Main loop

    /// Serves until `stop` or SIGTERM; then writes the resume state (when `serve.state_dir` is set),
    /// stops the workers and removes its socket files.
    public func run() throws {
        Self.log("serving ranks \(ranks) of \(worldSize): \(ranks.map { "\($0) on \(endpoints[$0]!)" }.joined(separator: ", ")); control on \(controlEndpoint); \(workers.count) workers")
        if let resumeState { Self.log("resume state: epoch \(resumeState.startEpoch), sequence \(resumeState.startSequence)") }
        do { _ = try SystemdNotify().ready() } catch { Self.log("sd_notify: \(error)") }
        while !stopping {
            schedule()
            dispatch()
            let poller = ZmqPoller()
            let controlToken = poller.add(control, events: .readable)
            let signalToken = poller.add(fileDescriptor: signalPipe[0], events: .readable)
            let releaseToken = poller.add(fileDescriptor: releasePipe[0], events: .readable)
            var workerTokens: [(ZmqPoller.Token, Int)] = []
            for (index, worker) in workers.enumerated() {
                workerTokens.append((poller.add(fileDescriptor: worker.resultDescriptor, events: .readable), index))
            }
            var rankTokens: [(ZmqPoller.Token, Int)] = []
            for rank in ranks where hasSendable(rank) {
                rankTokens.append((poller.add(sockets[rank]!, events: .writable), rank))
            }
            let ready = try poller.poll(timeout: .milliseconds(500))
            if !ready[signalToken].isEmpty {
                Self.log("signal received: shutting down")
                stopping = true
            }
            if !ready[releaseToken].isEmpty { drainReleases() }
            if ready[controlToken].contains(.readable) { try handleControl() }
            for (token, index) in workerTokens.reversed() where !ready[token].isEmpty {
                try collect(workerIndex: index)
            }
            for (token, rank) in rankTokens where ready[token].contains(.writable) {
                try send(rank)
            }
        }
        try shutdown()
    }

    /// Hands the next batches of each active stream to workers while the rank has free buffers.
    func schedule() {
        for rank in ranks {
            guard let stream = streams[rank], stream.active else { continue }
            while stream.nextSchedule < stream.plans.count, let buffer = stream.freeBuffers.popLast() {
                let batch = stream.nextSchedule
                let plan = stream.plans[batch]
                stream.assemblies[batch] = RankStream.Assembly(buffer: buffer, remaining: plan.sequences.count)
                for (slot, sequence) in plan.sequences.enumerated() {
                    let task = WorkerTask(
                        id: nextTaskID, bufferOffset: Int64(buffer * layout.byteCount), slot: Int64(slot),
                        sequence: Int64(sequence), frame: Int64(plan.frameIndex), orientation: Int64(plan.orientations[slot]),
                        batchSize: Int64(layout.batchSize))
                    taskOwners[nextTaskID] = TaskOwner(rank: rank, batch: batch, epoch: stream.epoch, stage: stream.stage, buffer: buffer)
                    stream.inflight[buffer, default: 0] += 1
                    nextTaskID += 1
                    taskQueue.append(task)
                }
                stream.nextSchedule += 1
            }
        }
    }

    /// Keeps each worker at most two tasks deep, so work spreads and a slow frame delays little.
    func dispatch() {
        var progress = true
        while progress && !taskQueue.isEmpty {
            progress = false
            for worker in workers where worker.outstanding.count < 2 && !taskQueue.isEmpty {
                let next = taskQueue.removeFirst()
                if worker.send(next) {
                    progress = true
                } else {
                    taskQueue.insert(next, at: 0)
                }
            }
        }
    }

    func collect(workerIndex index: Int) throws {
        let worker = workers[index]
        guard let results = worker.receive() else {
            // End of file: the worker died. Its unfinished tasks go back to the front of the queue and
            // are decoded again, into the same slots: the stream is unchanged.
            let lost = worker.outstanding
            worker.close()
            var status = worker.reap()
            for _ in 0..<50 where status == nil {
                usleep(10_000)
                status = worker.reap()
            }
            Self.log("worker \(worker.pid) \(status ?? "closed its pipe"); \(lost.count) unfinished tasks requeued; starting a replacement")
            restarts += 1
            workers[index] = try spawnWorker()
            for task in lost.reversed() {
                guard let owner = taskOwners[task.id], let stream = streams[owner.rank] else { continue }
                if isCurrent(owner, stream) {
                    taskQueue.insert(task, at: 0)
                } else {
                    taskOwners.removeValue(forKey: task.id)
                    stream.taskFinished(buffer: owner.buffer)
                }
            }
            return
        }
        for result in results {
            guard let owner = taskOwners.removeValue(forKey: result.id), let stream = streams[owner.rank] else { continue }
            stream.taskFinished(buffer: owner.buffer)
            guard isCurrent(owner, stream), let assembly = stream.assemblies[owner.batch] else { continue }
            if !result.error.isEmpty {
                let report = (try? JSONDecoder().decode(ErrorReport.self, from: Data(result.error.utf8)))
                    ?? ErrorReport(file: "", array: "", chunk: "", reason: result.error)
                assembly.error = assembly.error ?? report
                let text = "rank \(owner.rank) epoch \(owner.epoch) batch \(owner.batch): \(report.file) \(report.array) \(report.chunk): \(report.reason)"
                Self.log("decode failed: " + text)
                errors.append(text)
                if errors.count > 50 { errors.removeFirst() }
            }
            assembly.remaining -= 1
        }
    }

    /// Whether a task still belongs to its rank's current stream (not to an abandoned epoch).
    func isCurrent(_ owner: TaskOwner, _ stream: RankStream) -> Bool {
        stream.active && stream.epoch == owner.epoch && stream.stage == owner.stage && stream.assemblies[owner.batch]?.buffer == owner.buffer
    }

    func hasSendable(_ rank: Int) -> Bool {
        guard let stream = streams[rank], stream.active, !stream.endSent else { return false }
        if stream.isFinished { return true }
        return stream.assemblies[stream.nextSend]?.remaining == 0
    }

    /// Sends the rank's next ready batches, in order, without blocking; then `end` after the last.
    func send(_ rank: Int) throws {
        guard let stream = streams[rank], let socket = sockets[rank] else { return }
        let stage: WireProtocol.Stage = stream.stage == .train ? .train : .val
        while stream.active && !stream.endSent {
            if stream.isFinished {
                let end = WireProtocol.Message(header: .end(.init(stage: stage, epoch: stream.epoch, batches: stream.plans.count - stream.errorsSent)))
                guard try socket.send(try WireProtocol.encode(end), dontWait: true) else { return }
                stream.endSent = true
                return
            }
            guard let assembly = stream.assemblies[stream.nextSend], assembly.remaining == 0 else { return }
            let plan = stream.plans[stream.nextSend]
            let sent: Bool
            if let report = assembly.error {
                let header = WireProtocol.ErrorHeader(
                    stage: stage, epoch: stream.epoch, batch: plan.batch, file: report.file.isEmpty ? nil : report.file,
                    array: report.array.isEmpty ? nil : report.array, chunk: report.chunk.isEmpty ? nil : report.chunk, reason: report.reason)
                sent = try socket.send(try WireProtocol.encode(.init(header: .error(header))), dontWait: true)
                if sent { stream.errorsSent += 1 }
            } else {
                sent = try sendBatch(plan, buffer: assembly.buffer, stage: stage, rank: rank, socket: socket)
            }
            guard sent else { return }
            stream.assemblies.removeValue(forKey: stream.nextSend)
            if (stream.inflight[assembly.buffer] ?? 0) > 0 {
                // libzmq still reads the tensors from it: free it when the last frame is released.
                stream.orphaned.insert(assembly.buffer)
            } else {
                stream.freeBuffers.append(assembly.buffer)
            }
            stream.nextSend += 1
            framesSent += plan.sequences.count
        }
    }

    /// Sends a ready batch straight from shared memory: every tensor frame is a zero-copy part whose
    /// release (on libzmq's I/O thread) writes the buffer's index to `releasePipe`.
    func sendBatch(_ plan: BatchPlan, buffer: Int, stage: WireProtocol.Stage, rank: Int, socket: ZmqSocket) throws -> Bool {
        guard let stream = streams[rank] else { return false }
        var specs: [WireProtocol.TensorSpec] = []
        var parts: [ZmqPart] = []
        let base = buffer * layout.byteCount
        let releaseFD = releasePipe[1]
        let token = Int32(buffer)
        for tensor in layout.tensors {
            let (shape, bytes) = tensor.filled(plan.sequences.count)
            specs.append(.init(name: tensor.key, dataType: tensor.dataType, shape: shape))
            let region = UnsafeRawBufferPointer(memory.region(offset: base + bytes.lowerBound, count: bytes.count)!)
            parts.append(.zeroCopy(ZeroCopyBuffer(region) {
                var value = token
                _ = write(releaseFD, &value, 4)
            }))
        }
        let header = WireProtocol.BatchHeader(
            stage: stage, epoch: plan.epoch, batch: plan.batch, frameIndex: plan.frameIndex, sequences: plan.sequences,
            orientations: plan.orientations, rank: rank, worldSize: worldSize, tensors: specs)
        let message = try WireProtocol.batchParts(header, payloads: parts)
        // Every part's release comes through the pipe, also when the send does not happen.
        stream.inflight[buffer, default: 0] += parts.count
        let sent = try socket.send(message, dontWait: true)
        if sent { bytesSent += message.reduce(0) { $0 + $1.byteCount } }
        return sent
    }

    /// Counts released frames back to their buffers; a sent buffer is free once all its frames are.
    func drainReleases() {
        var values = [Int32](repeating: 0, count: 1024)
        while true {
            let count = values.withUnsafeMutableBytes { read(releasePipe[0], $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            for value in values[0..<(count / 4)] {
                let buffer = Int(value)
                let index = buffer / buffersPerRank
                guard index < ranks.count, let stream = streams[ranks[index]] else { continue }
                stream.taskFinished(buffer: buffer)
            }
        }
    }

    func shutdown() throws {
        do { _ = try SystemdNotify().stopping() } catch { Self.log("sd_notify: \(error)") }
        if let directory = config.serve.stateDirectory, let state = currentState() {
            do {
                let path = try state.write(to: directory)
                Self.log("wrote resume state to \(path): epoch \(state.startEpoch), sequence \(state.startSequence)")
            } catch {
                Self.log("could not write the resume state: \(error)")
            }
        }
        for worker in workers { worker.close() }
        for worker in workers {
            var status = worker.reap()
            for _ in 0..<200 where status == nil {
                usleep(10_000)
                status = worker.reap()
            }
            if status == nil {
                kill(worker.pid, SIGKILL)
                _ = waitpid(worker.pid, nil, 0)
            }
        }
        for socket in sockets.values { socket.close() }
        control.close()
        // Terminating the context releases every frame still queued; only then may the memory go.
        context.close()
        for endpoint in [controlEndpoint] + Array(endpoints.values) {
            if let path = Self.ipcPath(endpoint) { unlink(path) }
        }
        Self.log("stopped")
    }
}
