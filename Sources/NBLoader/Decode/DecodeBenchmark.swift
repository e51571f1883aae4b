import Foundation
import NBStorage

/// Single-thread decode throughput along a loader plan, beside its floor: decompressing the chunks the
/// same frames need and writing the output bytes once.
public struct DecodeBenchmark {
    public struct Result: Sendable {
        public let frames: Int
        public let seconds: Double
        public let outputBytes: Int
        public let floorSeconds: Double

        public var framesPerSecond: Double { Double(frames) / seconds }
        public var megabytesPerSecond: Double { Double(outputBytes) / seconds / 1e6 }
        public var floorFramesPerSecond: Double { Double(frames) / floorSeconds }
        /// How many times slower than the floor the full decode is.
        public var timesFloor: Double { seconds / floorSeconds }
    }

    public let config: LoaderConfig
    public let sampler: VideoSampler

    public init(config: LoaderConfig, sampler: VideoSampler) {
        self.config = config
        self.sampler = sampler
    }

    /// The frames to decode: the plan's batches (epoch after epoch) flattened to (sequence, frame,
    /// orientation), `count` of them; `orientation`, when given, replaces the plan's (to time one
    /// orientation alone).
    public func frames(_ count: Int, epoch: Int, orientation: Int? = nil) throws -> [(sequence: Int, frame: Int, orientation: Int)] {
        var frames: [(Int, Int, Int)] = []
        var current = epoch
        while frames.count < count {
            let plans = try sampler.batches(epoch: current)
            guard !plans.isEmpty else { throw DecodeError.layout(file: config.file, array: "", reason: "the plan has no batches") }
            for plan in plans {
                for slot in plan.sequences.indices where frames.count < count {
                    frames.append((plan.sequences[slot], plan.frameIndex, orientation ?? plan.orientations[slot]))
                }
            }
            current += 1
        }
        return frames
    }

    /// Decodes `count` frames, then measures the floor on the same frames, `rounds` times alternating, and
    /// keeps each one's fastest round: on a shared machine a slow round is interference, not the code, and
    /// alternating exposes both timings to the same conditions. One untimed pass first opens every file and
    /// touches every chunk, so no timing pays for first page faults of the mappings.
    public func run(frames count: Int, epoch: Int = 0, rounds: Int = 5, orientation: Int? = nil) throws -> Result {
        precondition(rounds > 0, "at least one round")
        precondition(orientation.map { (0..<FlipRotate.count).contains($0) } ?? true, "orientation 0-7")
        let work = try frames(count, epoch: epoch, orientation: orientation)
        let decoder = FrameDecoder(config: config, batchSize: 1)
        let batch = UnsafeMutableRawBufferPointer.allocate(byteCount: decoder.layout.byteCount, alignment: 64)
        defer { batch.deallocate() }
        for item in work {
            try decoder.decode(sequence: item.sequence, frame: item.frame, orientation: item.orientation, into: batch, slot: 0)
        }

        var decodeSeconds = Double.infinity
        var floorSeconds = Double.infinity
        for _ in 0..<rounds {
            let start = DispatchTime.now().uptimeNanoseconds
            for item in work {
                try decoder.decode(sequence: item.sequence, frame: item.frame, orientation: item.orientation, into: batch, slot: 0)
            }
            decodeSeconds = min(decodeSeconds, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)

            let floorStart = DispatchTime.now().uptimeNanoseconds
            for item in work {
                let group = try decoder.file(item.sequence).group
                for stored in decoder.storedArrays(frame: item.frame) {
                    let array = try group.array(stored.rawValue)
                    var region = [item.frame..<(item.frame + 1), 0..<stored.channels, 0..<config.source.crop, 0..<config.source.crop]
                    if stored.perSample { region.append(0..<config.samples) }
                    _ = try array.decodeChunks(intersecting: region)
                }
                batch.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: item.frame))
            }
            floorSeconds = min(floorSeconds, Double(DispatchTime.now().uptimeNanoseconds - floorStart) / 1e9)
        }
        return Result(frames: count, seconds: decodeSeconds, outputBytes: count * decoder.layout.byteCount, floorSeconds: floorSeconds)
    }
}
