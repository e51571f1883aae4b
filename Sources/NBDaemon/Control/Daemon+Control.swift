import Foundation
import Glibc
import NBLoader
import NBStorage
import NBTransport
import NBVocabulary

/// The control socket (REP): one JSON object per request, one per reply (docs/protocol.md section 5).
/// Every reply has `"ok"`; a refused request has `"error"`, a sentence. Requests are decoded strictly by
/// ``ControlRequest`` and never echoed back.
extension Daemon {
    func handleControl() throws {
        guard let frames = try control.receiveMultipart(timeout: .zero) else { return }
        var reply: [String: JSONValue]
        do {
            let request = try ControlRequest.decode(frames)
            if TestHooks.failLoopOnAck, case .ack = request { throw DaemonError("injected fault: the main loop fails on ack") }
            if TestHooks.wedgeOnStop, case .stop = request { Self.wedge() }
            reply = try handle(request)
            reply["ok"] = .bool(true)
        } catch let error as ControlError {
            reply = ["ok": .bool(false), "error": .string(error.description)]
        }
        _ = try control.send([Array(JSONValue.object(reply).description.utf8)])
    }

    /// Test builds only (TestHooks.wedgeOnStop): blocks the loop for good, as a deadlock would.
    static func wedge() -> Never {
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        var byte: UInt8 = 0
        while true { _ = read(fds[0], &byte, 1) }
    }

    private func rankStreams(_ rank: Int) throws(ControlError) -> RankStreams {
        guard let found = streams[rank] else {
            throw .refused("rank \(rank) is not served here (ranks \(ranks.map(String.init).joined(separator: ", ")))")
        }
        return found
    }

    func handle(_ request: ControlRequest) throws(ControlError) -> [String: JSONValue] {
        switch request {
        case .epoch(let request):
            return try startEpoch(request)
        case .ack(let ack):
            let (rank, stage) = (ack.rank, ack.stage)
            let stream = try rankStreams(rank)[stage]
            guard stream.phase != .idle else { throw .refused("rank \(rank) has no \(stage.rawValue) stream to acknowledge") }
            if let id = ack.stream, id != stream.id {
                throw .refused("stream \(id) is not rank \(rank)'s current \(stage.rawValue) stream (\(stream.id))")
            }
            guard ack.epoch == stream.epoch else {
                throw .refused("rank \(rank)'s \(stage.rawValue) stream is at epoch \(stream.epoch), not \(ack.epoch)")
            }
            try stream.acknowledge(ack.batches)
            stream.timing.add(waits: ack.waits, busy: ack.busy)
            metrics[rank, stage]?.recordTrainer(waits: ack.waits, busy: ack.busy, stall: stream.timing.stall)
            return ["consumed": .int(Int64(stream.consumed)), "stream": .int(Int64(stream.id))]
        case .length(let stage, let rank, let epoch):
            do {
                let sampler = try VideoSampler(config: config, stage: stage, rank: rank, worldSize: worldSize)
                return ["batches": .int(Int64(try sampler.batches(epoch: epoch).count)), "noisebase_len": .int(Int64(sampler.noisebaseLength))]
            } catch {
                throw .refused("cannot plan \(stage.rawValue) epoch \(epoch) for rank \(rank): \(error)")
            }
        case .status:
            return status()
        case .checkpoint:
            guard let directory = config.serve.stateDirectory else {
                throw .refused("no serve.state_dir is configured: the daemon writes resume states only there")
            }
            guard let state = currentState() else { throw .refused("nothing to checkpoint yet: no train epoch has been requested") }
            do {
                let path = try state.write(to: directory)
                Self.log("checkpoint: wrote \(path): epoch \(state.startEpoch), sequence \(state.startSequence)")
                return ["path": .string(path), "state": .object([
                    "start_epoch_idx": .int(Int64(state.startEpoch)), "start_sequence_idx": .int(Int64(state.startSequence)),
                    "config_fingerprint": .string(state.configFingerprint), "seed": .int(state.seed),
                ])]
            } catch {
                throw .refused("could not write the resume state to \(directory): \(error)")
            }
        case .stop:
            stopping = true
            return [:]
        }
    }

    private func startEpoch(_ request: EpochRequest) throws(ControlError) -> [String: JSONValue] {
        let pair = try rankStreams(request.rank)
        let stream = pair[request.stage]
        if request.transport == .shm {
            guard let sessions = leaseSessions else {
                throw .refused("the shared-memory transport is off here (serve.shm_socket; it needs an ipc control socket or an explicit path)")
            }
            guard sessions.session(rank: request.rank) != nil else {
                throw .refused("rank \(request.rank) has no shared-memory session: connect to \(sessions.path) and say hello first")
            }
        }

        var reply: [String: JSONValue] = [
            "rank": .int(Int64(request.rank)), "epoch": .int(Int64(request.epoch)), "stage": .string(request.stage.rawValue),
        ]
        // Afterwards, tasks no worker has yet of what this stage no longer streams are dropped (an adopted
        // lookahead's stay: they are the new stream's).
        defer { dropQueuedTasks(notOwnedBy: stream) }
        if request.continues, stream.phase != .idle, stream.epoch == request.epoch {
            stream.resumeAtConsumed(id: streamIDs.take())
            stream.transport = request.transport
            pair.requested(request.stage)
            Self.log("rank \(request.rank): \(request.stage.rawValue) epoch \(request.epoch) continues at batch \(stream.consumed) (stream \(stream.id))")
            reply["batches"] = .int(Int64(stream.plans.count))
            reply["continues_at"] = .int(Int64(stream.consumed))
            reply["stream"] = .int(Int64(stream.id))
            return reply
        }
        var resume: ResumeState?
        if let given = request.state {
            // As in noisebase, a state only slices the epoch it names.
            resume = given.startEpoch == request.epoch ? given : nil
        } else if request.stage == .train, let resumeState, resumeState.startEpoch == request.epoch {
            resume = resumeState.resumeState
        }
        let plans: [BatchPlan]
        do {
            let sampler = try VideoSampler(config: config, stage: request.stage, rank: request.rank, worldSize: worldSize)
            plans = try sampler.batches(epoch: request.epoch, resume: resume)
        } catch {
            throw .refused("cannot plan \(request.stage.rawValue) epoch \(request.epoch) for rank \(request.rank): \(error)")
        }
        let adopted = stream.start(id: streamIDs.take(), epoch: request.epoch, resume: resume, plans: plans)
        stream.transport = request.transport
        pair.requested(request.stage)
        Self.log("rank \(request.rank): \(request.stage.rawValue) epoch \(request.epoch), \(plans.count) batches\(resume.map { " from sequence \($0.startSequence)" } ?? "") (stream \(stream.id)\(adopted ? ", decoded ahead" : ""))")
        reply["batches"] = .int(Int64(plans.count))
        reply["stream"] = .int(Int64(stream.id))
        reply["resumed_from"] = resume.map { .object(["start_epoch_idx": .int(Int64($0.startEpoch)), "start_sequence_idx": .int(Int64($0.startSequence))]) } ?? .null
        return reply
    }

    private func dropQueuedTasks(notOwnedBy stream: StageStream) {
        taskQueue.removeAll { task in
            guard let owner = taskOwners[task.id], owner.rank == stream.rank, owner.stage == stream.stage,
                  !stream.owns(id: owner.stream, batch: owner.batch, buffer: owner.buffer)
            else { return false }
            taskOwners.removeValue(forKey: task.id)
            stream.taskDropped(buffer: owner.buffer)
            return true
        }
    }

    /// The resume state of what every served rank has consumed: noisebase's
    /// `{start_epoch_idx, start_sequence_idx}` of the first sequence group not every rank has fully
    /// consumed in the oldest train epoch being served.
    func currentState() -> ResumeStateFile? {
        let trains = ranks.compactMap { streams[$0]?.train }.filter { $0.phase != .idle }
        let progress = trains.map { TrainProgress(epoch: $0.epoch, consumed: $0.consumed, batches: $0.plans.count, resume: $0.resume) }
        guard let position = TrainProgress.resumePosition(
            progress, rankCount: ranks.count, framesPerSequence: config.source.framesPerSequence,
            sequencesPerGroup: layout.batchSize * worldSize, fallback: resumeState?.resumeState)
        else { return nil }
        return ResumeStateFile(
            configFingerprint: config.fingerprint, seed: config.seed, worldSize: worldSize, startEpoch: position.startEpoch,
            startSequence: position.startSequence, writtenAt: ISO8601DateFormatter().string(from: Date()))
    }

    func status() -> [String: JSONValue] {
        let uptime = max(Date().timeIntervalSince(started), 1e-3)
        func streamStatus(_ stream: StageStream) -> JSONValue {
            .object([
                "stream": .int(Int64(stream.id)), "phase": .string(stream.phase.rawValue), "epoch": .int(Int64(stream.epoch)),
                "batches": .int(Int64(stream.plans.count)), "produced": .int(Int64(stream.nextSchedule)),
                "sent": .int(Int64(stream.nextSend)), "consumed": .int(Int64(stream.consumed)),
                "ready": .int(Int64(stream.readyCount)), "errors": .int(Int64(stream.errorsSent)),
                "free_buffers": .int(Int64(stream.buffers.free.count)),
                // What the trainer reported of this epoch: seconds waited for batches and spent between them.
                "trainer": .object([
                    "wait_s": .double(stream.timing.waitSeconds), "busy_s": .double(stream.timing.busySeconds),
                    "batches": .int(Int64(stream.timing.waits)), "stall": stream.timing.stall.map { .double($0) } ?? .null,
                ]),
                "ahead": stream.lookahead.map { .object(["epoch": .int(Int64($0.epoch)), "ready": .int(Int64(stream.readyAhead))]) } ?? .null,
            ])
        }
        let rankStatus: [JSONValue] = ranks.compactMap { rank in
            guard let pair = streams[rank] else { return nil }
            return .object([
                "rank": .int(Int64(rank)), "endpoint": .string(endpoints[rank] ?? ""),
                "on_wire": pair.onWire.map { .string($0.stage.rawValue) } ?? .null,
                "transport": .string((pair.onWire ?? pair[pair.preferred]).transport.rawValue),
                "shm_session": .bool(leaseSessions?.session(rank: rank) != nil),
                "held_leases": .int(Int64(leaseSessions?.held(rank: rank) ?? 0)),
                // Batches go out only while exactly one trainer is connected (docs/protocol.md section 6).
                "connected": .int(Int64(peerMonitors[rank]?.peers ?? 0)),
                "train": streamStatus(pair.train), "val": streamStatus(pair.val),
            ])
        }
        var workerRSS = 0.0
        var workerStatus: [JSONValue] = []
        for (_, worker) in workers.running {
            let rss = Self.residentMegabytes(pid: worker.pid)
            workerRSS += rss
            workerStatus.append(.object([
                "pid": .int(Int64(worker.pid)), "state": .string(worker.outstanding.isEmpty ? "idle" : "busy"),
                "outstanding": .int(Int64(worker.outstanding.count)), "completed": .int(Int64(worker.completed)), "rss_mb": .double(rss),
            ]))
        }
        var reply: [String: JSONValue] = [
            "pid": .int(Int64(getpid())), "world_size": .int(Int64(worldSize)), "ranks": .array(rankStatus),
            "workers": .array(workerStatus), "worker_restarts": .int(Int64(workers.restarts)),
            "workers_starting": .int(Int64(workers.slots.count - workers.running.count)),
            "errors": .array(errors.map { .string($0) }), "uptime_s": .double(uptime),
            "frames_per_s": .double(Double(framesSent) / uptime), "bytes_per_s": .double(Double(bytesSent) / uptime),
            "queued_tasks": .int(Int64(taskQueue.count)), "control": .string(controlEndpoint),
            "metrics": metricsEndpoint.map { .string($0.url) } ?? .null,
            "shm_socket": leaseSessions.map { .string($0.path) } ?? .null, "leases_per_rank": .int(Int64(config.serve.leaseLimit)),
            "rss_mb": .double(Self.residentMegabytes(pid: getpid()) + workerRSS),
            // What a client needs to interpret the stream without the config.
            "frames_per_sequence": .int(Int64(config.source.framesPerSequence)), "batch_size": .int(Int64(layout.batchSize)),
            "data_path": .string(config.dataPath), "files": .string(config.source.files.text),
            "sequences": .int(Int64(config.source.sequences)),
            // The noisebase keys that decide what is served, as the config has them (batch_size for the whole
            // world): a client checks its trainer's config against these.
            "config": .object([
                "batch_size": .int(Int64(config.batchSize)), "seed": .int(config.seed),
                "buffers": .array(config.buffers.map { .string($0.rawValue) }), "samples": .int(Int64(config.samples)),
                "val_split": .double(config.valSplit), "shuffle": .bool(config.shuffle), "drop_last": .bool(config.dropLast),
                "flip_rotate": .bool(config.flipRotate),
                "src": .object([
                    "sequences": .int(Int64(config.source.sequences)), "files": .string(config.source.files.text),
                    "frames_per_sequence": .int(Int64(config.source.framesPerSequence)), "crop": .int(Int64(config.source.crop)),
                    "samples": .int(Int64(config.source.samples)), "rendering_height": .int(Int64(config.source.renderingHeight)),
                    "rendering_width": .int(Int64(config.source.renderingWidth)),
                ]),
            ]),
        ]
        if let state = currentState() {
            reply["resume_state"] = .object(["start_epoch_idx": .int(Int64(state.startEpoch)), "start_sequence_idx": .int(Int64(state.startSequence))])
        }
        return reply
    }

    /// Resident memory of a process from /proc (shared batch memory is counted by each mapper).
    static func residentMegabytes(pid: pid_t) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Double(fields[1]) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
    }
}
