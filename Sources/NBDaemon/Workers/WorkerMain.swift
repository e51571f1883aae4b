import CNBSystem
import Glibc
import Logging
import NBLoader
import NBStorage
import NBSystem
import NBVocabulary

/// The body of `nb-serve worker`: a single-threaded loop that decodes tasks from stdin into the shared
/// memory on fd 3 and answers on stdout. It exits when stdin closes, and dies with the daemon
/// (`PR_SET_PDEATHSIG`), so no worker outlives it.
public enum WorkerMain {
    /// The config text the daemon passed as descriptor `descriptor` (`byteCount` bytes of a memfd).
    public static func readConfigText(descriptor: Int32, byteCount: Int) throws(SystemCallError) -> String {
        let mapped = try SharedBatchMemory(mapping: descriptor, byteCount: max(1, byteCount))
        return String(decoding: UnsafeRawBufferPointer(start: mapped.base, count: byteCount), as: UTF8.self)
    }

    public static func run(config: LoaderConfig, memoryBytes: Int, parent: pid_t) -> Int32 {
        _ = nb_set_parent_death_signal(SIGKILL)
        // The daemon may have died between spawning us and the prctl above.
        guard getppid() == parent else { return 1 }
        let memory: SharedBatchMemory
        do {
            memory = try SharedBatchMemory(mapping: 3, byteCount: memoryBytes)
        } catch {
            log("worker \(getpid()): \(error)")
            return 1
        }
        var decoders: [Int: FrameDecoder] = [:]
        var record = [UInt8](repeating: 0, count: WorkerTask.byteCount)
        // A task pipe that ends (the daemon closed it, or died) ends the worker; a torn record as well.
        while (try? record.withUnsafeMutableBytes { try readExactly(0, into: $0, what: "the task pipe") }) == true {
            guard let task = WorkerTask(decoding: record) else { return 1 }
            if let poison = TestHooks.poisonSequence, task.sequence == poison {
                // The default action, as a real bus error has: the runtime's crash handler may return from raise().
                signal(SIGBUS, SIG_DFL)
                raise(SIGBUS)
            }
            let batchSize = Int(task.batchSize)
            let decoder = decoders[batchSize] ?? FrameDecoder(config: config, batchSize: batchSize)
            decoders[batchSize] = decoder
            var message = ""
            let began = ContinuousClock.now
            if let buffer = memory.region(offset: Int(task.bufferOffset), count: decoder.layout.byteCount),
               task.slot >= 0, task.slot < task.batchSize {
                do {
                    try decoder.decode(
                        sequence: Int(task.sequence), frame: Int(task.frame), orientation: Int(task.orientation),
                        into: buffer, slot: Int(task.slot))
                } catch {
                    let (file, array, chunk, reason) = error.location
                    message = ErrorReport(file: file, array: array, chunk: chunk, reason: reason).json
                }
            } else {
                message = ErrorReport(file: "", array: "", chunk: "", reason: "task \(task.id) does not fit the shared memory").json
            }
            let elapsed = (ContinuousClock.now - began).components
            let nanoseconds = elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000
            let reply = WorkerResult(id: task.id, decodeNanoseconds: nanoseconds, error: message).encoded
            // The daemon closed its end: nothing to answer to.
            do { try reply.withUnsafeBytes { try writeAll(1, $0, what: "the result pipe") } } catch { return 1 }
        }
        return 0
    }

    static let logger = Logger(label: "nb-serve worker \(getpid())")

    static func log(_ text: String) {
        logger.error("\(text)")
    }
}

/// The file/array/chunk/reason of a failed frame, as JSON (worker → daemon → trainer).
public struct ErrorReport: Sendable, Equatable, Codable {
    public var file: String
    public var array: String
    public var chunk: String
    public var reason: String
    /// What went wrong, for `nbserve_errors_total{kind}` (not part of the worker's JSON: the daemon sets it).
    public var kind: Kind = .decode

    public enum Kind: String, Sendable {
        /// The file's data could not be read or decoded (the worker said so).
        case decode
        /// Workers kept dying on the frame.
        case workerCrash = "worker_crash"
    }

    enum CodingKeys: String, CodingKey {
        case file, array, chunk, reason
    }

    public var json: String {
        JSONValue.object(["file": .string(file), "array": .string(array), "chunk": .string(chunk), "reason": .string(reason)]).description
    }
}
