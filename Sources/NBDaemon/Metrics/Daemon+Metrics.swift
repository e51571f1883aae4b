import Foundation
import Glibc
import NBLoader
import NBMetrics
import Prometheus

/// The daemon's side of the metrics: the endpoint `serve.metrics` names, and the gauges the loop refreshes.
extension Daemon {
    /// Starts the Prometheus endpoint `serve.metrics` names. The default address is skipped with a log line
    /// when it is taken (another daemon on the host serves its own there); an address the config names
    /// that cannot be bound is a start-up error, as any other endpoint's.
    static func startMetrics(_ address: (MetricsAddress, isDefault: Bool)?, registry: PrometheusCollectorRegistry, file: String) throws -> MetricsEndpoint? {
        guard let (address, isDefault) = address else { return nil }
        do {
            let endpoint = try MetricsEndpoint(address: address, registry: registry)
            log("metrics: Prometheus endpoint on \(endpoint.url)")
            return endpoint
        } catch .addressInUse(let taken) where isDefault {
            log("metrics: the default address \(taken) is in use (another nb-serve on this host?); serving without a metrics endpoint. Set serve.metrics to another address, or \"\" to turn it off", .warning)
            return nil
        } catch {
            throw ConfigError(file: file, key: "serve.metrics", reason: error.description)
        }
    }

    /// `serve.metrics` as an address, and whether it is the default one; nil when the endpoint is off.
    static func metricsAddress(_ config: LoaderConfig) throws -> (MetricsAddress, isDefault: Bool)? {
        switch config.serve.metrics {
        case .some(""):
            return nil
        case .some(let text):
            switch MetricsAddress.parse(text) {
            case .success(let parsed): return (parsed, false)
            case .failure(let error): throw ConfigError(file: config.file, key: "serve.metrics", reason: error.description)
            }
        case nil:
            return (.standard, true)
        }
    }

    /// Brings the gauges up to date (at most 4 times a second; resident memory once a second): a scrape
    /// sees values at most that old, and a loop turning thousands of times a second pays nothing for it.
    func refreshMetrics(now: ContinuousClock.Instant) {
        guard now >= nextGaugeRefresh else { return }
        nextGaugeRefresh = now + .milliseconds(250)
        for rank in ranks {
            guard let pair = streams[rank] else { continue }
            metrics[rank, .train]?.refresh(pair.train)
            metrics[rank, .val]?.refresh(pair.val)
            metrics.heldLeases[rank]?.set(Double(leaseSessions?.held(rank: rank) ?? 0))
            let peers = peerMonitors[rank]?.peers ?? 0
            metrics.connectedTrainers[rank]?.set(Double(peers))
            noteCrowding(rank: rank, peers: peers, now: now)
        }
        metrics.workers.set(Double(workers.running.count))
        if workers.restarts > restartsCounted {
            metrics.workerRestarts.increment(by: Int64(workers.restarts - restartsCounted))
            restartsCounted = workers.restarts
        }
        guard now >= nextMemoryRefresh else { return }
        nextMemoryRefresh = now + .seconds(1)
        metrics.daemonResident.set(Self.residentMegabytes(pid: getpid()) * 1_048_576)
        metrics.workersResident.set(workers.running.reduce(0) { $0 + Self.residentMegabytes(pid: $1.1.pid) } * 1_048_576)
    }

    /// A rank with two trainers connected sends nothing (see `peerMonitors`): normal for a moment while a
    /// trainer reconnects, a problem when it lasts (a second trainer started for the same rank, or a stray
    /// client holding a connection). Said once per episode after 3 s, and again when it is over.
    func noteCrowding(rank: Int, peers: Int, now: ContinuousClock.Instant) {
        guard peers > 1 else {
            crowdedSince.removeValue(forKey: rank)
            if crowdingLogged.remove(rank) != nil {
                Self.log("rank \(rank): one trainer connected again; sending resumes")
            }
            return
        }
        let since = crowdedSince[rank] ?? now
        crowdedSince[rank] = since
        if now - since >= .seconds(3), crowdingLogged.insert(rank).inserted {
            Self.log("rank \(rank): \(peers) trainers are connected to \(endpoints[rank] ?? "its socket"); its batches are held back until only one is (two processes of the same rank, or another client connected to the rank's socket?)", .warning)
        }
    }
}
