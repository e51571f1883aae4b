import ArgumentParser
import Foundation
import NBLoader
import NBStorage

extension NBServe {
    /// `nb-serve bench`: throughput measurements.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure decode throughput (frames/s, MB/s) along the train plan.",
            discussion: """
                --decode-only decodes and augments frames in one thread, following the plan, then measures \
                the floor on the same frames: decompressing the chunks they need and writing the output once. \
                scripts/bench_decode.py runs it beside noisebase's own __getitem__ on the same files.
                """
        )

        @OptionGroup var loader: LoaderOptions

        @Flag(help: "Decode and augment in this process, one thread (no daemon, no sockets).")
        var decodeOnly = false

        @Option(help: "Frames to decode.")
        var frames = 64

        @Flag(help: "Print one JSON object.")
        var json = false

        func validate() throws {
            guard decodeOnly else {
                throw ValidationError("only --decode-only is available: the end-to-end benchmark needs the daemon (nb-serve run), which does not exist yet.")
            }
            guard frames > 0 else { throw ValidationError("--frames must be positive.") }
        }

        func run() throws {
            let (config, sampler) = try loader.load()
            let result: DecodeBenchmark.Result
            do {
                result = try DecodeBenchmark(config: config, sampler: sampler).run(frames: frames, epoch: loader.epoch)
            } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
            if json {
                let object: JSONValue = .object([
                    "frames": .int(Int64(result.frames)),
                    "seconds": .double(result.seconds),
                    "frames_per_s": .double(result.framesPerSecond),
                    "mb_per_s": .double(result.megabytesPerSecond),
                    "floor_frames_per_s": .double(result.floorFramesPerSecond),
                    "times_floor": .double(result.timesFloor),
                ])
                print(object.description)
            } else {
                print(String(format: "decode: %d frames in %.3f s: %.1f frames/s, %.1f MB/s", result.frames, result.seconds, result.framesPerSecond, result.megabytesPerSecond))
                print(String(format: "floor:  %.1f frames/s (decompress needed chunks + write output once); decode takes %.2f× the floor", result.floorFramesPerSecond, result.timesFloor))
            }
        }
    }
}
