import Foundation
import Glibc
import NBLoader

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

    enum CodingKeys: String, CodingKey {
        case version
        case configFingerprint = "config_fingerprint"
        case seed
        case worldSize = "world_size"
        case startEpoch = "start_epoch_idx"
        case startSequence = "start_sequence_idx"
        case writtenAt = "written_at"
    }

    public var resumeState: ResumeState { ResumeState(startEpoch: startEpoch, startSequence: startSequence) }

    public static let fileName = "resume-state.json"

    /// Writes `self` to `directory/resume-state.json` (creating the directory).
    public func write(to directory: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/" + Self.fileName
        let temporary = directory + "/.\(Self.fileName).\(getpid()).tmp"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(self) + Data("\n".utf8)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError(call: "open(\(temporary))", errno: errno) }
        var ok = data.withUnsafeBytes { bytes -> Bool in
            var done = 0
            while done < bytes.count {
                let written = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
                if written < 0 { if errno == EINTR { continue }; return false }
                done += written
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        let code = errno
        close(fd)
        guard ok else {
            unlink(temporary)
            throw SystemError(call: "write(\(temporary))", errno: code)
        }
        if TestHooks.crashBeforeRename {
            // Test hook: die at the worst moment, after the new file is complete but before it replaces
            // the old one; the old state must survive.
            kill(getpid(), SIGKILL)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemError(call: "rename(\(temporary), \(path))", errno: code)
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
        return path
    }

    public static func read(_ path: String) throws -> ResumeStateFile {
        try JSONDecoder().decode(ResumeStateFile.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }
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
