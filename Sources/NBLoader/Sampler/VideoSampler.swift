import NBVocabulary

/// Where a resumed epoch starts: noisebase's `{'start_epoch_idx': …, 'start_sequence_idx': …}`.
public struct ResumeState: Sendable, Equatable, Codable {
    public var startEpoch: Int
    /// Index into the epoch's shuffled list of stage positions, before rank sharding.
    public var startSequence: Int

    public init(startEpoch: Int, startSequence: Int) {
        self.startEpoch = startEpoch
        self.startSequence = startSequence
    }

    enum CodingKeys: String, CodingKey {
        case startEpoch = "start_epoch_idx"
        case startSequence = "start_sequence_idx"
    }
}

/// One lockstep batch: frame `frameIndex` of each sequence in the group.
public struct BatchPlan: Sendable, Equatable {
    public let epoch: Int
    /// Index of this batch in the rank's stream for the epoch (0 at the first batch yielded).
    public let batch: Int
    public let frameIndex: Int
    /// Positions in the stage's sequence list (noisebase's `sequence_idx`).
    public let positions: [Int]
    /// Global sequence numbers (the `{index}` of `src.files`).
    public let sequences: [Int]
    /// Flip/rotate orientation per sequence, 0–7 (7 is the identity).
    public let orientations: [Int]
}

/// noisebase's validation split plus its `VideoSampler`, for one stage and one rank: which sequences,
/// in which order, with which augmentation, in lockstep batches. A pure function of the config, the
/// epoch, the rank and the world size, so every rank and every daemon derives the same plan.
public struct VideoSampler: Sendable {
    public let stage: Stage
    /// Global sequence numbers of the stage, in noisebase's order (positions index this).
    public let stageSequences: [Int]
    public let framesPerSequence: Int
    public let rank: Int
    public let worldSize: Int
    /// Sequences per batch on this rank: `batch_size / world_size`.
    public let batchSize: Int
    public let shuffle: Bool
    public let dropLast: Bool
    public let flipRotate: Bool
    let shuffler: Shuffler

    /// `batch_size` must divide by `worldSize` (noisebase silently floors; a mismatch here is almost
    /// always a configuration mistake, so it is an error).
    public init(config: LoaderConfig, stage: Stage, rank: Int = 0, worldSize: Int = 1) throws(ConfigError) {
        guard worldSize >= 1, (0..<worldSize).contains(rank) else {
            throw ConfigError(file: config.file, key: "rank", reason: "rank \(rank) is not in 0..<\(worldSize)")
        }
        guard config.batchSize % worldSize == 0 else {
            throw ConfigError(file: config.file, key: "batch_size", reason: "\(config.batchSize) is not divisible by the world size \(worldSize)")
        }
        do {
            shuffler = try Shuffler(seed: config.seed)
            // TrainingSampleLoader_v1: rng.split(-1, arange(sequences), val_split, shuffle, batch_size)
            var all = Array(0..<config.source.sequences)
            let (validation, training) = try shuffler.split(-1, &all, config.valSplit, shuffled: config.shuffle, smallest: config.batchSize)
            stageSequences = stage == .train ? training : validation
        } catch {
            throw ConfigError(file: config.file, key: "seed", reason: "\(error)")
        }
        self.stage = stage
        self.rank = rank
        self.worldSize = worldSize
        framesPerSequence = config.source.framesPerSequence
        batchSize = config.batchSize / worldSize
        shuffle = config.shuffle && stage == .train
        dropLast = config.dropLast
        flipRotate = config.flipRotate && stage == .train
    }

    /// The epoch's list of stage positions, shuffled, before resume slicing and sharding.
    public func epochOrder(_ epoch: Int) throws -> [Int] {
        var positions = Array(0..<stageSequences.count)
        if shuffle { try shuffler.shuffle(Int64(epoch), &positions) }
        return positions
    }

    /// This rank's sequence groups (stage positions) for `epoch`, resumed from `resume` when it names
    /// this epoch — exactly `VideoSampler.__iter__`.
    public func sequenceGroups(epoch: Int, resume: ResumeState? = nil) throws -> [[Int]] {
        var order = try epochOrder(epoch)
        let count = order.count
        if let resume, resume.startEpoch == epoch {
            order = Array(order[min(max(resume.startSequence, 0), count)...])
        }
        // global_sequence_idxs[rank : max_sequence_idx : num_replicas], max from the unsliced length.
        let end = min(count / worldSize * worldSize, order.count)
        var mine: [Int] = []
        var index = rank
        while index < end {
            mine.append(order[index])
            index += worldSize
        }
        var groups: [[Int]] = []
        var start = 0
        while start < mine.count {
            let remaining = mine.count - start
            if remaining < batchSize && dropLast { break }
            groups.append(Array(mine[start..<min(start + batchSize, mine.count)]))
            start += batchSize
        }
        return groups
    }

    /// Orientation of the sequence at stage `position` in `epoch`:
    /// `rng.derive(epoch).integers(sequence_idx, 0, 8)`, or 7 (identity) without augmentation.
    public func orientations(epoch: Int, positions: [Int]) throws -> [Int] {
        guard flipRotate else { return positions.map { _ in 7 } }
        let derived = try shuffler.derive(Int64(epoch))
        return try positions.map { Int(try derived.integers(Int64($0), 0, 8)) }
    }

    /// Every batch this rank yields in `epoch`, in order.
    public func batches(epoch: Int, resume: ResumeState? = nil) throws -> [BatchPlan] {
        var plans: [BatchPlan] = []
        for group in try sequenceGroups(epoch: epoch, resume: resume) {
            let sequences = group.map { stageSequences[$0] }
            let orientations = try orientations(epoch: epoch, positions: group)
            for frame in 0..<framesPerSequence {
                plans.append(BatchPlan(
                    epoch: epoch, batch: plans.count, frameIndex: frame, positions: group,
                    sequences: sequences, orientations: orientations))
            }
        }
        return plans
    }

    /// `len(loader)` as noisebase computes it (which can differ from the batches actually yielded).
    public var noisebaseLength: Int {
        var samples = stageSequences.count / worldSize / batchSize
        if samples / worldSize % batchSize != 0 && !dropLast { samples += 1 }
        return samples * framesPerSequence
    }

    /// `batch_sampler.checkpoint(epoch, batch_idx)`: the resume state before training on `batch`,
    /// or nil when `batch` is not at a sequence boundary.
    public func checkpoint(epoch: Int, batch: Int) -> ResumeState? {
        guard batch % framesPerSequence == 0 else { return nil }
        return ResumeState(startEpoch: epoch, startSequence: batch / framesPerSequence * batchSize * worldSize)
    }
}
