import ArgumentParser
import Foundation
import NBClient
import NBDaemon
import NBLoader
import NBTransport

extension NBServe {
    /// `nb-serve ctl`: talk to a running daemon.
    struct Ctl: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Control a running daemon: status, checkpoint or stop.",
            discussion: """
                status: epoch and batch per rank (produced, sent, consumed), queue depths, the trainer's \
                reported wait and stall, frames/s, bytes/s, workers, errors, memory, the metrics URL. checkpoint: write the resume state to serve.state_dir (prints path \
                and state). stop: shut down cleanly. Without --control or --config the default control \
                endpoint is used. A daemon whose tcp endpoints use CURVE needs --server-key (its public \
                certificate) and --client-key (an authorised key pair). Exit status 1 when the daemon does not \
                answer within --timeout. `status --watch` redraws a live view once a second until interrupted: \
                per rank and stage a progress bar of the epoch (consumed of its batches), frames/s, stall %, \
                the time left at that rate, workers and errors; plain lines when stdout is not a terminal.
                """
        )

        enum Action: String, ExpressibleByArgument, CaseIterable {
            case status, checkpoint, stop
        }

        @Argument(help: "status, checkpoint or stop.")
        var action: Action

        @Option(help: "The daemon's control endpoint, e.g. ipc:///run/nb-serve/control.sock.")
        var control: String?

        @Option(help: "Take the control endpoint from this config.")
        var config: String?

        @Flag(help: "Print the daemon's JSON reply.")
        var json = false

        @Option(help: "Seconds to wait for the daemon.")
        var timeout = 5.0

        @Flag(help: "With status: redraw a live view once a second until interrupted.")
        var watch = false

        @Option(help: ArgumentHelp("With --watch: stop after this many refreshes (default: until interrupted).", valueName: "count"))
        var count: Int?

        func validate() throws {
            if watch && action != .status { throw ValidationError("--watch goes with status.") }
            if watch && json { throw ValidationError("--watch shows a live view; --json prints one reply.") }
            if count != nil && !watch { throw ValidationError("--count goes with --watch.") }
            if let count, count < 1 { throw ValidationError("--count must be at least 1.") }
        }

        @OptionGroup var curve: CurveClientOptions

        func run() throws {
            let endpoint: String
            if let control {
                endpoint = control
            } else if let config {
                do { endpoint = Daemon.controlEndpoint(try LoaderConfig.load(path: config)) } catch {
                    printError("error: \(error)")
                    throw ExitCode(2)
                }
            } else {
                endpoint = "ipc://" + Daemon.defaultRuntimeDirectory() + "/control.sock"
            }
            if watch { return try StatusWatch(endpoint: endpoint, timeout: timeout, curve: try curve.load(), count: count).run() }
            let reply: [String: Any]
            do {
                let keys = try curve.load()
                reply = try ControlClient(endpoint: endpoint, timeout: timeout, curve: keys).request(["cmd": action.rawValue])
            } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
            if json || action != .status {
                let data = try JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys, .prettyPrinted])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(StatusReport.text(reply))
            }
            if reply["ok"] as? Bool != true { throw ExitCode.failure }
        }
    }
}

/// `ctl status` for people.
enum StatusReport {
    /// What the trainer reported of a stream's epoch (its `trainer` object), once it has reported anything.
    static func trainer(_ stream: [String: Any]) -> (wait: Double, busy: Double, stall: Double)? {
        guard let timing = stream["trainer"] as? [String: Any], let stall = timing["stall"] as? NSNumber else { return nil }
        return ((timing["wait_s"] as? NSNumber)?.doubleValue ?? 0, (timing["busy_s"] as? NSNumber)?.doubleValue ?? 0, stall.doubleValue)
    }

    static func text(_ reply: [String: Any]) -> String {
        func number(_ key: String) -> Double { (reply[key] as? NSNumber)?.doubleValue ?? 0 }
        var lines = [String(
            format: "nb-serve pid %d, up %.0f s: %.1f frames/s, %.1f MB/s, RSS %.0f MiB (daemon + workers), %d worker restarts",
            (reply["pid"] as? Int) ?? 0, number("uptime_s"), number("frames_per_s"), number("bytes_per_s") / 1e6, number("rss_mb"),
            (reply["worker_restarts"] as? Int) ?? 0)]
        for rank in reply["ranks"] as? [[String: Any]] ?? [] {
            let wire = (rank["on_wire"] as? String).map { "sending \($0)" } ?? "idle"
            lines.append("rank \(rank["rank"] ?? "?") \(rank["endpoint"] ?? ""): \(wire)")
            for stage in ["train", "val"] {
                guard let stream = rank[stage] as? [String: Any], stream["phase"] as? String != "idle" else { continue }
                let trainer = Self.trainer(stream).map {
                    String(format: "; trainer waited %.2f s, busy %.2f s: stall %.1f%%", $0.wait, $0.busy, 100 * $0.stall)
                } ?? ""
                lines.append("  \(stage) epoch \(stream["epoch"] ?? "") (stream \(stream["stream"] ?? ""), \(stream["phase"] ?? "")) — produced \(stream["produced"] ?? 0), sent \(stream["sent"] ?? 0), consumed \(stream["consumed"] ?? 0) of \(stream["batches"] ?? 0); \(stream["ready"] ?? 0) ready\(trainer)")
            }
        }
        for worker in reply["workers"] as? [[String: Any]] ?? [] {
            lines.append("worker \(worker["pid"] ?? ""): \(worker["state"] ?? ""), \(worker["completed"] ?? 0) frames done")
        }
        if let metrics = reply["metrics"] as? String { lines.append("metrics: \(metrics)") }
        if let state = reply["resume_state"] as? [String: Any] {
            lines.append("resume state: start_epoch_idx \(state["start_epoch_idx"] ?? ""), start_sequence_idx \(state["start_sequence_idx"] ?? "")")
        }
        for error in reply["errors"] as? [String] ?? [] { lines.append("error: \(error)") }
        return lines.joined(separator: "\n")
    }
}
