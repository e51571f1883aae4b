import ArgumentParser
import NBLoader
import NBVocabulary

/// Options shared by the commands that follow a loader plan (`plan`, `dump`, `bench`).
struct LoaderOptions: ParsableArguments {
    @Option(help: "The loader config (noisebase's YAML keys; see config/).")
    var config: String

    @Option(help: "Stage: train, val or validation (default: the config's `stage`).")
    var stage: String?

    @Option(help: "Epoch number.")
    var epoch = 0

    @Option(help: "This trainer's rank.")
    var rank = 0

    @Option(help: "Number of ranks (default: the config's serve.world_size).")
    var worldSize: Int?

    @Option(help: ArgumentHelp("Resume state: the epoch of noisebase's start_epoch_idx.", valueName: "epoch"))
    var startEpoch: Int?

    @Option(help: ArgumentHelp("Resume state: noisebase's start_sequence_idx.", valueName: "index"))
    var startSequence: Int?

    func validate() throws {
        if (startEpoch == nil) != (startSequence == nil) {
            throw ValidationError("--start-epoch and --start-sequence go together.")
        }
        if epoch < 0 { throw ValidationError("--epoch must be ≥ 0.") }
    }

    var resume: ResumeState? {
        guard let startEpoch, let startSequence else { return nil }
        return ResumeState(startEpoch: startEpoch, startSequence: startSequence)
    }

    /// Loads the config and builds the sampler; a bad config prints its key and exits with status 2.
    func load() throws -> (LoaderConfig, VideoSampler) {
        do {
            let loaded = try LoaderConfig.load(path: config)
            let selected: Stage
            if let stage {
                guard let named = Stage(name: stage) else { throw ValidationError("--stage '\(stage)' is not train, val or validation.") }
                selected = named
            } else {
                selected = loaded.stage
            }
            let sampler = try VideoSampler(
                config: loaded, stage: selected, rank: rank, worldSize: worldSize ?? loaded.serve.worldSize)
            return (loaded, sampler)
        } catch let error as ConfigError {
            printError("error: \(error)")
            throw ExitCode(2)
        }
    }
}
