import Foundation
import Glibc
import NBSystem

/// The decoding workers and their lifecycle: each slot is `running` a process, or `waiting` to be
/// respawned after a death (with a backoff that grows while workers keep dying without finishing anything),
/// and every dead process is reaped through its pidfd in the daemon's poll set, never by sleeping.
final class WorkerPool {
    enum Slot {
        case running(WorkerProcess)
        /// Dead; a replacement starts at `respawnAt`.
        case waiting(respawnAt: ContinuousClock.Instant)
    }

    private(set) var slots: [Slot]
    /// Processes whose pipes closed but that have not been reaped yet.
    private(set) var exiting: [WorkerProcess] = []
    private(set) var restarts = 0
    /// Deaths since a worker last completed a task: drives the backoff.
    private var consecutiveDeaths = 0
    private let spawn: () throws -> WorkerProcess
    private let log: (String) -> Void

    /// The longest a dead worker's slot waits for its replacement.
    static let maximumBackoff: Duration = .seconds(5)

    init(count: Int, spawn: @escaping () throws -> WorkerProcess, log: @escaping (String) -> Void) throws {
        self.spawn = spawn
        self.log = log
        slots = []
        for _ in 0..<max(1, count) { slots.append(.running(try spawn())) }
    }

    /// The running workers with their slot index.
    var running: [(index: Int, worker: WorkerProcess)] {
        slots.enumerated().compactMap { index, slot in
            if case .running(let worker) = slot { return (index, worker) }
            return nil
        }
    }

    /// A worker finished a task: the pool is healthy again.
    func completed() {
        consecutiveDeaths = 0
    }

    /// The worker in `index` closed its pipe (it died or exited): returns its unfinished tasks, and schedules
    /// its replacement.
    func died(_ index: Int, now: ContinuousClock.Instant = .now) -> [WorkerTask] {
        guard case .running(let worker) = slots[index] else { return [] }
        let lost = worker.outstanding
        worker.close()
        exiting.append(worker)
        consecutiveDeaths += 1
        restarts += 1
        let backoff = Self.backoff(afterDeaths: consecutiveDeaths)
        slots[index] = .waiting(respawnAt: now + backoff)
        log("worker \(worker.pid) closed its pipe with \(lost.count) unfinished tasks; a replacement starts in \(backoff)")
        reapExited()
        return lost
    }

    /// No wait after the first death in a row; then 0.1 s, doubling, at most ``maximumBackoff``.
    static func backoff(afterDeaths deaths: Int) -> Duration {
        guard deaths > 1 else { return .zero }
        let milliseconds = 100 * (1 << min(deaths - 2, 16))
        return min(.milliseconds(milliseconds), maximumBackoff)
    }

    /// Reaps whichever exiting processes have ended, logging how.
    func reapExited() {
        exiting.removeAll { worker in
            guard let exit = worker.reap() else { return false }
            log("worker \(worker.pid) \(exit)")
            return true
        }
    }

    /// Starts the replacements that are due. A failed spawn keeps the slot waiting (retried after the
    /// longest backoff) and is returned as an error for the log.
    func respawnDue(now: ContinuousClock.Instant = .now) -> [Error] {
        var failures: [Error] = []
        for index in slots.indices {
            guard case .waiting(let due) = slots[index], due <= now else { continue }
            do {
                slots[index] = .running(try spawn())
            } catch {
                slots[index] = .waiting(respawnAt: now + Self.maximumBackoff)
                failures.append(error)
            }
        }
        return failures
    }

    /// When the next replacement is due, if any slot waits.
    var nextRespawn: ContinuousClock.Instant? {
        slots.compactMap { slot -> ContinuousClock.Instant? in
            if case .waiting(let due) = slot { return due }
            return nil
        }.min()
    }

    /// Stops every worker: closes their pipes (they exit at end of input), waits for them until `deadline`
    /// through their pidfds, then kills what is left.
    func stop(deadline: ContinuousClock.Instant) {
        for (_, worker) in running {
            worker.close()
            exiting.append(worker)
        }
        slots = slots.map { _ in .waiting(respawnAt: .now + .seconds(1_000_000)) }
        for worker in exiting {
            let milliseconds = Self.milliseconds(until: deadline)
            if ProcessExit.wait(worker.pid, timeoutMilliseconds: milliseconds) == nil {
                kill(worker.pid, SIGKILL)
                _ = ProcessExit.wait(worker.pid, timeoutMilliseconds: 1000)
            }
        }
        exiting.removeAll()
    }

    /// Whole milliseconds from now until `deadline`, 0 when it has passed.
    static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32 {
        let left: Duration = deadline - ContinuousClock.now
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        return Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
