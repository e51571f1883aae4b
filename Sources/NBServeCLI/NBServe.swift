import ArgumentParser
import Foundation

/// The `nb-serve` command: one subcommand per file, each a thin layer over the library modules.
@main
struct NBServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nb-serve",
        abstract: "A data-loading daemon for Noisebase Sample Training Format v1 datasets.",
        discussion: """
            nb-serve reads Noisebase training sequences (Zarr v2 groups in ZIP files) natively and serves \
            them to PyTorch trainers. Run `nb-serve help <command>` for a command's options.
            """,
        subcommands: [Demo.self, Run.self, Ctl.self, Inspect.self, Plan.self, Dump.self, Bench.self, Keygen.self, Worker.self]
    )

    /// ArgumentParser exits 64 (EX_USAGE) on a command-line error; nb-serve documents 2 for every
    /// usage or configuration error, so map it.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error) == .validationFailure {
                printError(fullMessage(for: error))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}
