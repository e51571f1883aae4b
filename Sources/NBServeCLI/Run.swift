import ArgumentParser
import Foundation
import Logging
import NBDaemon
import NBLoader

extension NBServe {
    /// `nb-serve run`: the daemon.
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the daemon: decode with worker processes and serve lockstep batches, one ZMQ PUSH socket per rank.",
            discussion: """
                Runs in the foreground (systemd runs it as a Type=notify service). Trainers ask for an epoch \
                on the control socket and receive its batches on their rank's socket (docs/protocol.md). \
                SIGTERM or `nb-serve ctl stop` stops it cleanly, writing the resume state when \
                serve.state_dir is set. Prometheus metrics are served at http://serve.metrics/metrics \
                (default 127.0.0.1:9464; "" turns them off). Exit status 2 on a bad config, 1 when it cannot start.
                """
        )

        @Option(help: "The loader config (noisebase's keys plus serve:).")
        var config: String

        @Flag(help: "Resume from serve.state_dir's resume-state.json (also automatic with serve.resume: auto).")
        var resume = false

        @Option(help: ArgumentHelp("Resume from this state file (written by `nb-serve ctl checkpoint`).", valueName: "state"))
        var resumeFrom: String?

        @Option(help: ArgumentHelp("Override serve.endpoint (a template with {rank} or {BASE+rank}).", valueName: "template"))
        var endpoint: String?

        @Option(help: ArgumentHelp("Override serve.control.", valueName: "endpoint"))
        var control: String?

        @Option(help: ArgumentHelp("Override num_workers.", valueName: "count"))
        var workers: Int?

        func run() throws {
            ServiceLogHandler.bootstrap()
            var statePath = resumeFrom
            if resume && statePath == nil {
                let loaded = try loadConfig()
                guard let directory = loaded.serve.stateDirectory else {
                    printError("error: --resume needs serve.state_dir in \(config)")
                    throw ExitCode(2)
                }
                statePath = directory + "/" + ResumeStateFile.fileName
            }
            let options = DaemonOptions(
                configPath: config, executable: Self.executablePath(), resumePath: statePath, endpoint: endpoint,
                control: control, workers: workers)
            // Through the daemon's logger, so that under systemd the reason carries its priority too.
            do {
                try Daemon(options: options).run()
            } catch let error as ConfigError {
                Daemon.log("error: \(error)", .critical)
                throw ExitCode(2)
            } catch {
                Daemon.log("error: \(error)", .critical)
                throw ExitCode.failure
            }
        }

        private func loadConfig() throws -> LoaderConfig {
            do { return try LoaderConfig.load(path: config) } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
        }

        /// This executable, resolved through /proc so workers start the same binary whatever argv[0] was.
        static func executablePath() -> String {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        }
    }

    /// `nb-serve worker`: started by the daemon only.
    struct Worker: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A decoding worker (started by `nb-serve run`; not for direct use).",
            shouldDisplay: false
        )

        @Option var config: String
        @Option var configBytes: Int
        @Option var fingerprint: String
        @Option var memoryBytes: Int
        @Option var parent: Int32

        func run() throws {
            ServiceLogHandler.bootstrap()
            // The daemon hands over the config text it read at start-up (fd 4), never the file's current
            // contents: an edited file must not change how a replacement worker lays out shared memory.
            let loaded: LoaderConfig
            do {
                let text = try WorkerMain.readConfigText(descriptor: 4, byteCount: configBytes)
                let directory = (config as NSString).deletingLastPathComponent
                loaded = try LoaderConfig.parse(yaml: text, file: config, baseDirectory: directory.isEmpty ? "." : directory)
            } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            guard loaded.fingerprint == fingerprint else {
                printError("error: worker config fingerprint \(loaded.fingerprint) is not the daemon's \(fingerprint)")
                throw ExitCode(2)
            }
            let status = WorkerMain.run(config: loaded, memoryBytes: memoryBytes, parent: parent)
            if status != 0 { throw ExitCode(status) }
        }
    }
}
