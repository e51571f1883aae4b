import Glibc

/// Hands out stream ids (docs/protocol.md section 6): unique within a daemon, and across its restarts,
/// because numbering starts at the daemon's start time in microseconds since the Unix epoch. A message a
/// trainer's receive queue still holds from an abandoned stream, or from a daemon since restarted, can
/// therefore never carry the id of a current stream.
struct StreamIDs {
    private var next: Int

    /// Numbering from `start` (for tests); the daemon uses ``init()``.
    init(start: Int) {
        next = max(1, start)
    }

    init() {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        self.init(start: Int(now.tv_sec) * 1_000_000 + Int(now.tv_nsec) / 1000)
    }

    /// A fresh id.
    mutating func take() -> Int {
        defer { next += 1 }
        return next
    }
}
