import NBLoader

/// How far one rank's training stream has been consumed: what a resume state is computed from.
struct TrainProgress: Equatable {
    var epoch: Int
    /// Batches acknowledged, counted from the epoch stream's first batch.
    var consumed: Int
    /// Batches in the epoch stream.
    var batches: Int
    /// The state the stream was resumed from, if any.
    var resume: ResumeState?

    /// noisebase's `{start_epoch_idx, start_sequence_idx}` of the first sequence group that not every rank
    /// has fully consumed, in the oldest train epoch being served; `fallback` (the state the daemon started
    /// from) while not every rank has a training stream. Positions are whole sequence groups: a group is
    /// `framesPerSequence` batches on each rank and `sequencesPerGroup` sequences of the epoch's order.
    static func resumePosition(
        _ progress: [TrainProgress], rankCount: Int, framesPerSequence: Int, sequencesPerGroup: Int, fallback: ResumeState?
    ) -> ResumeState? {
        guard progress.count == rankCount, let epoch = progress.map(\.epoch).min() else { return fallback }
        let current = progress.filter { $0.epoch == epoch }
        if current.count == progress.count && current.allSatisfy({ $0.consumed >= $0.batches }) {
            return ResumeState(startEpoch: epoch + 1, startSequence: 0)
        }
        let groups = current.map { $0.consumed / max(1, framesPerSequence) }.min() ?? 0
        let base = current.first?.resume.flatMap { $0.startEpoch == epoch ? $0.startSequence : nil } ?? 0
        return ResumeState(startEpoch: epoch, startSequence: base + groups * sequencesPerGroup)
    }
}
