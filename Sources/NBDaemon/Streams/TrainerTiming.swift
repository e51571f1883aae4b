/// What a trainer reported of its time on one epoch of a stage: how long it waited for each batch and how
/// long it spent between batches (training). Reported with its acknowledgements (docs/protocol.md
/// section 5, `ack`), measured in the trainer's own process, where the waiting happens.
struct TrainerTiming: Equatable {
    /// Seconds blocked waiting for batches, and batches whose wait was reported.
    private(set) var waitSeconds = 0.0
    private(set) var waits = 0
    /// Seconds spent between batches.
    private(set) var busySeconds = 0.0

    /// The share of the reported time the trainer waited for data ("data stall"); nil before any report.
    var stall: Double? {
        let total = waitSeconds + busySeconds
        return total > 0 ? waitSeconds / total : nil
    }

    mutating func add(waits reported: [Double], busy: Double) {
        waitSeconds += reported.reduce(0, +)
        waits += reported.count
        busySeconds += busy
    }
}
