import CNBSystem
import Foundation
import Glibc
import Logging
import NBLoader
import NBMetrics
import NBStorage
import NBSystem
import NBTransport
import NBVocabulary

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
    let stage: Stage
    /// The stream id the task was scheduled for.
    let stream: Int
    let batch: Int
    let buffer: Int
}

/// Written by the signal handler (the signal's number, one byte), read by the main loop through `zmq_poll`.
nonisolated(unsafe) private var signalPipeWrite: Int32 = -1

/// `nb-serve run`: one process, one thread of its own (plus libzmq's I/O thread), a poll loop over the
/// control socket, the rank sockets, the worker pipes and a signal pipe. Workers decode into shared
/// memory; the loop assembles lockstep batches there and sends them in plan order, per rank and stage.
public final class Daemon {
    let config: LoaderConfig
    /// The config file's text as read once at start-up: every worker parses these bytes, never the file
    /// again, so an edited file cannot make a replacement worker lay out memory differently.
    let configText: String
    let options: DaemonOptions
    let ranks: [Int]
    let worldSize: Int
    let layout: BatchLayout
    let context: ZmqContext
    let control: ZmqSocket
    let controlEndpoint: String
    /// The ZAP handler for CURVE endpoints (nil without CURVE); serviced by the poll loop.
    let authenticator: ZapResponder?
    var sockets: [Int: ZmqSocket] = [:]
    /// Trainers connected to each rank's socket. PUSH deals messages round-robin among its peers, so while a
    /// reconnecting trainer's old connection is still open beside the new one, a message could go to the
    /// connection being closed and be lost: the daemon sends only while exactly one trainer is connected.
    var peerMonitors: [Int: ZmqPeerMonitor] = [:]
    var endpoints: [Int: String] = [:]
    var streams: [Int: RankStreams] = [:]
    var streamIDs = StreamIDs()
    let memory: SharedBatchMemory
    let configMemory: SharedBatchMemory
    let workers: WorkerPool
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
    /// Buffers per stream: `serve.prefetch` ready or in assembly (or, with the shared-memory transport,
    /// `serve.leases` held by the trainer), plus the one being sent.
    let buffersPerStream: Int
    /// Same-host trainers' shared-memory sessions; nil when the transport is off.
    var leaseSessions: LeaseSessions?
    /// The Prometheus series, and the endpoint serving them (nil when `serve.metrics` is empty, or when the
    /// default port was taken).
    let metrics: ServeMetrics
    var metricsEndpoint: MetricsEndpoint?
    /// Worker restarts already counted in `metrics`, and when the gauges are next refreshed.
    var restartsCounted = 0
    var nextGaugeRefresh = ContinuousClock.now
    var nextMemoryRefresh = ContinuousClock.now
    /// Since when each rank has had more than one trainer connected (its sends pause meanwhile), and the
    /// ranks whose pause was logged.
    var crowdedSince: [Int: ContinuousClock.Instant] = [:]
    var crowdingLogged: Set<Int> = []

    public init(options: DaemonOptions) throws {
        self.options = options
        let text: String
        do {
            text = try String(contentsOfFile: options.configPath, encoding: .utf8)
        } catch {
            throw ConfigError(file: options.configPath, key: "", reason: "cannot read: \(error.localizedDescription)")
        }
        var loaded = try LoaderConfig.parse(yaml: text, file: options.configPath, baseDirectory: Self.baseDirectory(of: options.configPath))
        if let endpoint = options.endpoint { loaded.serve.endpoint = endpoint }
        if let control = options.control { loaded.serve.control = control }
        if let workers = options.workers { loaded.numWorkers = workers }
        config = loaded
        configText = text
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
        let metricsAddress = try Self.metricsAddress(config)
        if let path = options.resumePath ?? Self.autoResumePath(config) {
            // Checks the version, world size, positions, seed and config fingerprint, naming the file.
            resumeState = try ResumeStateFile.read(path, for: config)
        }

        // Each (rank, stage) stream has its own buffers: validation never takes the training stream's.
        let shmPath = Self.shmSocketPath(config)
        buffersPerStream = (shmPath == nil ? config.serve.prefetch : max(config.serve.prefetch, config.serve.leaseLimit)) + 1
        let perRank = 2 * buffersPerStream
        memory = try SharedBatchMemory(creating: max(1, ranks.count * perRank * layout.byteCount))
        for (index, rank) in ranks.enumerated() {
            let base = index * perRank
            streams[rank] = RankStreams(
                rank: rank, trainBuffers: Array(base..<(base + buffersPerStream)),
                valBuffers: Array((base + buffersPerStream)..<(base + perRank)))
        }
        metrics = ServeMetrics(ranks: ranks, sharedMemoryBytes: memory.byteCount, startTime: Date().timeIntervalSince1970)
        let configBytes = Array(text.utf8)
        let configCopy = try SharedBatchMemory(creating: max(1, configBytes.count), name: "nb-serve-config")
        configBytes.withUnsafeBytes { configCopy.region(offset: 0, count: $0.count)?.copyMemory(from: $0) }
        configMemory = configCopy

        context = try ZmqContext(ioThreads: 1)
        let security = try EndpointSecurity(config: config)
        controlEndpoint = Self.controlEndpoint(config)
        try security.check(control: controlEndpoint, dataTemplate: config.serve.endpoint, ranks: ranks)
        authenticator = try security.makeAuthenticator(context: context)
        control = try ZmqSocket(.rep, context: context)
        // libzmq drops a peer that sends more than this before anything reaches the loop; requests up to it
        // that are still too long are refused with a reply (ControlRequest.maximumByteCount).
        try control.set(.maximumMessageSize, Int64(1 << 20))
        try security.bind(control, to: controlEndpoint, isControl: true)
        Self.log("trust: " + security.summary)
        if let shmPath {
            try security.prepareSocketPath(shmPath, endpoint: "ipc://" + shmPath)
            let listener = try security.listen(shmPath, mode: security.controlMode)
            do {
                leaseSessions = try LeaseSessions(path: shmPath, listener: listener, memory: memory, limit: config.serve.leaseLimit, ranks: ranks)
            } catch {
                close(listener)
                unlink(shmPath)
                throw error
            }
        }
        for rank in ranks {
            guard let endpoint = EndpointTemplate.render(config.serve.endpoint, rank: rank) else {
                throw ConfigError(file: config.file, key: "serve.endpoint", reason: "'\(config.serve.endpoint)' has a placeholder other than {rank} or {N+rank}")
            }
            let socket = try ZmqSocket(.push, context: context)
            try socket.set(.sendHighWaterMark, Int32(config.serve.prefetch))
            try socket.set(.linger, 2000)
            peerMonitors[rank] = try ZmqPeerMonitor(socket, context: context, address: "nb-serve-rank-\(rank)-peers")
            try security.bind(socket, to: endpoint, isControl: false)
            sockets[rank] = socket
            endpoints[rank] = endpoint
        }

        do {
            metricsEndpoint = try Self.startMetrics(metricsAddress, registry: metrics.registry, file: config.file)
        } catch {
            // Nothing was served yet: the socket files this start created go with it.
            leaseSessions?.close()
            for socket in sockets.values { socket.close() }
            control.close()
            Self.removeSocketFiles([controlEndpoint] + Array(endpoints.values))
            throw error
        }

        var pipeFDs: [Int32] = [0, 0]
        guard nb_pipe_cloexec(&pipeFDs, 1) == 0 else { throw SystemCallError(call: "pipe2", errno: errno) }
        signalPipe = pipeFDs
        signalPipeWrite = pipeFDs[1]
        var releaseFDs: [Int32] = [0, 0]
        guard nb_pipe_cloexec(&releaseFDs, 0) == 0 else { throw SystemCallError(call: "pipe2", errno: errno) }
        // Only the reading end is non-blocking: a release must never be lost to a full pipe.
        _ = fcntl(releaseFDs[0], F_SETFL, fcntl(releaseFDs[0], F_GETFL) | O_NONBLOCK)
        releasePipe = releaseFDs
        signal(SIGPIPE, SIG_IGN)
        let handler: @convention(c) (Int32) -> Void = { number in
            var byte = UInt8(truncatingIfNeeded: number)
            _ = write(signalPipeWrite, &byte, 1)
        }
        signal(SIGTERM, handler)
        signal(SIGINT, handler)

        let spawnArguments = [
            "--config", options.configPath, "--config-bytes", String(text.utf8.count), "--fingerprint", config.fingerprint,
            "--memory-bytes", String(memory.byteCount), "--parent", String(getpid()),
        ]
        let executable = options.executable
        let memoryFD = memory.descriptor
        let configFD = configMemory.descriptor
        workers = try WorkerPool(
            count: config.numWorkers,
            spawn: { try WorkerProcess(executable: executable, arguments: spawnArguments, memory: memoryFD, config: configFD) },
            log: { Self.log($0, .warning) })
        leaseSessions?.onRelease = { [unowned self] rank, buffer in
            streams[rank]?.stream(owning: buffer)?.frameReleased(buffer: buffer)
        }
    }

    static func baseDirectory(of path: String) -> String {
        let directory = (path as NSString).deletingLastPathComponent
        return directory.isEmpty ? "." : directory
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

    /// Removes the socket files of the ipc endpoints among `endpoints` (the daemon's own, once closed).
    static func removeSocketFiles(_ endpoints: [String]) {
        for endpoint in endpoints {
            if let path = ipcPath(endpoint) { unlink(path) }
        }
    }

    /// The shared-memory session socket: `serve.shm_socket`, or `shm.sock` beside an ipc control socket;
    /// nil when the transport is off (an empty `shm_socket`, or a tcp control socket without one).
    static func shmSocketPath(_ config: LoaderConfig) -> String? {
        if let configured = config.serve.shmSocket { return configured.isEmpty ? nil : configured }
        guard let control = ipcPath(controlEndpoint(config)) else { return nil }
        return (control as NSString).deletingLastPathComponent + "/shm.sock"
    }

    static func autoResumePath(_ config: LoaderConfig) -> String? {
        guard config.serve.resume == "auto", let directory = config.serve.stateDirectory else { return nil }
        let path = directory + "/" + ResumeStateFile.fileName
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    public static let logger = Logger(label: "nb-serve")

    /// Logs one line through the daemon's logger (see ``ServiceLogHandler``).
    public static func log(_ text: String, _ level: Logger.Level = .info) {
        logger.log(level: level, "\(text)")
    }

    /// systemd's watchdog: `WATCHDOG=1` at this interval from the loop (nil: no watchdog), and when it is next due.
    let watchdogInterval = SystemdNotify.watchdogInterval()
    var nextWatchdog = ContinuousClock.now
    /// `STATUS=` lines for `systemctl status`, at most this often.
    static let statusInterval: Duration = .seconds(5)
    var nextStatus = ContinuousClock.now
    var framesAtLastStatus = 0

    /// How long shutdown may take in all: the resume state, the workers, the queued frames.
    static let shutdownDeadline: Duration = .seconds(10)

    // MARK: - Main loop

    /// Serves until `stop` or SIGTERM; then, on every path out of the loop (an error included), writes the
    /// resume state (when `serve.state_dir` is set), stops the workers and removes its socket files. Throws
    /// when the loop failed or the resume state could not be written, so the exit status says so.
    public func run() throws {
        Self.log("serving ranks \(ranks) of \(worldSize): \(ranks.map { "\($0) on \(endpoints[$0] ?? "?")" }.joined(separator: ", ")); control on \(controlEndpoint); \(workers.slots.count) workers")
        if let resumeState { Self.log("resume state: epoch \(resumeState.startEpoch), sequence \(resumeState.startSequence)") }
        do { _ = try SystemdNotify().ready() } catch { Self.log("sd_notify: \(error)", .warning) }
        var failure: Error?
        do {
            while !stopping { try iterate() }
        } catch {
            failure = error
            Self.log("the main loop failed: \(error); shutting down", .error)
        }
        let stateError = shutdown()
        if let failure { throw failure }
        if let stateError { throw DaemonError("stopped, but the resume state could not be written: \(stateError)") }
    }

    /// One turn of the loop: hand out work, wait for anything to happen, react to it.
    func iterate() throws {
        notifySystemd()
        schedule()
        dispatch()
        let poller = ZmqPoller()
        let controlToken = poller.add(control, events: .readable)
        let zapToken = authenticator.map { poller.add($0.socket, events: .readable) }
        let signalToken = poller.add(fileDescriptor: signalPipe[0], events: .readable)
        let releaseToken = poller.add(fileDescriptor: releasePipe[0], events: .readable)
        var workerTokens: [(ZmqPoller.Token, Int)] = []
        for (index, worker) in workers.running {
            workerTokens.append((poller.add(fileDescriptor: worker.resultDescriptor, events: .readable), index))
        }
        var exitTokens: [ZmqPoller.Token] = []
        for worker in workers.exiting where worker.pidDescriptor >= 0 {
            exitTokens.append(poller.add(fileDescriptor: worker.pidDescriptor, events: .readable))
        }
        var rankTokens: [(ZmqPoller.Token, Int)] = []
        for rank in ranks where canSend(rank) {
            rankTokens.append((poller.add(sockets[rank]!, events: .writable), rank))
        }
        var monitorTokens: [(ZmqPoller.Token, ZmqPeerMonitor)] = []
        for monitor in peerMonitors.values {
            monitorTokens.append((poller.add(monitor.socket, events: .readable), monitor))
        }
        var sessionTokens: [(ZmqPoller.Token, LeaseSessions.Session)] = []
        let listenerToken = leaseSessions.map { poller.add(fileDescriptor: $0.listener, events: .readable) }
        for session in leaseSessions?.sessions ?? [] {
            sessionTokens.append((poller.add(fileDescriptor: session.fd, events: .readable), session))
        }
        var timeout: Duration = .milliseconds(500)
        if let due = workers.nextRespawn { timeout = max(.zero, min(timeout, due - .now)) }
        if watchdogInterval != nil { timeout = max(.zero, min(timeout, nextWatchdog - .now)) }
        let ready = try poller.poll(timeout: timeout)
        if !ready[signalToken].isEmpty { drainSignals() }
        if !ready[releaseToken].isEmpty { drainReleases() }
        for (token, monitor) in monitorTokens where ready[token].contains(.readable) { try monitor.drain() }
        for (token, session) in sessionTokens where !ready[token].isEmpty { leaseSessions?.service(session) }
        if let listenerToken, !ready[listenerToken].isEmpty { leaseSessions?.accept() }
        if let zapToken, ready[zapToken].contains(.readable) { try authenticator?.answerPending() }
        if ready[controlToken].contains(.readable) { try handleControl() }
        for (token, index) in workerTokens.reversed() where !ready[token].isEmpty {
            collect(workerIndex: index)
        }
        if exitTokens.contains(where: { !ready[$0].isEmpty }) || !workers.exiting.isEmpty { workers.reapExited() }
        for error in workers.respawnDue() { Self.log("could not start a replacement worker: \(error)", .error) }
        // Every rank with something to send tries now, not only those the poll saw writable: a request
        // handled in this turn (an epoch whose first batches were decoded ahead) or a lease released in it
        // must not wait for the next wake-up. Sends never block; a full queue just ends the attempt.
        for rank in ranks where canSend(rank) {
            try send(rank)
        }
    }

    /// `WATCHDOG=1` from the loop itself, so a loop that stops turning (wedged) stops the pings and systemd
    /// restarts the service; and a `STATUS=` line saying what the daemon does.
    func notifySystemd() {
        let now = ContinuousClock.now
        refreshMetrics(now: now)
        let notify = SystemdNotify()
        if let watchdogInterval, now >= nextWatchdog {
            _ = try? notify.watchdog()
            nextWatchdog = now + watchdogInterval
        }
        guard now >= nextStatus, notify.socketName != nil else { return }
        let seconds = Double(Self.statusInterval.components.seconds)
        let rate = Double(framesSent - framesAtLastStatus) / seconds
        framesAtLastStatus = framesSent
        nextStatus = now + Self.statusInterval
        _ = try? notify.status(statusLine(framesPerSecond: rate))
    }

    /// `rank 0 train epoch 3: batch 120/400, stall 2%; 412 frames/s, 2 workers` (at most 4 ranks).
    func statusLine(framesPerSecond rate: Double) -> String {
        var parts: [String] = []
        for rank in ranks.prefix(4) {
            guard let pair = streams[rank], let stream = pair.onWire ?? (pair[pair.preferred].phase == .idle ? nil : pair[pair.preferred]) else { continue }
            let stall = stream.timing.stall.map { String(format: ", stall %.0f%%", $0 * 100) } ?? ""
            parts.append("rank \(rank) \(stream.stage.rawValue) epoch \(stream.epoch): batch \(stream.nextSend)/\(stream.plans.count)\(stall)")
        }
        let what = parts.isEmpty ? "waiting for a trainer" : parts.joined(separator: ", ")
        return what + String(format: "; %.0f frames/s, %d workers", rate, workers.running.count)
    }

    func drainSignals() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while true {
            let count = bytes.withUnsafeMutableBytes { read(signalPipe[0], $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            for number in bytes[0..<count] where !stopping {
                Self.log("\(String(cString: strsignal(Int32(number)))) received: shutting down")
                stopping = true
            }
        }
    }

    /// Hands the next batches of every stream to workers while the stream has free buffers; the stream on
    /// the wire goes first.
    func schedule() {
        for rank in ranks {
            guard let rankStreams = streams[rank] else { continue }
            for stream in rankStreams.byPriority {
                if stream.canLookAhead { planLookahead(stream) }
                while let (id, batch, plan, buffer) = stream.scheduleNext() {
                    for (slot, sequence) in plan.sequences.enumerated() {
                        let task = WorkerTask(
                            id: nextTaskID, bufferOffset: Int64(buffer * layout.byteCount), slot: Int64(slot),
                            sequence: Int64(sequence), frame: Int64(plan.frameIndex), orientation: Int64(plan.orientations[slot]),
                            batchSize: Int64(layout.batchSize))
                        taskOwners[nextTaskID] = TaskOwner(rank: rank, stage: stream.stage, stream: id, batch: batch, buffer: buffer)
                        nextTaskID += 1
                        taskQueue.append(task)
                    }
                }
            }
        }
    }

    /// Decodes the next epoch of the stream's stage ahead while the trainer finishes this one (or
    /// validates), so the first batches of the next epoch are ready the moment it is asked for.
    /// Before the first request, the training stream decodes the epoch the resume state names (or epoch 0).
    func planLookahead(_ stream: StageStream) {
        var epoch = stream.epoch + 1
        var resume: ResumeState?
        if stream.phase == .idle {
            guard stream.stage == .train else { return }
            epoch = resumeState?.startEpoch ?? 0
            resume = resumeState?.resumeState
        }
        guard epoch <= ControlRequest.maximumIndex,
              let sampler = try? VideoSampler(config: config, stage: stream.stage, rank: stream.rank, worldSize: worldSize),
              let plans = try? sampler.batches(epoch: epoch, resume: resume)
        else { return }
        stream.lookAhead(id: streamIDs.take(), epoch: epoch, resume: resume, plans: plans)
    }

    /// Keeps each worker at most two tasks deep, so work spreads and a slow frame delays little.
    func dispatch() {
        var progress = true
        while progress && !taskQueue.isEmpty {
            progress = false
            for (_, worker) in workers.running where worker.outstanding.count < 2 && !taskQueue.isEmpty {
                let next = taskQueue.removeFirst()
                if worker.send(next) {
                    progress = true
                } else {
                    taskQueue.insert(next, at: 0)
                }
            }
        }
    }

    /// How many workers may die on one task before its batch becomes an `error` message.
    static let deathsPerTask = 2
    /// Worker deaths per task id (a requeued task keeps its id).
    var deaths: [Int64: Int] = [:]

    func collect(workerIndex index: Int) {
        guard case .running(let worker) = workers.slots[index] else { return }
        let received = worker.receive()
        for result in received.results {
            workers.completed()
            deaths.removeValue(forKey: result.id)
            if let owner = taskOwners[result.id] {
                metrics[owner.rank, owner.stage]?.decode.record(Double(result.decodeNanoseconds) / 1e9)
            }
            var report: ErrorReport?
            if !result.error.isEmpty {
                report = (try? JSONDecoder().decode(ErrorReport.self, from: Data(result.error.utf8)))
                    ?? ErrorReport(file: "", array: "", chunk: "", reason: result.error)
            }
            finish(result.id, report: report)
        }
        guard received.ended else { return }
        // The worker died. Its unfinished tasks go back to the front of the queue and are decoded again into
        // the same slots (the stream is unchanged) — unless workers keep dying on one: then its batch goes out
        // as an `error` naming the file, and the stream goes on.
        let lost = workers.died(index)
        var requeued = 0, failed = 0
        defer { Self.log("\(lost.count) unfinished tasks of the dead worker: \(requeued) requeued, \(failed) failed after repeated deaths") }
        // A worker decodes its tasks in order: the oldest unanswered one was being decoded when it died. Only
        // that one is counted against; the others merely waited in its pipe.
        let culprit = lost.first?.id
        for task in lost.reversed() {
            guard let owner = taskOwners[task.id], let stream = streams[owner.rank]?[owner.stage] else { continue }
            guard stream.owns(id: owner.stream, batch: owner.batch, buffer: owner.buffer) else {
                taskOwners.removeValue(forKey: task.id)
                stream.taskDropped(buffer: owner.buffer)
                continue
            }
            let count = deaths[task.id, default: 0] + (task.id == culprit ? 1 : 0)
            deaths[task.id] = count
            if count < Self.deathsPerTask {
                taskQueue.insert(task, at: 0)
                requeued += 1
            } else {
                failed += 1
                deaths.removeValue(forKey: task.id)
                let report = ErrorReport(
                    file: config.sequencePath(Int(task.sequence)), array: "", chunk: "",
                    reason: "\(count) workers died decoding frame \(task.frame) of sequence \(task.sequence) from this file",
                    kind: .workerCrash)
                finish(task.id, report: report)
            }
        }
    }

    /// A task is done (decoded, or failed with `report`): its batch's assembly counts it.
    func finish(_ id: Int64, report: ErrorReport?) {
        guard let owner = taskOwners.removeValue(forKey: id), let stream = streams[owner.rank]?[owner.stage] else { return }
        let current = stream.owns(id: owner.stream, batch: owner.batch, buffer: owner.buffer)
        stream.taskFinished(id: owner.stream, batch: owner.batch, buffer: owner.buffer, failure: report)
        if current, let report {
            let text = "rank \(owner.rank) \(owner.stage.rawValue) epoch \(stream.epoch) batch \(owner.batch): \(report.file) \(report.array) \(report.chunk): \(report.reason)"
            Self.log("decode failed: " + text, .warning)
            errors.append(text)
            if errors.count > 50 { errors.removeFirst() }
        }
    }

    /// Whether the rank has a message to send now: a ready one, and for a shared-memory batch a lease to spare.
    func canSend(_ rank: Int) -> Bool {
        guard peerMonitors[rank]?.peers == 1, let stream = streams[rank]?.onWire, let next = stream.next else { return false }
        if case .batch = next, stream.transport == .shm { return leaseSessions?.mayLease(rank: rank) ?? false }
        return true
    }

    /// Sends the rank's next ready messages, in order, without blocking.
    func send(_ rank: Int) throws {
        guard let socket = sockets[rank], let rankStreams = streams[rank], peerMonitors[rank]?.peers == 1 else { return }
        while let stream = rankStreams.onWire, let outgoing = stream.next {
            let stage: WireProtocol.Stage = stream.stage == .train ? .train : .val
            let sent: Bool
            switch outgoing {
            case .end(let batches):
                let end = WireProtocol.EndHeader(stream: stream.id, stage: stage, epoch: stream.epoch, batches: batches)
                sent = try socket.send(try WireProtocol.encode(.init(header: .end(end))), dontWait: true)
            case .failure(let batch, let report):
                let header = WireProtocol.ErrorHeader(
                    stream: stream.id, stage: stage, epoch: stream.epoch, batch: batch, file: report.file.isEmpty ? nil : report.file,
                    array: report.array.isEmpty ? nil : report.array, chunk: report.chunk.isEmpty ? nil : report.chunk, reason: report.reason)
                sent = try socket.send(try WireProtocol.encode(.init(header: .error(header))), dontWait: true)
            case .batch(_, let plan, let buffer) where stream.transport == .shm:
                guard let sessions = leaseSessions, sessions.mayLease(rank: rank) else { return }
                sent = try sendLease(plan, buffer: buffer, stream: stream, stage: stage, rank: rank, socket: socket, sessions: sessions)
            case .batch(_, let plan, let buffer):
                sent = try sendBatch(plan, buffer: buffer, stream: stream, stage: stage, rank: rank, socket: socket)
            }
            guard sent else { return }
            switch outgoing {
            case .batch(_, let plan, _):
                framesSent += plan.sequences.count
                metrics[rank, stream.stage]?.sent(frames: plan.sequences.count, bytes: layout.filledByteCount(plan.sequences.count))
            case .failure(_, let report):
                metrics[rank, stream.stage]?.failed(report.kind)
            case .end:
                break
            }
            stream.sent(outgoing)
        }
    }

    /// Sends a ready batch straight from shared memory: every tensor frame is a zero-copy part whose
    /// release (on libzmq's I/O thread) writes the buffer's index to `releasePipe`.
    func sendBatch(_ plan: BatchPlan, buffer: Int, stream: StageStream, stage: WireProtocol.Stage, rank: Int, socket: ZmqSocket) throws -> Bool {
        var specs: [WireProtocol.TensorSpec] = []
        var parts: [ZmqPart] = []
        let base = buffer * layout.byteCount
        let releaseFD = releasePipe[1]
        let token = Int32(buffer)
        for tensor in layout.tensors {
            let (shape, bytes) = tensor.filled(plan.sequences.count)
            specs.append(.init(name: tensor.key, dataType: tensor.dataType, shape: shape))
            guard let region = memory.region(offset: base + bytes.lowerBound, count: bytes.count) else {
                throw DaemonError("batch buffer \(buffer) tensor \(tensor.key) lies outside the shared memory")
            }
            parts.append(.zeroCopy(ZeroCopyBuffer(UnsafeRawBufferPointer(region)) {
                var value = token
                _ = write(releaseFD, &value, 4)
            }))
        }
        let header = WireProtocol.BatchHeader(
            stream: stream.id, stage: stage, epoch: plan.epoch, batch: plan.batch, frameIndex: plan.frameIndex,
            sequences: plan.sequences, orientations: plan.orientations, rank: rank, worldSize: worldSize, tensors: specs)
        let message = try WireProtocol.batchParts(header, payloads: parts)
        // Every part's release comes through the pipe, also when the send does not happen.
        stream.framesQueued(buffer: buffer, count: parts.count)
        let sent = try socket.send(message, dontWait: true)
        if sent { bytesSent += message.reduce(0) { $0 + $1.byteCount } }
        return sent
    }

    /// Sends a ready batch as a lease: one frame naming where each tensor lies in the shared memory. The
    /// lease holds the buffer until the trainer releases it (or its session ends).
    func sendLease(
        _ plan: BatchPlan, buffer: Int, stream: StageStream, stage: WireProtocol.Stage, rank: Int, socket: ZmqSocket,
        sessions: LeaseSessions
    ) throws -> Bool {
        guard let lease = sessions.lease(rank: rank, buffer: buffer) else { return false }
        let base = buffer * layout.byteCount
        var tensors: [WireProtocol.SharedTensor] = []
        for tensor in layout.tensors {
            let (shape, bytes) = tensor.filled(plan.sequences.count)
            tensors.append(.init(spec: .init(name: tensor.key, dataType: tensor.dataType, shape: shape), offset: base + bytes.lowerBound))
        }
        let batch = WireProtocol.BatchHeader(
            stream: stream.id, stage: stage, epoch: plan.epoch, batch: plan.batch, frameIndex: plan.frameIndex,
            sequences: plan.sequences, orientations: plan.orientations, rank: rank, worldSize: worldSize, tensors: [])
        let frame = try WireProtocol.Header.lease(.init(batch: batch, lease: lease, tensors: tensors)).encoded()
        guard try socket.send([frame], dontWait: true) else {
            sessions.cancel(lease)
            return false
        }
        stream.framesQueued(buffer: buffer, count: 1)
        bytesSent += layout.byteCount
        return true
    }

    /// Counts released frames back to their buffers; a sent buffer is free once all its frames are.
    func drainReleases() {
        var values = [Int32](repeating: 0, count: 1024)
        while true {
            let count = values.withUnsafeMutableBytes { read(releasePipe[0], $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            for value in values[0..<(count / 4)] {
                let buffer = Int(value)
                let index = buffer / (2 * buffersPerStream)
                guard index < ranks.count, let stream = streams[ranks[index]]?.stream(owning: buffer) else { continue }
                stream.frameReleased(buffer: buffer)
            }
        }
    }

    /// Stops everything within ``shutdownDeadline``; returns why the resume state could not be written, if
    /// it could not.
    func shutdown() -> Error? {
        let deadline = ContinuousClock.now + Self.shutdownDeadline
        do { _ = try SystemdNotify().stopping() } catch { Self.log("sd_notify: \(error)", .warning) }
        var stateError: Error?
        if let directory = config.serve.stateDirectory, let state = currentState() {
            do {
                let path = try state.write(to: directory)
                Self.log("wrote resume state to \(path): epoch \(state.startEpoch), sequence \(state.startSequence)")
            } catch {
                stateError = error
                Self.log("could not write the resume state: \(error)", .error)
            }
        }
        workers.stop(deadline: deadline)
        metricsEndpoint?.close()
        leaseSessions?.close()
        for monitor in peerMonitors.values { monitor.close() }
        for socket in sockets.values { socket.close() }
        control.close()
        authenticator?.close()
        // Terminating the context releases every frame still queued; only then may the memory go.
        context.close()
        Self.removeSocketFiles([controlEndpoint] + Array(endpoints.values))
        Self.log("stopped")
        return stateError
    }
}
