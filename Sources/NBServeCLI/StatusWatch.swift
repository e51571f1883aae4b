import ArgumentParser
import Foundation
import Glibc
import NBClient

/// `nb-serve ctl status --watch`: the daemon's status redrawn once a second. On a terminal the view is
/// redrawn in place; otherwise each refresh is printed as plain lines (for logs and pipes).
struct StatusWatch {
    let endpoint: String
    let timeout: Double
    let curve: ClientCurve?
    let count: Int?

    /// Per (rank, stage): the last `consumed` and when it was seen, for frames/s and the time left.
    private struct Sample {
        var consumed: Int
        var time: Date
    }

    func run() throws {
        let terminal = isatty(1) != 0
        var previous: [String: Sample] = [:]
        var refreshes = 0
        let client = ControlClient(endpoint: endpoint, timeout: timeout, curve: curve)
        while count.map({ refreshes < $0 }) ?? true {
            let started = Date()
            let lines: [String]
            do {
                lines = view(try client.request(["cmd": "status"]), previous: &previous, now: started)
            } catch {
                lines = ["nb-serve at \(endpoint): \(error)"]
            }
            let text = lines.joined(separator: "\n") + "\n"
            // Home and clear-to-end on a terminal: the view replaces itself without flicker.
            FileHandle.standardOutput.write(Data(((terminal ? "\u{1b}[H\u{1b}[J" : "") + text).utf8))
            refreshes += 1
            guard count.map({ refreshes < $0 }) ?? true else { break }
            let left = 1.0 - Date().timeIntervalSince(started)
            // The refresh period itself: the one place this command waits, between two requests.
            if left > 0 { _ = poll(nil, 0, Int32(left * 1000)) }
        }
    }

    private func view(_ reply: [String: Any], previous: inout [String: Sample], now: Date) -> [String] {
        func number(_ key: String) -> Double { (reply[key] as? NSNumber)?.doubleValue ?? 0 }
        var lines = [String(
            format: "nb-serve pid %d, up %.0f s — %.1f frames/s, %.0f MB/s, RSS %.0f MiB, %d worker restarts",
            reply["pid"] as? Int ?? 0, number("uptime_s"), number("frames_per_s"), number("bytes_per_s") / 1e6,
            number("rss_mb"), reply["worker_restarts"] as? Int ?? 0)]
        let batchSize = reply["batch_size"] as? Int ?? 1
        for rank in reply["ranks"] as? [[String: Any]] ?? [] {
            for stage in ["train", "val"] {
                guard let stream = rank[stage] as? [String: Any], stream["phase"] as? String != "idle" else { continue }
                let key = "\(rank["rank"] ?? "?")/\(stage)/\(stream["stream"] ?? "")"
                let consumed = stream["consumed"] as? Int ?? 0
                let sent = stream["sent"] as? Int ?? 0
                let total = max(stream["batches"] as? Int ?? 0, 1)
                var rate = "—"
                var left = "—"
                if let last = previous[key], now > last.time {
                    let perSecond = Double(consumed - last.consumed) / now.timeIntervalSince(last.time)
                    rate = String(format: "%.1f frames/s", perSecond * Double(batchSize))
                    if perSecond > 0 { left = Self.duration(Double(total - consumed) / perSecond) }
                }
                previous[key] = Sample(consumed: consumed, time: now)
                let transport = rank["transport"] as? String ?? ""
                // The share of this epoch the trainer waited for data, as it reported it with its acks.
                let stall = StatusReport.trainer(stream).map { String(format: "stall %.1f%%", 100 * $0.stall) } ?? "stall —"
                lines.append(String(
                    format: "rank %@ %@ epoch %@ %@ %5.1f%%  %d/%d consumed (%d sent), %@, %@, %@ left, %@%@",
                    "\(rank["rank"] ?? "?")", stage.padding(toLength: 5, withPad: " ", startingAt: 0), "\(stream["epoch"] ?? "")",
                    Self.bar(Double(consumed) / Double(total)), 100 * Double(consumed) / Double(total), consumed, total, sent,
                    rate, stall, left, transport, rank["held_leases"].map { ", \($0) leases held" } ?? ""))
            }
        }
        if lines.count == 1 { lines.append("no trainer has asked for an epoch yet") }
        for rank in reply["ranks"] as? [[String: Any]] ?? [] {
            if let connected = rank["connected"] as? Int, connected > 1 {
                lines.append("rank \(rank["rank"] ?? "?"): \(connected) trainers connected to its socket: sending paused until one remains")
            }
        }
        let workers = reply["workers"] as? [[String: Any]] ?? []
        let busy = workers.filter { $0["state"] as? String == "busy" }.count
        lines.append("workers: \(workers.count) (\(busy) busy), \(reply["workers_starting"] as? Int ?? 0) starting, \(reply["queued_tasks"] as? Int ?? 0) tasks queued")
        for error in (reply["errors"] as? [String] ?? []).suffix(5) { lines.append("error: \(error)") }
        return lines
    }

    /// A 30-cell bar.
    static func bar(_ fraction: Double) -> String {
        let cells = 30
        let filled = Int((min(max(fraction, 0), 1) * Double(cells)).rounded(.down))
        return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: cells - filled) + "]"
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "—" }
        let whole = Int(seconds.rounded())
        return whole >= 3600 ? String(format: "%dh%02dm", whole / 3600, whole % 3600 / 60) : String(format: "%dm%02ds", whole / 60, whole % 60)
    }
}
