import ArgumentParser
import NBLoader
import NBStorage
import NBVocabulary

extension NBServe {
    /// `nb-serve plan`: the batches one rank receives in one epoch, as JSON lines.
    struct Plan: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the batch plan of one epoch for one rank: one JSON object per batch.",
            discussion: """
                Each line is {"epoch": E, "batch": B, "frame_index": F, "sequences": [global sequence \
                indices], "orientations": [0-7 each]} — the same split, order and augmentation as \
                noisebase's TrainingSampleLoader_v1 with the same config and seed. Exit status 2 on a bad config.
                """
        )

        @OptionGroup var loader: LoaderOptions

        func run() throws {
            let (_, sampler) = try loader.load()
            var output = ""
            for plan in try sampler.batches(epoch: loader.epoch, resume: loader.resume) {
                let line: JSONValue = .object([
                    "epoch": .int(Int64(plan.epoch)),
                    "batch": .int(Int64(plan.batch)),
                    "frame_index": .int(Int64(plan.frameIndex)),
                    "sequences": .array(plan.sequences.map { .int(Int64($0)) }),
                    "orientations": .array(plan.orientations.map { .int(Int64($0)) }),
                ])
                output += line.description + "\n"
                if output.utf8.count > 1 << 16 {
                    print(output, terminator: "")
                    output = ""
                }
            }
            print(output, terminator: "")
        }
    }
}
