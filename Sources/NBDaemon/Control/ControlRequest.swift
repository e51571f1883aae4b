import Foundation
import NBLoader
import NBStorage
import NBVocabulary

/// A control request refused, or one that cannot be carried out; the sentence goes back as `error`.
enum ControlError: Error, Equatable, CustomStringConvertible {
    /// The request breaks docs/protocol.md section 5 (a key, a type, a range).
    case invalid(String)
    /// The request is well-formed but cannot be done now.
    case refused(String)

    var description: String {
        switch self {
        case .invalid(let text), .refused(let text): text
        }
    }
}

/// `epoch`: stream an epoch of a stage to a rank.
struct EpochRequest: Equatable {
    var rank: Int
    var stage: Stage
    var epoch: Int
    /// noisebase's state dict, `{start_epoch_idx, start_sequence_idx}`.
    var state: ResumeState?
    /// Continue the stage's current (epoch) stream at the first unacknowledged batch.
    var continues: Bool
    /// How batches reach the trainer.
    var transport: Transport = .frames
}

/// `ack`: the trainer consumed the first `batches` batches of its stream's epoch, and (optionally) how it
/// spent its time since its last `ack`.
struct AckRequest: Equatable {
    var rank: Int
    var stage: Stage
    var epoch: Int
    var batches: Int
    /// The stream the trainer reads (checked against the current one when given).
    var stream: Int?
    /// Seconds the trainer waited for each batch it received since its last `ack` (`wait_s`).
    var waits: [Double] = []
    /// Seconds it spent between those batches, training (`busy_s`).
    var busy: Double = 0
}

/// How a stream's batches reach the trainer: as ZeroMQ frames (anywhere), or as leases of the daemon's
/// shared memory (a trainer on the same host with a shared-memory session).
enum Transport: String, Equatable {
    case frames = "zmq"
    case shm
}

/// One request on the control socket, decoded strictly: one JSON object, a known `cmd`, exactly the keys
/// that command takes, integers that are JSON integers within their range (never a bool, a fraction or a
/// string), and strings where strings belong. Anything else is refused with a sentence naming the key.
enum ControlRequest: Equatable {
    case epoch(EpochRequest)
    case ack(AckRequest)
    case length(stage: Stage, rank: Int, epoch: Int)
    case status
    case checkpoint
    case stop

    /// Requests longer than this are refused unread (a request is a few hundred bytes).
    static let maximumByteCount = 64 * 1024
    /// A reported duration beyond this many seconds (a day) is refused: no wait or training step is that long
    /// between two reports, which the client sends at least once a second while it iterates.
    static let maximumSeconds = 86_400.0
    /// Epoch numbers and sequence positions: what noisebase's seeds and slices can take, far beyond any run.
    static let maximumIndex = Int(Int32.max)

    static let commands = ["epoch", "ack", "length", "status", "checkpoint", "stop"]

    static func decode(_ frames: [[UInt8]]) throws(ControlError) -> ControlRequest {
        guard frames.count == 1, let frame = frames.first else {
            throw .invalid("a request is one message frame holding one JSON object; this one has \(frames.count) frames")
        }
        guard frame.count <= maximumByteCount else {
            throw .invalid("the request is \(frame.count) bytes; requests are at most \(maximumByteCount) bytes")
        }
        let value: JSONValue
        do {
            value = try JSONValue.parse(frame)
        } catch {
            throw .invalid("the request is not valid JSON (\(frame.count) bytes)")
        }
        guard case .object(let object) = value else {
            throw .invalid("a request is a JSON object with a string \"cmd\"; this one is \(kind(value))")
        }
        let fields = Fields(object: object)
        guard let command = object["cmd"] else { throw .invalid("the request has no \"cmd\" (one of \(commands.joined(separator: ", ")))") }
        guard let name = command.stringValue else { throw .invalid("\"cmd\" must be a string, not \(kind(command))") }
        switch name {
        case "epoch":
            try fields.allow(["rank", "stage", "epoch", "state", "continue", "transport"], command: name)
            return .epoch(EpochRequest(
                rank: try fields.index("rank"), stage: try fields.stage(), epoch: try fields.index("epoch"),
                state: try fields.state(), continues: try fields.bool("continue") ?? false, transport: try fields.transport()))
        case "ack":
            try fields.allow(["rank", "stage", "epoch", "batches", "stream", "wait_s", "busy_s"], command: name)
            return .ack(AckRequest(
                rank: try fields.index("rank"), stage: try fields.stage(), epoch: try fields.index("epoch"),
                batches: try fields.index("batches"), stream: try fields.optionalIndex("stream", maximum: Int.max),
                waits: try fields.durations("wait_s"), busy: try fields.duration("busy_s") ?? 0))
        case "length":
            try fields.allow(["rank", "stage", "epoch"], command: name)
            return .length(
                stage: try fields.optionalStage() ?? .train, rank: try fields.optionalIndex("rank") ?? 0,
                epoch: try fields.optionalIndex("epoch") ?? 0)
        case "status":
            try fields.allow([], command: name)
            return .status
        case "checkpoint":
            try fields.allow([], command: name)
            return .checkpoint
        case "stop":
            try fields.allow([], command: name)
            return .stop
        default:
            throw .invalid("unknown command \(JSONValue.string(String(name.prefix(64))).description) (commands: \(commands.joined(separator: ", ")))")
        }
    }

    /// A value's JSON kind, for messages (never the value itself: requests are not echoed).
    static func kind(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "a bool"
        case .int, .uint: "an integer"
        case .double: "a number with a fraction or exponent"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    private struct Fields {
        let object: [String: JSONValue]

        func allow(_ keys: Set<String>, command: String) throws(ControlError) {
            for key in object.keys.sorted() where key != "cmd" && !keys.contains(key) {
                let shown = JSONValue.string(String(key.prefix(64))).description
                let known = keys.isEmpty ? "no other keys" : "only " + keys.sorted().joined(separator: ", ")
                throw .invalid("unknown key \(shown) in a \"\(command)\" request (it takes \(known))")
            }
        }

        func index(_ key: String, in object: [String: JSONValue]? = nil, maximum: Int = ControlRequest.maximumIndex) throws(ControlError) -> Int {
            guard let value = try optionalIndex(key, in: object, maximum: maximum) else { throw .invalid("the request needs an integer \"\(key)\"") }
            return value
        }

        func optionalIndex(_ key: String, in object: [String: JSONValue]? = nil, maximum: Int = ControlRequest.maximumIndex) throws(ControlError) -> Int? {
            guard let value = (object ?? self.object)[key] else { return nil }
            let number: Int?
            switch value {
            case .int(let exact): number = Int(exactly: exact)
            case .uint(let exact): number = Int(exactly: exact)
            case .double(let large) where large.rounded() == large && abs(large) >= 0x1p63:
                // An integer beyond 64 bits (JSON has no limit): out of range, not a fraction.
                throw .invalid("\"\(key)\" \(Self.integerText(large)) is out of range (0 to \(maximum))")
            default: throw .invalid("\"\(key)\" must be a JSON integer, not \(ControlRequest.kind(value))")
            }
            guard let number, (0...maximum).contains(number) else {
                throw .invalid("\"\(key)\" \(value) is out of range (0 to \(maximum))")
            }
            return number
        }

        /// A duration in seconds: any JSON number (never a bool or a string), finite, from 0 to a day.
        func duration(_ key: String, _ value: JSONValue? = nil, at index: Int? = nil) throws(ControlError) -> Double? {
            guard let value = value ?? object[key] else { return nil }
            let name = index.map { "\"\(key)\"[\($0)]" } ?? "\"\(key)\""
            let seconds: Double
            switch value {
            case .int(let exact): seconds = Double(exact)
            case .uint(let exact): seconds = Double(exact)
            case .double(let number): seconds = number
            default: throw .invalid("\(name) must be a number of seconds, not \(ControlRequest.kind(value))")
            }
            guard seconds >= 0, seconds <= ControlRequest.maximumSeconds else {
                throw .invalid("\(name) \(value) is out of range (0 to \(Int(ControlRequest.maximumSeconds)) seconds)")
            }
            return seconds
        }

        /// An array of durations.
        func durations(_ key: String) throws(ControlError) -> [Double] {
            guard let value = object[key] else { return [] }
            guard case .array(let items) = value else { throw .invalid("\"\(key)\" must be an array of seconds, not \(ControlRequest.kind(value))") }
            var seconds: [Double] = []
            seconds.reserveCapacity(items.count)
            for (index, item) in items.enumerated() {
                if let value = try duration(key, item, at: index) { seconds.append(value) }
            }
            return seconds
        }

        static func integerText(_ value: Double) -> String {
            String(format: "%.0f", value)
        }

        func bool(_ key: String) throws(ControlError) -> Bool? {
            guard let value = object[key] else { return nil }
            guard case .bool(let flag) = value else { throw .invalid("\"\(key)\" must be true or false, not \(ControlRequest.kind(value))") }
            return flag
        }

        func transport() throws(ControlError) -> Transport {
            guard let value = object["transport"] else { return .frames }
            guard let text = value.stringValue, let transport = Transport(rawValue: text) else {
                throw .invalid("\"transport\" must be \"zmq\" or \"shm\", not \(value.stringValue.map { JSONValue.string(String($0.prefix(32))).description } ?? ControlRequest.kind(value))")
            }
            return transport
        }

        func optionalStage() throws(ControlError) -> Stage? {
            guard let value = object["stage"] else { return nil }
            guard let text = value.stringValue else { throw .invalid("\"stage\" must be a string, not \(ControlRequest.kind(value))") }
            guard let stage = Stage(name: text) else {
                throw .invalid("\"stage\" \(JSONValue.string(String(text.prefix(64))).description) is not train, val or validation")
            }
            return stage
        }

        func stage() throws(ControlError) -> Stage {
            guard let stage = try optionalStage() else { throw .invalid("the request needs a string \"stage\" (train or val)") }
            return stage
        }

        /// noisebase's state dict. Both positions are required and non-negative: noisebase slices the
        /// epoch's order with `[start_sequence_idx:]`, so a negative one would count from the end, which no
        /// state noisebase itself writes ever does; an empty object means no state, as in noisebase.
        func state() throws(ControlError) -> ResumeState? {
            guard let value = object["state"], value != .null else { return nil }
            guard case .object(let members) = value else { throw .invalid("\"state\" must be an object, not \(ControlRequest.kind(value))") }
            if members.isEmpty { return nil }
            for key in members.keys.sorted() where key != "start_epoch_idx" && key != "start_sequence_idx" {
                throw .invalid("unknown key \(JSONValue.string(String(key.prefix(64))).description) in \"state\" (it takes start_epoch_idx and start_sequence_idx)")
            }
            return ResumeState(
                startEpoch: try index("start_epoch_idx", in: members), startSequence: try index("start_sequence_idx", in: members))
        }
    }
}
