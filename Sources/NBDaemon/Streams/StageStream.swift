import NBLoader

/// One rank's stream of one stage: the epoch a trainer asked for, which of its batches are being decoded,
/// which are ready, sent and acknowledged, and the buffers they live in. Batches go out strictly in plan
/// order. Every transition is a method here; the daemon only calls them.
///
/// Lifecycle: `idle` (never asked) → `start` → `streaming` → the last batch sent → `ending` → `end` sent →
/// `ended`. `start` or `resume(at:)` begins a new stream (a new id) from any phase.
final class StageStream {
    enum Phase: String, Equatable {
        /// No epoch has been asked for on this stage.
        case idle
        /// Batches are being decoded and sent.
        case streaming
        /// Every batch was sent; the `end` message is not yet.
        case ending
        /// `end` was sent: nothing more goes out until the next request.
        case ended
    }

    /// A batch being decoded into (or ready in) its buffer.
    struct Assembly: Equatable {
        let buffer: Int
        /// Tasks not yet answered.
        var remaining: Int
        var failure: ErrorReport?
    }

    let rank: Int
    let stage: Stage
    private(set) var buffers: BufferPool

    private(set) var phase: Phase = .idle
    /// The current stream's id (0 while idle).
    private(set) var id = 0
    private(set) var epoch = 0
    /// Where the epoch was resumed from (noisebase's state), if it was.
    private(set) var resume: ResumeState?
    private(set) var plans: [BatchPlan] = []
    /// The next batch to hand to workers, the next to send.
    private(set) var nextSchedule = 0
    private(set) var nextSend = 0
    /// Batches the trainer acknowledged (consumed), counted from the first batch of the epoch's plan.
    private(set) var consumed = 0
    private(set) var assemblies: [Int: Assembly] = [:]
    /// `error` messages sent in place of batches (the `end` message counts only batches).
    private(set) var errorsSent = 0

    init(rank: Int, stage: Stage, buffers: [Int]) {
        self.rank = rank
        self.stage = stage
        self.buffers = BufferPool(indices: buffers)
    }

    /// Begins a new stream `id` of `epoch` with its plan (abandoning whatever this stage streamed before).
    func start(id: Int, epoch: Int, resume: ResumeState?, plans: [BatchPlan]) {
        self.epoch = epoch
        self.resume = resume
        self.plans = plans
        consumed = 0
        restart(id: id, at: 0)
    }

    /// Begins a new stream `id` of the same epoch at the first batch the trainer has not acknowledged (a
    /// trainer that reconnected: whatever was queued for its old connection carries the old id).
    func resumeAtConsumed(id: Int) {
        restart(id: id, at: consumed)
    }

    private func restart(id: Int, at batch: Int) {
        self.id = id
        phase = .streaming
        nextSchedule = batch
        nextSend = batch
        errorsSent = 0
        assemblies.removeAll()
        buffers.retireAll()
        updateEnding()
    }

    /// Records that the trainer has consumed the first `batches` batches of the epoch. A count beyond what
    /// was sent is refused: it would make a checkpoint skip batches nobody trained on.
    func acknowledge(_ batches: Int) throws(ControlError) {
        guard batches <= nextSend else {
            throw .invalid("ack of \(batches) batches of rank \(rank)'s \(stage.rawValue) epoch \(epoch), but only \(nextSend) were sent")
        }
        consumed = max(consumed, batches)
    }

    // MARK: Scheduling

    /// The next batch to decode and the buffer it goes into, when one is planned and a buffer is free.
    func scheduleNext() -> (batch: Int, plan: BatchPlan, buffer: Int)? {
        guard phase == .streaming, nextSchedule < plans.count, let buffer = buffers.take() else { return nil }
        let batch = nextSchedule
        let plan = plans[batch]
        assemblies[batch] = Assembly(buffer: buffer, remaining: plan.sequences.count)
        buffers.retain(buffer, count: plan.sequences.count)
        nextSchedule += 1
        return (batch, plan, buffer)
    }

    /// Whether a task of stream `id` for `batch` in `buffer` still belongs to this stream.
    func owns(id: Int, batch: Int, buffer: Int) -> Bool {
        self.id == id && assemblies[batch]?.buffer == buffer
    }

    /// A worker answered (or dropped) a task that wrote into `buffer`; when it belongs to the current stream
    /// (`owns`), the batch's assembly counts it and keeps the first failure.
    func taskFinished(id: Int, batch: Int, buffer: Int, failure: ErrorReport?) {
        buffers.release(buffer)
        guard owns(id: id, batch: batch, buffer: buffer), var assembly = assemblies[batch] else { return }
        assembly.remaining -= 1
        if assembly.failure == nil { assembly.failure = failure }
        assemblies[batch] = assembly
    }

    /// A task of this stream that was never handed to a worker is dropped.
    func taskDropped(buffer: Int) {
        buffers.release(buffer)
    }

    // MARK: Sending

    /// What goes on the wire next, if anything is ready.
    enum Outgoing: Equatable {
        case batch(batch: Int, plan: BatchPlan, buffer: Int)
        case failure(batch: Int, ErrorReport)
        case end(batches: Int)
    }

    var next: Outgoing? {
        switch phase {
        case .idle, .ended: return nil
        case .ending: return .end(batches: plans.count - errorsSent)
        case .streaming:
            guard let assembly = assemblies[nextSend], assembly.remaining == 0 else { return nil }
            if let failure = assembly.failure { return .failure(batch: nextSend, failure) }
            return .batch(batch: nextSend, plan: plans[nextSend], buffer: assembly.buffer)
        }
    }

    /// `next` went out. A sent batch's buffer is free once libzmq has released its frames (`frameReleased`).
    func sent(_ outgoing: Outgoing) {
        switch outgoing {
        case .end: phase = .ended
        case .batch(let batch, _, _): advance(past: batch, failed: false)
        case .failure(let batch, _): advance(past: batch, failed: true)
        }
    }

    private func advance(past batch: Int, failed: Bool) {
        guard batch == nextSend else { return }
        if failed { errorsSent += 1 }
        if let assembly = assemblies.removeValue(forKey: batch) { buffers.retire(assembly.buffer) }
        nextSend += 1
        updateEnding()
    }

    /// The buffer's frames are in libzmq's hands until released: each counts as a user.
    func framesQueued(buffer: Int, count: Int) {
        buffers.retain(buffer, count: count)
    }

    func frameReleased(buffer: Int) {
        buffers.release(buffer)
    }

    private func updateEnding() {
        if phase == .streaming, nextSend == plans.count { phase = .ending }
    }

    // MARK: Reporting

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

    /// Whether this stage has anything left to put on the wire.
    var hasMoreToSend: Bool { phase == .streaming || phase == .ending }
}
