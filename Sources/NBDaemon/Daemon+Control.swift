import Foundation
import Glibc
import NBLoader
import NBTransport

/// The control socket (REP): one JSON object per request, one per reply. Every reply has `"ok"`; a
/// failed request has `"error"` with the reason. Commands: `epoch`, `ack`, `length`, `status`,
/// `checkpoint`, `stop`.
extension Daemon {
    func handleControl() throws {
        guard let frames = try control.receiveMultipart(timeout: .zero) else { return }
        let reply: [String: Any]
        do {
            guard let first = frames.first,
                  let request = try JSONSerialization.jsonObject(with: Data(first)) as? [String: Any],
                  let command = request["cmd"] as? String
            else { throw DaemonError("a request is one JSON object with a string \"cmd\"") }
            reply = try handle(command, request)
        } catch {
            reply = ["ok": false, "error": "\(error)"]
        }
        let data = try JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys])
        _ = try control.send([Array(data)])
    }

    private func integer(_ request: [String: Any], _ key: String, default fallback: Int? = nil) throws -> Int {
        if let value = request[key] as? Int { return value }
        if let value = request[key] as? NSNumber { return value.intValue }
        if let fallback { return fallback }
        throw DaemonError("request needs an integer \"\(key)\"")
    }

    private func stage(_ request: [String: Any]) throws -> Stage {
        switch request["stage"] as? String ?? "train" {
        case "train": return .train
        case "val", "validation": return .val
        case let other: throw DaemonError("stage '\(other)' is not train or val")
        }
    }

    private func stream(_ request: [String: Any]) throws -> RankStream {
        let rank = try integer(request, "rank")
        guard let stream = streams[rank] else { throw DaemonError("rank \(rank) is not served here (ranks \(ranks))") }
        return stream
    }

    func handle(_ command: String, _ request: [String: Any]) throws -> [String: Any] {
        switch command {
        case "epoch":
            let stream = try stream(request)
            let stage = try stage(request)
            let epoch = try integer(request, "epoch")
            var resume: ResumeState?
            if let state = request["state"] as? [String: Any], !state.isEmpty {
                let given = ResumeState(startEpoch: try integer(state, "start_epoch_idx"), startSequence: try integer(state, "start_sequence_idx"))
                // As in noisebase, a state only slices the epoch it names.
                resume = given.startEpoch == epoch ? given : nil
            } else if stage == .train, let resumeState, resumeState.startEpoch == epoch {
                resume = resumeState.resumeState
            }
            // Tasks no worker has yet of what this rank streamed so far are dropped.
            taskQueue.removeAll { task in
                guard taskOwners[task.id]?.rank == stream.rank, let owner = taskOwners.removeValue(forKey: task.id) else { return false }
                stream.taskFinished(buffer: owner.buffer)
                return true
            }
            if request["continue"] as? Bool == true, stream.active, stream.stage == stage, stream.epoch == epoch {
                stream.rewindToConsumed()
                Self.log("rank \(stream.rank): \(stage.rawValue) epoch \(epoch) continues at batch \(stream.consumed) for a reconnected trainer")
                return ["ok": true, "batches": stream.plans.count, "rank": stream.rank, "epoch": epoch, "stage": stage.rawValue,
                        "continues_at": stream.consumed]
            }
            let sampler = try VideoSampler(config: config, stage: stage, rank: stream.rank, worldSize: worldSize)
            let plans = try sampler.batches(epoch: epoch, resume: resume)
            stream.start(stage: stage, epoch: epoch, resume: resume, plans: plans)
            Self.log("rank \(stream.rank): \(stage.rawValue) epoch \(epoch), \(plans.count) batches\(resume.map { " from sequence \($0.startSequence)" } ?? "")")
            return ["ok": true, "batches": plans.count, "rank": stream.rank, "epoch": epoch, "stage": stage.rawValue,
                    "resumed_from": resume.map { ["start_epoch_idx": $0.startEpoch, "start_sequence_idx": $0.startSequence] } as Any? ?? NSNull()]
        case "ack":
            let stream = try stream(request)
            let epoch = try integer(request, "epoch")
            if stream.active, stream.epoch == epoch, try stage(request) == stream.stage {
                stream.acknowledge(try integer(request, "batches"))
            }
            return ["ok": true, "consumed": stream.consumed]
        case "length":
            let stage = try stage(request)
            let rank = try integer(request, "rank", default: 0)
            let sampler = try VideoSampler(config: config, stage: stage, rank: rank, worldSize: worldSize)
            let epoch = try integer(request, "epoch", default: 0)
            return ["ok": true, "batches": try sampler.batches(epoch: epoch).count, "noisebase_len": sampler.noisebaseLength]
        case "status":
            return status()
        case "checkpoint":
            guard let directory = (request["dir"] as? String) ?? config.serve.stateDirectory else {
                throw DaemonError("no serve.state_dir configured")
            }
            guard let state = currentState() else { throw DaemonError("nothing to checkpoint yet: no train epoch has been requested") }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let path = try state.write(to: directory)
            Self.log("checkpoint: wrote \(path): epoch \(state.startEpoch), sequence \(state.startSequence)")
            return ["ok": true, "path": path, "state": ["start_epoch_idx": state.startEpoch, "start_sequence_idx": state.startSequence,
                                                        "config_fingerprint": state.configFingerprint, "seed": state.seed]]
        case "stop":
            stopping = true
            return ["ok": true]
        default:
            throw DaemonError("unknown command '\(command)' (epoch, ack, length, status, checkpoint, stop)")
        }
    }

    /// The resume state of what every served rank has consumed: noisebase's
    /// `{start_epoch_idx, start_sequence_idx}` of the first sequence group not every rank has fully
    /// consumed in the oldest train epoch being served.
    func currentState() -> ResumeStateFile? {
        let progress = ranks.compactMap { streams[$0]?.trainProgress }
        var position: ResumeState? = resumeState?.resumeState
        if progress.count == ranks.count, let epoch = progress.map(\.epoch).min() {
            let current = progress.filter { $0.epoch == epoch }
            if current.count == progress.count && current.allSatisfy({ $0.consumed >= $0.batches }) {
                position = ResumeState(startEpoch: epoch + 1, startSequence: 0)
            } else {
                let frames = config.source.framesPerSequence
                let groups = current.map { $0.consumed / frames }.min() ?? 0
                let base = current.first?.resume.flatMap { $0.startEpoch == epoch ? $0.startSequence : nil } ?? 0
                position = ResumeState(startEpoch: epoch, startSequence: base + groups * layout.batchSize * worldSize)
            }
        }
        guard let position else { return nil }
        return ResumeStateFile(
            configFingerprint: config.fingerprint, seed: config.seed, worldSize: worldSize, startEpoch: position.startEpoch,
            startSequence: position.startSequence, writtenAt: ISO8601DateFormatter().string(from: Date()))
    }

    func status() -> [String: Any] {
        let uptime = max(Date().timeIntervalSince(started), 1e-3)
        let rankStatus: [[String: Any]] = ranks.compactMap { rank in
            guard let stream = streams[rank] else { return nil }
            return ["rank": rank, "endpoint": endpoints[rank] ?? "", "active": stream.active, "stage": stream.stage.rawValue,
                    "epoch": stream.epoch, "batches": stream.plans.count, "produced": stream.nextSchedule, "sent": stream.nextSend,
                    "consumed": stream.consumed, "ready": stream.readyCount, "errors": stream.errorsSent]
        }
        let workerStatus: [[String: Any]] = workers.map {
            ["pid": Int($0.pid), "state": $0.outstanding.isEmpty ? "idle" : "busy", "outstanding": $0.outstanding.count,
             "completed": $0.completed, "rss_mb": Self.residentMegabytes(pid: $0.pid)]
        }
        var reply: [String: Any] = [
            "ok": true, "pid": Int(getpid()), "world_size": worldSize, "ranks": rankStatus, "workers": workerStatus,
            "worker_restarts": restarts, "errors": errors, "uptime_s": uptime, "frames_per_s": Double(framesSent) / uptime,
            "bytes_per_s": Double(bytesSent) / uptime, "queued_tasks": taskQueue.count, "control": controlEndpoint,
            "rss_mb": Self.residentMegabytes(pid: getpid()) + workerStatus.reduce(0.0) { $0 + ($1["rss_mb"] as? Double ?? 0) },
            // What a client needs to interpret the stream without the config.
            "frames_per_sequence": config.source.framesPerSequence, "batch_size": layout.batchSize,
            "data_path": config.dataPath, "files": config.source.files.text, "sequences": config.source.sequences,
            // The noisebase keys that decide what is served, as the config has them (batch_size for the whole
            // world): a client checks its trainer's config against these.
            "config": [
                "batch_size": config.batchSize, "seed": Int(config.seed), "buffers": config.buffers.map(\.rawValue),
                "samples": config.samples, "val_split": config.valSplit, "shuffle": config.shuffle,
                "drop_last": config.dropLast, "flip_rotate": config.flipRotate,
                "src": [
                    "sequences": config.source.sequences, "files": config.source.files.text,
                    "frames_per_sequence": config.source.framesPerSequence, "crop": config.source.crop,
                    "samples": config.source.samples, "rendering_height": config.source.renderingHeight,
                    "rendering_width": config.source.renderingWidth,
                ] as [String: Any],
            ] as [String: Any],
        ]
        if let state = currentState() {
            reply["resume_state"] = ["start_epoch_idx": state.startEpoch, "start_sequence_idx": state.startSequence]
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
