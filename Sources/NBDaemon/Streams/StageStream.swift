import NBLoader
import NBVocabulary

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

        /// One task answered; the first failure is kept.
        mutating func count(_ report: ErrorReport?) {
            remaining -= 1
            if failure == nil { failure = report }
        }
    }

    let rank: Int
    let stage: Stage
    private(set) var buffers: BufferPool

    private(set) var phase: Phase = .idle
    /// The current stream's id (0 while idle).
    private(set) var id = 0
    /// How this stream's batches reach the trainer (set by each request).
    var transport: Transport = .frames
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
    /// What the trainer reported of its time on this epoch (kept when a reconnecting trainer continues it).
    var timing = TrainerTiming()

    /// The first batches of the epoch a trainer is expected to ask for next, decoded ahead into buffers the
    /// current stream no longer needs. The plan is a pure function of the config, seed and epoch, so the
    /// daemon knows it; a request for exactly this (epoch, resume) adopts them, anything else drops them.
    struct Lookahead: Equatable {
        let id: Int
        let epoch: Int
        let resume: ResumeState?
        let plans: [BatchPlan]
        var assemblies: [Int: Assembly] = [:]
        var nextSchedule = 0
    }
    private(set) var lookahead: Lookahead?

    init(rank: Int, stage: Stage, buffers: [Int]) {
        self.rank = rank
        self.stage = stage
        self.buffers = BufferPool(indices: buffers)
    }

    /// Begins a new stream of `epoch` with its plan (abandoning whatever this stage streamed before). When
    /// the lookahead decoded exactly this (epoch, resume), its batches are adopted and its id becomes the
    /// stream's; otherwise the stream is `id`. Returns whether the lookahead was adopted.
    @discardableResult
    func start(id: Int, epoch: Int, resume: ResumeState?, plans: [BatchPlan]) -> Bool {
        self.epoch = epoch
        self.resume = resume
        self.plans = plans
        consumed = 0
        timing = TrainerTiming()
        if let ahead = lookahead, ahead.epoch == epoch, ahead.resume == resume, ahead.plans == plans {
            lookahead = nil
            restart(id: ahead.id, at: 0, keeping: ahead.assemblies)
            nextSchedule = ahead.nextSchedule
            return true
        }
        restart(id: id, at: 0)
        return false
    }

    /// Whether the stream has scheduled all its batches and could decode ahead into its free buffers.
    var canLookAhead: Bool {
        lookahead == nil && nextSchedule == plans.count && !buffers.free.isEmpty
    }

    /// Starts decoding `plans` (of `epoch`, from `resume`) ahead, as stream `id` once adopted.
    func lookAhead(id: Int, epoch: Int, resume: ResumeState?, plans: [BatchPlan]) {
        lookahead = Lookahead(id: id, epoch: epoch, resume: resume, plans: plans)
    }

    /// Drops the lookahead; its buffers are free once their workers answer.
    private func dropLookahead() {
        guard let ahead = lookahead else { return }
        lookahead = nil
        for assembly in ahead.assemblies.values { buffers.retire(assembly.buffer) }
    }

    /// Begins a new stream `id` of the same epoch at the first batch the trainer has not acknowledged (a
    /// trainer that reconnected: whatever was queued for its old connection carries the old id).
    func resumeAtConsumed(id: Int) {
        restart(id: id, at: consumed)
    }

    /// Starts stream `id` at `batch`: every buffer the stream or its lookahead held is retired, except those
    /// of the assemblies `keeping` (an adopted lookahead's), which become the stream's.
    private func restart(id: Int, at batch: Int, keeping kept: [Int: Assembly] = [:]) {
        dropLookahead()
        self.id = id
        phase = .streaming
        nextSchedule = batch
        nextSend = batch
        errorsSent = 0
        let keptBuffers = Set(kept.values.map(\.buffer))
        for buffer in buffers.owned.sorted() where !keptBuffers.contains(buffer) { buffers.retire(buffer) }
        assemblies = kept
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
    /// The current stream's batches come first; once all are scheduled, the lookahead's. Returns the stream
    /// id the tasks belong to.
    func scheduleNext() -> (id: Int, batch: Int, plan: BatchPlan, buffer: Int)? {
        if phase == .streaming, nextSchedule < plans.count {
            guard let buffer = buffers.take() else { return nil }
            let batch = nextSchedule
            let plan = plans[batch]
            assemblies[batch] = Assembly(buffer: buffer, remaining: plan.sequences.count)
            buffers.retain(buffer, count: plan.sequences.count)
            nextSchedule += 1
            return (id, batch, plan, buffer)
        }
        guard nextSchedule == plans.count, var ahead = lookahead, ahead.nextSchedule < ahead.plans.count,
              let buffer = buffers.take()
        else { return nil }
        let batch = ahead.nextSchedule
        let plan = ahead.plans[batch]
        ahead.assemblies[batch] = Assembly(buffer: buffer, remaining: plan.sequences.count)
        ahead.nextSchedule += 1
        lookahead = ahead
        buffers.retain(buffer, count: plan.sequences.count)
        return (ahead.id, batch, plan, buffer)
    }

    /// Whether a task of stream `id` for `batch` in `buffer` still belongs to this stream (or its lookahead).
    func owns(id: Int, batch: Int, buffer: Int) -> Bool {
        if self.id == id { return assemblies[batch]?.buffer == buffer }
        if let ahead = lookahead, ahead.id == id { return ahead.assemblies[batch]?.buffer == buffer }
        return false
    }

    /// A worker answered (or dropped) a task that wrote into `buffer`; when it belongs to the current stream
    /// (`owns`), the batch's assembly counts it and keeps the first failure.
    func taskFinished(id: Int, batch: Int, buffer: Int, failure: ErrorReport?) {
        buffers.release(buffer)
        guard owns(id: id, batch: batch, buffer: buffer) else { return }
        if id == self.id, var assembly = assemblies[batch] {
            assembly.count(failure)
            assemblies[batch] = assembly
        } else if var ahead = lookahead, var assembly = ahead.assemblies[batch] {
            assembly.count(failure)
            ahead.assemblies[batch] = assembly
            lookahead = ahead
        }
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

    /// Batches of the lookahead decoded and waiting for their epoch to be asked for.
    var readyAhead: Int {
        lookahead?.assemblies.values.filter { $0.remaining == 0 }.count ?? 0
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

    /// Whether this stage has anything left to put on the wire.
    var hasMoreToSend: Bool { phase == .streaming || phase == .ending }
}
