import ArgumentParser
import Foundation
import NBClient
import NBDaemon
import NBDemo
import NBLoader
import NBSystem
import NBTransport

extension NBServe {
    /// `nb-serve demo`: the whole product on a small built-in dataset, over the real sockets.
    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate the demo dataset if absent, start the daemon, consume one epoch over its sockets, stop.",
            discussion: """
                The demo dataset (8 small sequences of a ray-cast scene: a camera orbiting spheres on a \
                checkered ground under a sun and a sky) is written natively the first time, as Noisebase \
                Sample Training Format v1 (Zarr v2 in ZIP files). Without --config the built-in demo config \
                is written to DIR/demo.yaml and the data to DIR (--dir; default \
                $XDG_CACHE_HOME/nb-serve/demo). Prints what was received and the throughput; exits \
                non-zero if anything fails.
                """
        )

        @Option(help: "A demo config (its src: section sets the dataset's geometry). Default: the built-in one.")
        var config: String?

        @Option(help: ArgumentHelp("Directory for the built-in config and its dataset (ignored with --config).", valueName: "DIR"))
        var dir: String?

        @Option(help: "Worker processes (default: the config's num_workers).")
        var workers: Int?

        @Flag(help: "Write the dataset (again, even if present) and exit without starting the daemon.")
        var generateOnly = false

        @Flag(help: "Write the dataset again even if it is present.")
        var regenerate = false

        @Option(help: "Seed of the generated dataset (the same seed gives the same bytes).")
        var seed: UInt64 = 7

        /// The built-in demo config: config/demo.yaml of the source tree, its data beside it.
        static let builtInConfig = """
            # nb-serve's built-in demo dataset (written by `nb-serve demo`): 8 small ray-cast sequences.
            data_path: .

            src:
              sequences: 8
              files: scene{index:04d}.zip
              frames_per_sequence: 8
              crop: 64
              samples: 8
              rendering_height: 180
              rendering_width: 320

            buffers: [normal, motion, depth, w_normal, w_motion, w_position, diffuse, color, reference]
            samples: 8
            flip_rotate: true
            batch_size: 2
            num_workers: 2
            shuffle: true
            drop_last: true
            val_split: 0.25
            seed: 42
            stage: train

            serve:
              world_size: 1
              endpoint: "tcp://127.0.0.1:{5560+rank}"
              prefetch: 4

            """

        func run() throws {
            let configPath: String
            do { configPath = try config ?? Self.writeBuiltInConfig(directory: dir) } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
            let loaded: LoaderConfig
            do { loaded = try LoaderConfig.load(path: configPath) } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            try generate(loaded, always: generateOnly || regenerate)
            if generateOnly { return }

            let daemon = try ChildDaemon(executable: Run.executablePath(), config: configPath, workers: workers)
            let client = try DaemonClient(control: daemon.control, endpointTemplate: daemon.endpoint)
            defer { client.close() }
            var status = ProcessExit.exited(0)
            do {
                try client.waitUntilReady(timeout: 60, daemon: daemon.pid)
                // Read batches as same-host trainers do: straight from the daemon's shared memory.
                if let status = try client.request(["cmd": "status"]), let path = status["shm_socket"] as? String {
                    try client.openSession(rank: 0, path: path)
                }
                try consumeEpoch(client, loaded)
            } catch {
                status = daemon.stop(client: client)
                printError("error: \(error)")
                throw ExitCode.failure
            }
            status = daemon.stop(client: client)
            guard status.isClean else {
                printError("demo: the daemon \(status)")
                throw ExitCode.failure
            }
            print("demo: daemon stopped cleanly")
        }

        /// Writes the built-in config to DIR/demo.yaml (DIR created if needed) and returns its path.
        static func writeBuiltInConfig(directory: String?) throws -> String {
            let environment = ProcessInfo.processInfo.environment
            let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
                ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.cache"
            let directory = directory ?? cache + "/nb-serve/demo"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let path = directory + "/demo.yaml"
            try builtInConfig.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        private func consumeEpoch(_ client: DaemonClient, _ config: LoaderConfig) throws {
            let start = Date()
            var first: Date?
            var frames = 0
            var bytes = 0
            var errors = 0
            let batches = try client.consume(rank: 0, stage: "train", epoch: 0) { received in
                switch received.header {
                case .batch, .lease:
                    guard let header = received.batch else { return true }
                    if first == nil {
                        first = Date()
                        print("demo: first batch after \(String(format: "%.2f", first!.timeIntervalSince(start))) s; its tensors:")
                        for tensor in header.tensors {
                            print("  \(tensor.name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(tensor.dataType.littleEndianTypestr) \(tensor.shape)")
                        }
                    }
                    if header.batch < 3 || header.frameIndex == 0 {
                        print("demo: batch \(header.batch): frame \(header.frameIndex) of sequences \(header.sequences), orientations \(header.orientations)")
                    }
                    frames += header.sequences.count
                    bytes += received.byteCount
                case .error(let header):
                    errors += 1
                    print("demo: batch \(header.batch) failed: \(header.file ?? "") \(header.array ?? "") \(header.chunk ?? ""): \(header.reason)")
                case .end:
                    break
                }
                return true
            }
            let seconds = Date().timeIntervalSince(start)
            print(String(format: "demo: epoch 0 complete: %d batches, %d frames, %.1f MB in %.2f s — %.1f frames/s, %.1f MB/s (including start-up)",
                         batches, frames, Double(bytes) / 1e6, seconds, Double(frames) / seconds, Double(bytes) / 1e6 / seconds))
            if errors > 0 { throw DaemonError("\(errors) batches failed") }
        }

        /// Writes the demo dataset natively when `always` or when a sequence file is missing.
        private func generate(_ config: LoaderConfig, always: Bool) throws {
            let source = config.source
            let paths = (0..<source.sequences).map(config.sequencePath)
            guard always || !paths.allSatisfy(FileManager.default.fileExists(atPath:)) else { return }
            print("demo: writing the demo dataset (\(source.sequences) sequences of a ray-cast scene) to \(config.dataPath)")
            let started = Date()
            do {
                try FileManager.default.createDirectory(atPath: config.dataPath, withIntermediateDirectories: true)
                let geometry = DemoGeometry(
                    frames: source.framesPerSequence, crop: source.crop, samples: source.samples,
                    height: source.renderingHeight, width: source.renderingWidth)
                try DemoDataset.write(paths: paths, geometry: geometry, seed: seed)
            } catch {
                printError("error: writing the demo dataset failed: \(error)")
                throw ExitCode.failure
            }
            print(String(format: "demo: dataset written in %.2f s", Date().timeIntervalSince(started)))
        }
    }
}
