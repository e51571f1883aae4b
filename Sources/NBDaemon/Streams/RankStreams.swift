import NBLoader
import NBVocabulary

/// A rank's two streams, one per stage, and which of them the rank's data socket carries.
///
/// The socket carries one stage at a time: the stage most recently requested, until its stream's `end`
/// is sent; then the other stage's stream goes on from where it stopped. The paused stream keeps decoding
/// into its own buffers meanwhile, so validation in the middle of a training epoch costs the training stream
/// nothing and a trainer never has to read past more than what was already on its way.
final class RankStreams {
    let rank: Int
    let train: StageStream
    let val: StageStream
    /// The stage most recently requested.
    private(set) var preferred: Stage = .train

    init(rank: Int, trainBuffers: [Int], valBuffers: [Int]) {
        self.rank = rank
        train = StageStream(rank: rank, stage: .train, buffers: trainBuffers)
        val = StageStream(rank: rank, stage: .val, buffers: valBuffers)
    }

    subscript(stage: Stage) -> StageStream {
        stage == .train ? train : val
    }

    /// A trainer asked for `stage`: it goes on the wire first from now on.
    func requested(_ stage: Stage) {
        preferred = stage
    }

    /// The stream whose messages go on the wire now, if either has anything left to send.
    var onWire: StageStream? {
        if self[preferred].hasMoreToSend { return self[preferred] }
        let other = self[preferred.other]
        return other.hasMoreToSend ? other : nil
    }

    /// Both streams, the one on the wire first (the order in which their batches get workers).
    var byPriority: [StageStream] {
        let first = onWire ?? self[preferred]
        return [first, self[first.stage.other]]
    }

    /// The stream that owns `buffer`, if any.
    func stream(owning buffer: Int) -> StageStream? {
        if train.buffers.contains(buffer) { return train }
        if val.buffers.contains(buffer) { return val }
        return nil
    }
}
