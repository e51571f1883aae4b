import ArgumentParser
import Foundation
import NBClient
import NBDaemon
import NBLoader
import NBStorage
import NBVocabulary

extension NBServe {
    /// `nb-serve bench`: throughput measurements.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure throughput: end to end through the daemon's sockets, or decoding alone.",
            discussion: """
                By default starts the daemon (with --workers worker processes), pulls --batches batches of \
                the train plan over the real rank-0 socket, and reports frames/s, MB/s, CPU seconds per frame \
                (daemon and workers), time to the first batch (from the daemon's start, and from the request \
                once the daemon has decoded ahead, as for a trainer that asks after building its model), the \
                gap between the last batch of an epoch and the first of the next (asked for at once) against \
                the median interval between batches, and peak RSS (daemon + workers). \
                --decode-only decodes and augments frames in one thread, following the plan, then measures \
                the floor on the same frames: decompressing the chunks they need and writing the output once; \
                --rounds times, alternating, reporting each one's fastest round; --orientation times one \
                orientation alone. \
                scripts/bench_decode.py runs it beside noisebase's own __getitem__ on the same files.
                """
        )

        @OptionGroup var loader: LoaderOptions

        @Flag(help: "Decode and augment in this process, one thread (no daemon, no sockets).")
        var decodeOnly = false

        @Option(help: "Frames to decode (--decode-only).")
        var frames = 64

        @Option(help: "Timed rounds of decode and floor, alternating; the fastest of each counts (--decode-only).")
        var rounds = 5

        @Option(help: "Augment every frame with this orientation (0-7; 7 is the identity) instead of the plan's (--decode-only).")
        var orientation: Int?

        @Option(help: "Batches to pull (end to end).")
        var batches = 64

        @Option(help: "Worker processes (end to end; default: the config's num_workers).")
        var workers: Int?

        @Option(help: "How batches reach this process (end to end): shm, as same-host trainers read them, or zmq frames.")
        var transport: BenchTransport = .shm

        @Flag(help: "Print one JSON object.")
        var json = false

        func validate() throws {
            guard frames > 0, batches > 0, rounds > 0 else { throw ValidationError("--frames, --batches and --rounds must be positive.") }
            if let workers, workers < 1 { throw ValidationError("--workers must be at least 1.") }
            if let orientation, !(0..<FlipRotate.count).contains(orientation) { throw ValidationError("--orientation must be 0-7.") }
            if orientation != nil && !decodeOnly { throw ValidationError("--orientation needs --decode-only.") }
        }

        func run() throws {
            guard decodeOnly else { return try endToEnd() }
            let (config, sampler) = try loader.load()
            let result: DecodeBenchmark.Result
            do {
                result = try DecodeBenchmark(config: config, sampler: sampler).run(frames: frames, epoch: loader.epoch, rounds: rounds, orientation: orientation)
            } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
            if json {
                let object: JSONValue = .object([
                    "frames": .int(Int64(result.frames)),
                    "rounds": .int(Int64(rounds)),
                    "orientation": orientation.map { .int(Int64($0)) } ?? .string("plan"),
                    "seconds": .double(result.seconds),
                    "frames_per_s": .double(result.framesPerSecond),
                    "mb_per_s": .double(result.megabytesPerSecond),
                    "floor_frames_per_s": .double(result.floorFramesPerSecond),
                    "times_floor": .double(result.timesFloor),
                ])
                print(object.description)
            } else {
                print(String(format: "decode: %d frames in %.3f s (fastest of %d rounds): %.1f frames/s, %.1f MB/s", result.frames, result.seconds, rounds, result.framesPerSecond, result.megabytesPerSecond))
                print(String(format: "floor:  %.1f frames/s (decompress needed chunks + write output once); decode takes %.2f× the floor", result.floorFramesPerSecond, result.timesFloor))
            }
        }
    
        /// Starts the daemon and pulls batches over the rank-0 socket like a trainer.
        private func endToEnd() throws {
            _ = try loader.load()
            let daemon = try ChildDaemon(executable: Run.executablePath(), config: loader.config, workers: workers)
            let client = try DaemonClient(control: daemon.control, endpointTemplate: daemon.endpoint)
            defer { client.close() }
            let start = Date()
            var firstBatch: Date?
            var last = Date()
            var received = 0
            var frames = 0
            var bytes = 0
            var peakRSS = 0.0
            var arrivals: [(epoch: Int, time: Date)] = []
            var daemonCPUAtFirst: Double?
            var daemonCPUAtLast: Double?
            var requested = Date()
            do {
                try client.waitUntilReady(timeout: 60, daemon: daemon.pid)
                if transport == .shm {
                    guard let status = try client.request(["cmd": "status"]), let path = status["shm_socket"] as? String else {
                        throw DaemonError("the daemon offers no shared-memory transport (serve.shm_socket)")
                    }
                    try client.openSession(rank: 0, path: path)
                }
                try waitForLookahead(client)
                requested = Date()
                var epoch = loader.epoch
                while received < batches {
                    let count = try client.consume(rank: 0, stage: "train", epoch: epoch) { message in
                        guard let header = message.batch else { return true }
                        arrivals.append((header.epoch, Date()))
                        received += 1
                        if firstBatch == nil {
                            firstBatch = Date()
                            daemonCPUAtFirst = ProcessCPU.seconds(pid: daemon.pid)
                        } else {
                            frames += header.sequences.count
                            bytes += message.byteCount
                        }
                        last = Date()
                        if received % 16 == 0, let status = try? client.request(["cmd": "status"], timeout: 5) {
                            peakRSS = max(peakRSS, (status["rss_mb"] as? NSNumber)?.doubleValue ?? 0)
                        }
                        return received < batches
                    }
                    if count == 0 { throw DaemonError("epoch \(epoch) has no batches") }
                    epoch += 1
                }
                daemonCPUAtLast = ProcessCPU.seconds(pid: daemon.pid)
                if let status = try? client.request(["cmd": "status"], timeout: 5) {
                    peakRSS = max(peakRSS, (status["rss_mb"] as? NSNumber)?.doubleValue ?? 0)
                }
            } catch {
                _ = daemon.stop(client: client)
                printError("error: \(error)")
                throw ExitCode.failure
            }
            let exitStatus = daemon.stop(client: client)
            var usage = rusage()
            getrusage(RUSAGE_CHILDREN.rawValue, &usage)
            let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            // Throughput counts from the first batch on, so start-up is reported separately.
            let seconds = max(last.timeIntervalSince(firstBatch ?? start), 1e-9)
            let totalFrames = max(frames, 1)
            let timing = BatchTiming(arrivals)
            let firstAfterReady = arrivals.first.map { $0.time.timeIntervalSince(requested) } ?? 0
            let result: JSONValue = .object([
                "batches": .int(Int64(received)),
                "frames_per_s": .double(Double(frames) / seconds),
                "mb_per_s": .double(Double(bytes) / 1e6 / seconds),
                "cpu_s_per_frame": .double(cpu / Double(totalFrames)),
                "first_batch_s": .double((firstBatch ?? start).timeIntervalSince(start)),
                "first_batch_after_ready_s": .double(firstAfterReady),
                "transport": .string(transport.rawValue),
                // The daemon process alone (its loop and libzmq's threads; workers are other processes).
                "daemon_cpu_ms_per_frame": .double(1000 * max(0, (daemonCPUAtLast ?? 0) - (daemonCPUAtFirst ?? 0)) / Double(totalFrames)),
                "batch_interval_s": .double(timing.medianInterval),
                "epoch_gap_s": timing.largestGap.map { .double($0) } ?? .null,
                "peak_rss_mb": .double(peakRSS),
                "workers": .int(Int64(workers ?? -1)),
            ])
            if json {
                print(result.description)
            } else {
                print(String(format: "end to end: %d batches, %.1f frames/s, %.1f MB/s, %.4f CPU s/frame, first batch after %.2f s, peak RSS %.0f MiB",
                             received, Double(frames) / seconds, Double(bytes) / 1e6 / seconds, cpu / Double(totalFrames),
                             (firstBatch ?? start).timeIntervalSince(start), peakRSS))
                print(String(format: "transport %@: the daemon's own CPU %.3f ms per frame (workers excluded)", transport.rawValue,
                             1000 * max(0, (daemonCPUAtLast ?? 0) - (daemonCPUAtFirst ?? 0)) / Double(totalFrames)))
                print(String(format: "first batch %.3f s after the request (daemon ready, decoded ahead); batch interval %.4f s (median)%@",
                             firstAfterReady, timing.medianInterval,
                             timing.largestGap.map { String(format: ", largest gap between epochs %.4f s", $0) } ?? ", no epoch boundary crossed"))
            }
            if !exitStatus.isClean {
                printError("error: the daemon \(exitStatus)")
                throw ExitCode.failure
            }
        }

        /// Waits (bounded) until the daemon reports the first batch of its training lookahead decoded, as a
        /// trainer that asks after building its model finds it.
        private func waitForLookahead(_ client: DaemonClient) throws {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                guard let status = try client.request(["cmd": "status"], timeout: 5),
                      let rank = (status["ranks"] as? [[String: Any]])?.first, let train = rank["train"] as? [String: Any]
                else { return }
                if let ahead = train["ahead"] as? [String: Any], (ahead["ready"] as? Int ?? 0) > 0 { return }
                // A bounded pause between two status requests, so the wait does not spin the daemon's loop.
                _ = poll(nil, 0, 20)
            }
        }
    }
}

/// `bench --transport`.
enum BenchTransport: String, ExpressibleByArgument, CaseIterable {
    case shm, zmq
}

/// CPU time of one process (user + system, its threads included, its children not), from /proc.
enum ProcessCPU {
    static func seconds(pid: pid_t) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { return nil }
        // Fields after the command name: state is field 3; utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// When batches arrived: the median interval between consecutive batches of an epoch, and the largest gap
/// between the last batch of an epoch and the first of the next.
struct BatchTiming {
    var medianInterval: Double = 0
    var largestGap: Double?

    init(_ arrivals: [(epoch: Int, time: Date)]) {
        var intervals: [Double] = []
        for (previous, next) in zip(arrivals, arrivals.dropFirst()) {
            let seconds = next.time.timeIntervalSince(previous.time)
            if previous.epoch == next.epoch {
                intervals.append(seconds)
            } else {
                largestGap = max(largestGap ?? 0, seconds)
            }
        }
        intervals.sort()
        if !intervals.isEmpty { medianInterval = intervals[intervals.count / 2] }
    }
}
