import ArgumentParser
import Foundation
import NBLoader
import NBStorage

extension NBServe {
    /// `nb-serve dump`: one batch's tensors as `.npy` files.
    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write one batch's tensors as .npy files: exactly what the daemon sends for that batch.",
            discussion: """
                Writes KEY.npy for every key (buffers and camera), prev_camera.KEY.npy for the previous \
                camera, and frame_index.npy (0-d int64). Exit status 1 when a file cannot be read, 2 on a \
                bad config or a batch index past the end of the epoch.
                """
        )

        @OptionGroup var loader: LoaderOptions

        @Option(help: "Batch index within this rank's epoch.")
        var batch = 0

        @Option(help: "Output directory (created if needed).")
        var out: String

        func run() throws {
            let (config, sampler) = try loader.load()
            let plans = try sampler.batches(epoch: loader.epoch, resume: loader.resume)
            guard batch >= 0, batch < plans.count else {
                printError("error: batch \(batch) is outside this epoch's \(plans.count) batches for rank \(loader.rank)")
                throw ExitCode(2)
            }
            let plan = plans[batch]
            let decoder = FrameDecoder(config: config, batchSize: sampler.batchSize)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: decoder.layout.byteCount, alignment: 64)
            defer { buffer.deallocate() }
            do {
                for (slot, sequence) in plan.sequences.enumerated() {
                    try decoder.decode(sequence: sequence, frame: plan.frameIndex, orientation: plan.orientations[slot], into: buffer, slot: slot)
                }
            } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for spec in decoder.layout.tensors {
                let (shape, bytes) = spec.filled(plan.sequences.count)
                let writer = try NpyWriter(path: "\(out)/\(spec.key).npy", typestr: spec.dataType.littleEndianTypestr, shape: shape)
                try writer.write(UnsafeRawBufferPointer(rebasing: buffer[bytes]))
                try writer.close()
            }
            printError("wrote \(decoder.layout.tensors.count) tensors of epoch \(plan.epoch) batch \(plan.batch) (frame \(plan.frameIndex), sequences \(plan.sequences)) to \(out)")
        }
    }
}
