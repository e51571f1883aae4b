import NBLoader

/// One rank's stream: the epoch a trainer asked for, which of its batches are being decoded, which
/// are ready, sent and consumed. Batches go out strictly in plan order.
final class RankStream {
    let rank: Int
    let bufferIndices: [Int]
    var freeBuffers: [Int]

    /// The epoch being streamed.
    var stage: Stage = .train
    var epoch = 0
    var resume: ResumeState?
    var plans: [BatchPlan] = []
    var active = false
    /// Next batch to hand to workers, next batch to send.
    var nextSchedule = 0
    var nextSend = 0
    var endSent = false
    /// Batches acknowledged by the trainer (consumed), counted from the start of the stream.
    var consumed = 0
    /// Batches in assembly or ready: batch index → its assembly.
    var assemblies: [Int: Assembly] = [:]
    var errorsSent = 0
    /// Tasks handed out per buffer and not yet answered: a buffer a worker may still write into is
    /// never given to another batch.
    var inflight: [Int: Int] = [:]
    /// Buffers of an abandoned epoch that still have tasks in flight; freed when those answer.
    var orphaned: Set<Int> = []

    /// The last train epoch this rank streamed and how far it was consumed: kept while the rank streams
    /// validation, so a checkpoint taken then still records the training position.
    struct TrainProgress {
        var epoch: Int
        var consumed: Int
        var batches: Int
        var resume: ResumeState?
    }
    var trainProgress: TrainProgress?

    final class Assembly {
        let buffer: Int
        var remaining: Int
        var error: ErrorReport?
        init(buffer: Int, remaining: Int) {
            self.buffer = buffer
            self.remaining = remaining
        }
    }

    init(rank: Int, bufferIndices: [Int]) {
        self.rank = rank
        self.bufferIndices = bufferIndices
        freeBuffers = bufferIndices
    }

    /// Starts streaming a new epoch (dropping anything still queued from the previous one).
    func start(stage: Stage, epoch: Int, resume: ResumeState?, plans: [BatchPlan]) {
        self.stage = stage
        self.epoch = epoch
        self.resume = resume
        self.plans = plans
        active = true
        nextSchedule = 0
        nextSend = 0
        endSent = false
        consumed = 0
        errorsSent = 0
        assemblies.removeAll()
        orphaned = Set(bufferIndices.filter { (inflight[$0] ?? 0) > 0 })
        freeBuffers = bufferIndices.filter { !orphaned.contains($0) }
        if stage == .train {
            trainProgress = TrainProgress(epoch: epoch, consumed: 0, batches: plans.count, resume: resume)
        }
    }

    /// Records acknowledged consumption (and the training position when this is a train stream).
    func acknowledge(_ batches: Int) {
        consumed = max(consumed, min(batches, nextSend))
        if stage == .train, trainProgress?.epoch == epoch { trainProgress?.consumed = consumed }
    }

    /// Sends the current epoch again from the first batch the trainer has not acknowledged (a trainer
    /// that reconnected: whatever was queued for its old connection is gone).
    func rewindToConsumed() {
        nextSchedule = consumed
        nextSend = consumed
        endSent = false
        assemblies.removeAll()
        orphaned = Set(bufferIndices.filter { (inflight[$0] ?? 0) > 0 })
        freeBuffers = bufferIndices.filter { !orphaned.contains($0) }
    }

    /// A task for `buffer` was answered (or dropped).
    func taskFinished(buffer: Int) {
        inflight[buffer, default: 1] -= 1
        if inflight[buffer] == 0, orphaned.remove(buffer) != nil { freeBuffers.append(buffer) }
    }

    /// Ready batches not yet sent.
    var readyCount: Int {
        var count = 0
        var batch = nextSend
        while let assembly = assemblies[batch], assembly.remaining == 0 {
            count += 1
            batch += 1
        }
        return count
    }

    var isFinished: Bool { active && nextSend == plans.count }
}
