import Foundation
import Glibc
import NBLoader
import NBStorage
import NBVocabulary

/// What `nb-serve run` checks before it serves anything, so an operator hears of every problem at once
/// instead of one per-batch error at a time later.
enum StartupCheck {
    /// Every sequence file must exist and be readable by this process (opened, not judged by its mode
    /// bits: root reads a mode-000 file, another user does not), and be a regular file or a directory
    /// store; all failures are reported together, each naming its file. Temporary files an interrupted
    /// checkpoint left in `serve.state_dir` are removed.
    static func run(_ config: LoaderConfig) throws {
        if let directory = config.serve.stateDirectory {
            for name in ResumeStateFile.removeStaleTemporaries(in: directory) {
                Daemon.log("removed \(displayText(directory + "/" + name)), left by an interrupted checkpoint")
            }
        }
        let paths = (0..<config.source.sequences).map(config.sequencePath)
        let failures = paths.compactMap { path in problem(with: path).map { "\(displayText(path)): \($0)" } }
        guard failures.isEmpty else {
            let shown = failures.prefix(50).joined(separator: "\n  ")
            throw DaemonError("\(failures.count) of \(paths.count) sequence files cannot be read:\n  \(shown)\(failures.count > 50 ? "\n  …" : "")")
        }
    }

    /// Why `path` cannot be served, or nil. Opening is non-blocking, so a FIFO cannot hang the start.
    static func problem(with path: String) -> String? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return "cannot open: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return "cannot stat: \(String(cString: strerror(errno)))" }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            // The ZIP's end record is at the end: one byte read there proves the data is readable.
            var byte: UInt8 = 0
            if info.st_size > 0, pread(fd, &byte, 1, info.st_size - 1) != 1 {
                return "cannot read: \(String(cString: strerror(errno)))"
            }
            return nil
        case S_IFDIR:
            guard let directory = fdopendir(dup(fd)) else { return "cannot list: \(String(cString: strerror(errno)))" }
            closedir(directory)
            return nil
        default:
            return "not a regular file or a directory"
        }
    }
}
