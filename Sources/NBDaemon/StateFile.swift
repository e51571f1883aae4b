import Foundation
import Glibc
import NBLoader
import NBSystem
import NBVocabulary

/// The daemon's resume state on disk: noisebase's `{start_epoch_idx, start_sequence_idx}` plus what it
/// belongs to. Written crash-safely: a temporary file in the same directory, fsync, rename over the old
/// one, fsync of the directory — at every moment the path holds the old state or the new one, whole.
public struct ResumeStateFile: Codable, Sendable, Equatable {
    public var version = 1
    public var configFingerprint: String
    public var seed: Int64
    public var worldSize: Int
    public var startEpoch: Int
    public var startSequence: Int
    public var writtenAt: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case version
        case configFingerprint = "config_fingerprint"
        case seed
        case worldSize = "world_size"
        case startEpoch = "start_epoch_idx"
        case startSequence = "start_sequence_idx"
        case writtenAt = "written_at"
    }

    public init(version: Int = 1, configFingerprint: String, seed: Int64, worldSize: Int, startEpoch: Int, startSequence: Int, writtenAt: String) {
        self.version = version
        self.configFingerprint = configFingerprint
        self.seed = seed
        self.worldSize = worldSize
        self.startEpoch = startEpoch
        self.startSequence = startSequence
        self.writtenAt = writtenAt
    }

    /// Strict: every key present, no other key, each of its JSON type (Foundation refuses a bool where
    /// an integer belongs and an integer out of range); the values' ranges are checked by `read`.
    public init(from decoder: any Decoder) throws {
        let unknown = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue).filter { CodingKeys(rawValue: $0) == nil }
        if let key = unknown.sorted().first {
            throw ResumeStateError(reason: "unknown key '\(key)' (known: \(CodingKeys.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(Int.self, forKey: .version)
        configFingerprint = try container.decode(String.self, forKey: .configFingerprint)
        seed = try container.decode(Int64.self, forKey: .seed)
        worldSize = try container.decode(Int.self, forKey: .worldSize)
        startEpoch = try container.decode(Int.self, forKey: .startEpoch)
        startSequence = try container.decode(Int.self, forKey: .startSequence)
        writtenAt = try container.decode(String.self, forKey: .writtenAt)
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public var resumeState: ResumeState { ResumeState(startEpoch: startEpoch, startSequence: startSequence) }

    public static let fileName = "resume-state.json"

    /// Writes `self` to `directory/resume-state.json` (creating the directory), crash-safely: a complete
    /// temporary file, fsync, rename over the old state, fsync of the directory.
    public func write(to directory: String) throws -> String {
        try makeDirectories(directory)
        let path = directory + "/" + Self.fileName
        let temporary = directory + "/.\(Self.fileName).\(getpid()).tmp"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = Array(try encoder.encode(self)) + Array("\n".utf8)
        let file = try OwnedFileDescriptor(creating: temporary)
        do {
            try data.withUnsafeBytes { try writeAll(file.rawValue, $0, what: temporary) }
            try retryingSystemCall("fsync", path: temporary) { fsync(file.rawValue) }
            file.close()
        } catch {
            file.close()
            unlink(temporary)
            throw error
        }
        if TestHooks.crashBeforeRename {
            // Test hook: die at the worst moment, after the new file is complete but before it replaces
            // the old one; the old state must survive.
            kill(getpid(), SIGKILL)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemCallError(call: "rename to \(path)", path: temporary, errno: code)
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
        return path
    }

    /// The state at `path`, checked: the format version this build writes, a world size of at least 1,
    /// positions ≥ 0. Every failure names the file.
    public static func read(_ path: String) throws -> ResumeStateFile {
        func refuse(_ reason: String) -> ResumeStateError { ResumeStateError(path: path, reason: reason) }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            let code = (error as NSError).userInfo[NSUnderlyingErrorKey].flatMap { ($0 as? NSError)?.code } ?? 0
            throw refuse("cannot read: \(code != 0 ? String(cString: strerror(Int32(code))) : error.localizedDescription)")
        }
        let state: ResumeStateFile
        do {
            state = try JSONDecoder().decode(ResumeStateFile.self, from: data)
        } catch let error as ResumeStateError {
            throw refuse(error.reason)
        } catch {
            throw refuse("not a resume state written by nb-serve (\(describeDecodingFailure(error)))")
        }
        guard state.version == currentVersion else {
            throw refuse("format version \(state.version); this nb-serve reads version \(currentVersion)")
        }
        guard state.worldSize >= 1 else { throw refuse("world_size \(state.worldSize) is not ≥ 1") }
        guard state.startEpoch >= 0 else { throw refuse("start_epoch_idx \(state.startEpoch) is negative") }
        guard state.startSequence >= 0 else { throw refuse("start_sequence_idx \(state.startSequence) is negative") }
        return state
    }

    /// `read`, and the state must belong to `config`: the same fingerprint and the same seed.
    public static func read(_ path: String, for config: LoaderConfig) throws -> ResumeStateFile {
        let state = try read(path)
        guard state.configFingerprint == config.fingerprint else {
            throw ResumeStateError(path: path, reason: "resume state belongs to another configuration (fingerprint \(state.configFingerprint), this config is \(config.fingerprint)); refusing to resume")
        }
        guard state.seed == Int64(config.seed) else {
            throw ResumeStateError(path: path, reason: "resume state was written for seed \(state.seed), this config has seed \(config.seed); refusing to resume")
        }
        return state
    }

    /// The format version `write` produces.
    public static let currentVersion = 1

    /// Removes what an interrupted `write` left in `directory`: a `kill -9` between creating the
    /// temporary file and renaming it leaves `.resume-state.json.PID.tmp` behind. Only files of that
    /// exact pattern whose writer (PID) is not this process are removed; returns their names.
    @discardableResult
    public static func removeStaleTemporaries(in directory: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        let prefix = ".\(fileName)."
        var removed: [String] = []
        for name in names where name.hasPrefix(prefix) && name.hasSuffix(".tmp") {
            let pid = name.dropFirst(prefix.count).dropLast(4)
            guard !pid.isEmpty, pid.allSatisfy(\.isASCII), pid.allSatisfy(\.isNumber), Int32(pid) != getpid() else { continue }
            if unlink(directory + "/" + name) == 0 { removed.append(name) }
        }
        return removed
    }
}

/// Why a resume state file was refused; names the file.
public struct ResumeStateError: Error, CustomStringConvertible {
    public var path = ""
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

extension LoaderConfig {
    /// A fingerprint of everything that decides the batches: a resume state from another config is
    /// refused. FNV-1a over a canonical text of the semantic settings.
    public var fingerprint: String {
        let source = self.source
        let text = [
            "sequences=\(source.sequences)", "files=\(source.files.text)", "frames=\(source.framesPerSequence)",
            "crop=\(source.crop)", "stored_samples=\(source.samples)", "height=\(source.renderingHeight)",
            "width=\(source.renderingWidth)", "buffers=\(buffers.map(\.rawValue).joined(separator: ","))",
            "samples=\(samples)", "flip_rotate=\(flipRotate)", "batch_size=\(batchSize)", "shuffle=\(shuffle)",
            "drop_last=\(dropLast)", "val_split=\(valSplit)", "seed=\(seed)",
        ].joined(separator: "\n")
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
