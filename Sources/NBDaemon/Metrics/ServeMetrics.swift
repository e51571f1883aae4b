import NBVocabulary
import Prometheus

/// The daemon's metrics, in swift-prometheus' registry, named after Prometheus' conventions: `nbserve_`
/// prefix, base units (seconds, bytes), `_total` on counters, and `rank`/`stage` labels on what belongs
/// to one rank's stream. The main loop updates them; the metrics endpoint's thread reads the registry.
/// README "Operations" lists them with their meaning.
final class ServeMetrics {
    let registry = PrometheusCollectorRegistry()

    /// One (rank, stage) stream's series.
    struct StreamSeries {
        let batchesSent: Counter
        let framesSent: Counter
        let bytesSent: Counter
        let batchesConsumed: Gauge
        let batchesSentInEpoch: Gauge
        let epoch: Gauge
        let epochBatches: Gauge
        let ready: Gauge
        let trainerWait: ValueHistogram
        let trainerBusy: Counter
        let stall: Gauge
        let decode: ValueHistogram
        let decodeErrors: Counter
        let crashErrors: Counter
    }

    private var series: [Int: (train: StreamSeries, val: StreamSeries)] = [:]
    let heldLeases: [Int: Gauge]
    let connectedTrainers: [Int: Gauge]
    let workerRestarts: Counter
    let workers: Gauge
    let daemonResident: Gauge
    let workersResident: Gauge
    let sharedMemory: Gauge
    let startTime: Gauge

    /// Bounds of the trainer-wait histogram, in seconds: a well-fed trainer waits well under a millisecond
    /// per batch, a starved one as long as a batch takes to decode; about 1.5× apart where most waits fall.
    static let waitBuckets: [Double] = [
        0.0001, 0.0002, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
        0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// Bounds of the per-frame decode-time histogram, in seconds.
    /// Fine enough (about 1.5× apart) that a quantile is not pinned to a bucket edge: a frame takes about a
    /// millisecond at the demo's crop and tens of milliseconds at a real dataset's.
    static let decodeBuckets: [Double] = [
        0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
        0.15, 0.25, 0.5, 1, 2.5, 5,
    ]

    private static func name(_ base: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "nbserve", metricName: base, unitName: unit, helpText: help)
    }

    init(ranks: [Int], sharedMemoryBytes: Int, startTime: Double) {
        let registry = registry
        func streamSeries(rank: Int, stage: Stage) -> StreamSeries {
            let labels = [("rank", String(rank)), ("stage", stage.rawValue)]
            func errors(_ kind: ErrorReport.Kind) -> Counter {
                registry.makeCounter(
                    descriptor: Self.name("errors", "total", "Batches sent as an error message instead of data, by kind: decode (a file's data could not be read or decoded), worker_crash (workers kept dying on the frame)."),
                    labels: labels + [("kind", kind.rawValue)])
            }
            return StreamSeries(
                batchesSent: registry.makeCounter(descriptor: Self.name("batches_sent", "total", "Batches handed to the rank's trainer (ZeroMQ frames or shared-memory leases)."), labels: labels),
                framesSent: registry.makeCounter(descriptor: Self.name("frames_sent", "total", "Frames (one sequence's frame each) in the batches handed to the rank's trainer."), labels: labels),
                bytesSent: registry.makeCounter(descriptor: Self.name("sent_bytes", "total", "Tensor bytes handed to the rank's trainer (over shared memory: the bytes leased)."), labels: labels),
                batchesConsumed: registry.makeGauge(descriptor: Self.name("epoch_batches_consumed", "", "Batches of the current epoch the trainer has acknowledged (at sequence-group boundaries)."), labels: labels),
                batchesSentInEpoch: registry.makeGauge(descriptor: Self.name("epoch_batches_sent", "", "Batches of the current epoch sent so far (nbserve_epoch + this / nbserve_epoch_batches: epochs served, fractional)."), labels: labels),
                epoch: registry.makeGauge(descriptor: Self.name("epoch", "", "The epoch the stream serves (-1 before the first request)."), labels: labels),
                epochBatches: registry.makeGauge(descriptor: Self.name("epoch_batches", "", "Batches in the current epoch for this rank."), labels: labels),
                ready: registry.makeGauge(descriptor: Self.name("ready_batches", "", "Decoded batches not yet sent (the ready queue's depth); over shared memory they are leased at once (see nbserve_held_leases)."), labels: labels),
                trainerWait: registry.makeValueHistogram(
                    descriptor: Self.name("trainer_wait", "seconds", "Time the trainer was blocked waiting for each batch, as the trainer measured and reported it."),
                    labels: labels, buckets: Self.waitBuckets),
                trainerBusy: registry.makeCounter(descriptor: Self.name("trainer_busy_seconds", "total", "Time the trainer spent between batches (training), as it reported it."), labels: labels),
                stall: registry.makeGauge(descriptor: Self.name("data_stall", "ratio", "Share of the current epoch's reported time the trainer waited for data: wait / (wait + busy)."), labels: labels),
                decode: registry.makeValueHistogram(
                    descriptor: Self.name("decode", "seconds", "Worker time to read, decode and augment one frame of one sequence."),
                    labels: labels, buckets: Self.decodeBuckets),
                decodeErrors: errors(.decode), crashErrors: errors(.workerCrash))
        }
        for rank in ranks {
            let train = streamSeries(rank: rank, stage: .train)
            let val = streamSeries(rank: rank, stage: .val)
            for each in [train, val] { each.epoch.set(-1.0) }
            series[rank] = (train, val)
        }
        heldLeases = Dictionary(uniqueKeysWithValues: ranks.map { rank in
            (rank, registry.makeGauge(descriptor: Self.name("held_leases", "", "Shared-memory batches leased to the rank's trainer and not yet released: prefetched in its receive queue, or in use. Over shared memory a decoded batch is leased at once, so this, not nbserve_ready_batches, shows the work done ahead."), labels: [("rank", String(rank))]))
        })
        connectedTrainers = Dictionary(uniqueKeysWithValues: ranks.map { rank in
            (rank, registry.makeGauge(descriptor: Self.name("connected_trainers", "", "Connections to the rank's data socket. Batches go out only while exactly one is connected; more than one for long means two trainers (or a stray client) for one rank."), labels: [("rank", String(rank))]))
        })
        workerRestarts = registry.makeCounter(descriptor: Self.name("worker_restarts", "total", "Worker processes started to replace one that died."))
        workers = registry.makeGauge(descriptor: Self.name("workers", "", "Worker processes running."))
        let resident = Self.name("resident_memory", "bytes", "Resident memory (RSS) of the daemon process and of all its workers; shared batch memory counts in each process that touched it.")
        daemonResident = registry.makeGauge(descriptor: resident, labels: [("process", "daemon")])
        workersResident = registry.makeGauge(descriptor: resident, labels: [("process", "workers")])
        sharedMemory = registry.makeGauge(descriptor: Self.name("shared_memory", "bytes", "Size of the shared batch memory reserved at start-up."))
        sharedMemory.set(Double(sharedMemoryBytes))
        self.startTime = registry.makeGauge(descriptor: Self.name("start_time", "seconds", "When the daemon started, in seconds since the Unix epoch."))
        self.startTime.set(startTime)
    }

    /// The series of one rank's stage (nil for a rank not served here).
    subscript(rank: Int, stage: Stage) -> StreamSeries? {
        guard let pair = series[rank] else { return nil }
        return stage == .train ? pair.train : pair.val
    }
}

extension ServeMetrics.StreamSeries {
    /// A batch went out (as ZeroMQ frames or a lease).
    func sent(frames: Int, bytes: Int) {
        batchesSent.increment()
        framesSent.increment(by: Int64(frames))
        bytesSent.increment(by: Int64(bytes))
    }

    /// An `error` message went out in place of a batch.
    func failed(_ kind: ErrorReport.Kind) {
        switch kind {
        case .decode: decodeErrors.increment()
        case .workerCrash: crashErrors.increment()
        }
    }

    /// What the trainer reported with an `ack`; `stall` is the epoch's share of waiting so far.
    func recordTrainer(waits: [Double], busy: Double, stall: Double?) {
        for wait in waits { trainerWait.record(wait) }
        if busy > 0 { trainerBusy.increment(by: busy) }
        if let stall { self.stall.set(stall) }
    }

    /// The stream's position, refreshed by the loop.
    func refresh(_ stream: StageStream) {
        if stream.phase != .idle {
            epoch.set(Double(stream.epoch))
            epochBatches.set(Double(stream.plans.count))
            batchesConsumed.set(Double(stream.consumed))
            batchesSentInEpoch.set(Double(stream.nextSend))
        }
        ready.set(Double(stream.readyCount))
    }
}
