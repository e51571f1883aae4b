import ArgumentParser
import Foundation
import NBDaemon
import NBLoader
import NBTransport

extension NBServe {
    /// `nb-serve demo`: the whole product on a small built-in dataset, over the real sockets.
    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate the demo dataset if absent, start the daemon, consume one epoch over its sockets, stop.",
            discussion: """
                The demo dataset (config/demo.yaml: 8 small ray-cast sequences) is generated with \
                Tests/fixtures/make_dataset.py (zarr-python) the first time. Prints what was received and \
                the throughput; exits non-zero if anything fails.
                """
        )

        @Option(help: "The demo config.")
        var config = "config/demo.yaml"

        @Option(help: "Worker processes (default: the config's num_workers).")
        var workers: Int?

        func run() throws {
            let loaded: LoaderConfig
            do { loaded = try LoaderConfig.load(path: config) } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            try generateIfAbsent(loaded)

            let daemon = try ChildDaemon(executable: Run.executablePath(), config: config, workers: workers)
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

        /// Writes the demo dataset with the repository's generator when its first sequence is missing.
        private func generateIfAbsent(_ config: LoaderConfig) throws {
            guard !FileManager.default.fileExists(atPath: config.sequencePath(0)) else { return }
            let script = "Tests/fixtures/make_dataset.py"
            guard FileManager.default.fileExists(atPath: script) else {
                printError("error: the demo dataset is missing (\(config.sequencePath(0))) and \(script) is not here to generate it; run from the repository root")
                throw ExitCode.failure
            }
            let source = config.source
            print("demo: generating the demo dataset in \(config.dataPath) (a ray-cast scene; once)")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [
                "python3", script, config.dataPath, "--sequences", String(source.sequences), "--frames", String(source.framesPerSequence),
                "--crop", String(source.crop), "--samples", String(source.samples), "--height", String(source.renderingHeight),
                "--width", String(source.renderingWidth), "--seed", "7", "--reference-samples", "8", "--quiet",
            ]
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                printError("error: generating the demo dataset failed (python3 with zarr<3 and numcodecs is needed: scripts/setup.sh installs them)")
                throw ExitCode.failure
            }
        }
    }
}
