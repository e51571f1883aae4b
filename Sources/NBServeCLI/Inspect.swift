import ArgumentParser
import Foundation
import NBStorage

extension NBServe {
    /// `nb-serve inspect PATH`: what a Zarr v2 group holds, and whether every chunk decodes.
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the arrays of a Zarr v2 group (a .zip ZipStore or a directory), verify or export them.",
            discussion: """
                Exit status: 0 on success, 1 when the store, an array or a chunk cannot be read (or --verify \
                finds a bad chunk), 2 on a command-line error.
                """
        )

        @Argument(help: "A ZIP file written by zarr's ZipStore, or a directory written by its DirectoryStore.")
        var path: String

        @Flag(help: "Print one JSON object {\"arrays\": {NAME: {shape, dtype, chunks, compressor, …}}}.")
        var json = false

        @Flag(help: "Decode every stored chunk (and check ZIP CRCs); list each bad chunk and exit 1 if any fails.")
        var verify = false

        @Option(help: "The array to export with --npy (nested arrays by path, e.g. sub/array).")
        var array: String?

        @Option(help: ArgumentHelp("Write the array, decoded, to this .npy file (NumPy format 1.0, little-endian, C order).", valueName: "file"))
        var npy: String?

        @Option(parsing: .unconditional, help: ArgumentHelp("Export only this NumPy-style selection, e.g. '3,:,0:64,0:64' (an index drops its axis).", valueName: "selection"))
        var region: String?

        func validate() throws {
            if (array == nil) != (npy == nil) { throw ValidationError("--array and --npy go together.") }
            if region != nil && npy == nil { throw ValidationError("--region needs --array and --npy.") }
            if let region, Region(parsing: region) == nil {
                throw ValidationError("--region '\(region)' is not a selection like '0,:,2:5'.")
            }
        }

        func run() throws {
            do {
                let group = try ZarrGroup(path: path)
                if let array, let npy {
                    let selected = try group.array(array)
                    let shape = try selected.exportNpy(region.flatMap(Region.init(parsing:)) ?? .all, to: npy)
                    printError("wrote \(npy): \(selected.dataType) \(shape)")
                    return
                }
                let summaries = try group.arrayNames.map { name in try ArraySummary(group.array(name)) }
                if json {
                    print(InspectReport.json(summaries))
                } else {
                    print(InspectReport.table(path: path, summaries))
                }
                if verify { try verifyAll(group) }
            } catch let error as ZarrError {
                printError("error: \(error)")
                throw ExitCode.failure
            } catch let error as SystemCallError {
                printError("error: \(error)")
                throw ExitCode.failure
            }
        }

        private func verifyAll(_ group: ZarrGroup) throws {
            var failures = 0
            var chunks = 0
            for name in group.arrayNames {
                let array = try group.array(name)
                array.verifyChecksums = true
                chunks += try array.storedChunkKeys().count
                for failure in try array.verify() {
                    printError("error: \(failure)")
                    failures += 1
                }
            }
            if failures > 0 {
                printError("verify: \(failures) of \(chunks) chunks failed in \(path)")
                throw ExitCode.failure
            }
            printError("verify: all \(chunks) chunks of \(group.arrayNames.count) arrays decode")
        }
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
