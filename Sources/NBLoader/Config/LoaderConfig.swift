import Foundation
import NBVocabulary
import Yams

/// The buffers noisebase's loader can yield, in its `buffers` list spelling.
public enum BufferName: String, CaseIterable, Sendable, Codable {
    case normal, motion, depth, w_normal, w_motion, w_position, diffuse, color, reference
}

/// `src:` of a noisebase dataset config: where the sequences are and how they were rendered.
public struct SourceConfig: Sendable, Equatable {
    public var sequences: Int
    public var files: FileNameTemplate
    public var framesPerSequence: Int
    public var crop: Int
    public var samples: Int
    public var renderingHeight: Int
    public var renderingWidth: Int
}

/// Daemon-only settings (`serve:`), ignored by noisebase.
public struct ServeConfig: Sendable, Equatable {
    /// ZMQ endpoint template per rank, e.g. `tcp://127.0.0.1:{5560+rank}` or `ipc:///run/nb-serve/rank{rank}.sock`.
    public var endpoint = "tcp://127.0.0.1:{5560+rank}"
    /// Control socket endpoint; nil: an ipc path under the runtime directory.
    public var control: String?
    /// File mode of every ipc socket the daemon binds (control and data), set as the socket file is
    /// created. Connecting to a unix socket needs write permission on it.
    public var socketMode = 0o600
    /// The control socket's mode when it differs from `socketMode` (`serve.control_mode`, kept from
    /// before `socket_mode` existed); nil: `socketMode`.
    public var controlMode: Int?
    /// Group (name or number) of every ipc socket file; nil: the daemon's group. Give it group
    /// permissions in `socketMode` (e.g. 0660) to let that group's trainers connect.
    public var socketGroup: String?
    /// The server's secret CURVE certificate (`nb-serve keygen`'s NAME.key_secret). When set, every tcp
    /// endpoint (control and data) requires CURVE, and only `authorizedKeys` may connect.
    public var secretKeyFile: String?
    /// The clients allowed to connect over CURVE: a public certificate (NAME.key) or a directory of them.
    public var authorizedKeys: String?
    /// Lets a tcp endpoint that is not loopback listen without CURVE (anyone who reaches it may stop the
    /// daemon and take any rank's batches). Off: such a config is refused at start-up.
    public var allowUnauthenticatedNetwork = false
    /// Ranks this daemon serves; nil: all of `worldSize`.
    public var ranks: [Int]?
    public var worldSize = 1
    /// Ready batches kept per rank.
    public var prefetch = 4
    /// Batches a same-host trainer may hold at once over shared memory (sent and not released); nil:
    /// `prefetch + 4`, so a trainer keeps at least 4 batches beside its prefetched ones.
    public var leases: Int?
    /// The unix socket through which same-host trainers receive the shared batch memory
    /// (`shm_socket`); nil: `shm.sock` beside an ipc control socket (none when control is tcp); "" turns
    /// the shared-memory transport off.
    public var shmSocket: String?

    /// The Prometheus endpoint (`metrics`): `HOST:PORT`; nil: 127.0.0.1:9464, skipped with a log line
    /// when that port is taken (a second daemon on the host); "" (or null): none. An address given here
    /// that cannot be bound is a start-up error.
    public var metrics: String?

    /// `leases`, or its default.
    public var leaseLimit: Int { leases ?? prefetch + 4 }
    public var stateDirectory: String?
    /// `auto`: resume from the state directory at start-up when a state is there; `never`: do not.
    public var resume = "never"
}

/// A noisebase `TrainingSampleLoader_v1` configuration, read from the same YAML keys noisebase uses.
///
/// noisebase's own dataset files (with `name`, `framework`, `data_remote`, `sampler_state`, hydra's
/// `defaults`, `_target_`, `loaders`, `type`) load as they are: keys that only matter to a Python loader
/// are ignored. Defaults are those of noisebase's `format/training_sample_v1.yaml`.
public struct LoaderConfig: Sendable {
    /// The file this came from (for messages), or `<string>`.
    public var file: String
    /// Directory holding the sequence files. A relative `data_path` is taken relative to the config
    /// file's directory (noisebase takes it relative to the working directory, which a service lacks).
    public var dataPath: String
    public var source: SourceConfig
    public var buffers: [BufferName] = BufferName.allCases
    public var samples = 8
    public var flipRotate = true
    public var batchSize = 8
    public var numWorkers = 4
    public var shuffle = true
    public var dropLast = true
    public var valSplit = 0.05
    public var seed: Int64 = 42
    public var stage = Stage.train
    public var serve = ServeConfig()

    /// Keys that only a Python/hydra loader reads.
    static let ignoredKeys: Set<String> = [
        "name", "framework", "data_remote", "sampler_state", "defaults", "_target_", "loaders", "type",
        "get_epoch",
    ]

    /// The path of sequence `index`'s file.
    public func sequencePath(_ index: Int) -> String {
        let name = source.files.name(index: index)
        return name.hasPrefix("/") ? name : dataPath + "/" + name
    }

    /// Reads and checks a YAML config file.
    public static func load(path: String) throws(ConfigError) -> LoaderConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, key: "", reason: "cannot read: \(error.localizedDescription)")
        }
        let directory = (path as NSString).deletingLastPathComponent
        return try parse(yaml: text, file: path, baseDirectory: directory.isEmpty ? "." : directory)
    }

    /// Parses YAML text; `file` names it in errors, `baseDirectory` anchors a relative `data_path`.
    public static func parse(yaml text: String, file: String, baseDirectory: String) throws(ConfigError) -> LoaderConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigError(file: file, key: "", reason: "not valid YAML: \(error)")
        }
        let reader = YAMLFields(file: file)
        guard let root else { throw ConfigError(file: file, key: "", reason: "empty configuration") }
        let fields = try reader.mapping(root, key: "")

        guard let sourceNode = fields["src"] else { throw ConfigError(file: file, key: "src", reason: "missing") }
        let source = try readSource(sourceNode, reader)
        var config = LoaderConfig(file: file, dataPath: baseDirectory + "/data", source: source)
        for (key, node) in fields.ordered {
            switch key {
            case "src": break
            case "data_path":
                if let path = try reader.optionalString(node, key: key) {
                    config.dataPath = path.hasPrefix("/") ? path : baseDirectory + "/" + path
                }
            case "buffers":
                let items = try reader.sequence(node, key: key)
                config.buffers = try items.enumerated().map { (index, item) throws(ConfigError) in
                    let name = try reader.string(item, key: "buffers[\(index)]")
                    guard let buffer = BufferName(rawValue: name) else {
                        throw ConfigError(file: file, key: "buffers[\(index)]", reason: "unknown buffer '\(name)' (known: \(BufferName.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    return buffer
                }
            case "samples": config.samples = try reader.int(node, key: key, atLeast: 1)
            case "flip_rotate": config.flipRotate = try reader.bool(node, key: key)
            case "batch_size": config.batchSize = try reader.int(node, key: key, atLeast: 1)
            case "num_workers": config.numWorkers = try reader.int(node, key: key, atLeast: 0)
            case "shuffle": config.shuffle = try reader.bool(node, key: key)
            case "drop_last": config.dropLast = try reader.bool(node, key: key)
            case "val_split":
                config.valSplit = try reader.double(node, key: key)
                guard (0...1).contains(config.valSplit) else {
                    throw ConfigError(file: file, key: key, reason: "must be between 0 and 1, not \(config.valSplit)")
                }
            case "seed": config.seed = Int64(try reader.int(node, key: key, atLeast: 0))
            case "stage": config.stage = try readStage(node, key: key, reader)
            case "serve": config.serve = try readServe(node, reader)
            case _ where ignoredKeys.contains(key): break
            default:
                throw ConfigError(file: file, key: key, reason: "unknown key")
            }
        }
        guard config.samples <= source.samples else {
            throw ConfigError(file: file, key: "samples", reason: "\(config.samples) is more than the \(source.samples) stored per pixel (src.samples)")
        }
        return config
    }

    static func readStage(_ node: Node, key: String, _ reader: YAMLFields) throws(ConfigError) -> Stage {
        let text = try reader.string(node, key: key)
        guard let stage = Stage(name: text) else {
            throw ConfigError(file: reader.file, key: key, reason: "'\(text)' is not train, val or validation")
        }
        return stage
    }

    private static func readSource(_ node: Node, _ reader: YAMLFields) throws(ConfigError) -> SourceConfig {
        let fields = try reader.mapping(node, key: "src")
        func required(_ name: String) throws(ConfigError) -> Node {
            guard let value = fields[name] else { throw ConfigError(file: reader.file, key: "src.\(name)", reason: "missing") }
            return value
        }
        for (key, _) in fields.ordered where !["sequences", "files", "frames_per_sequence", "crop", "samples", "rendering_height", "rendering_width"].contains(key) {
            throw ConfigError(file: reader.file, key: "src.\(key)", reason: "unknown key")
        }
        let filesText = try reader.string(try required("files"), key: "src.files")
        let files: FileNameTemplate
        do { files = try FileNameTemplate(filesText) } catch {
            throw ConfigError(file: reader.file, key: "src.files", reason: "'\(filesText)': \(error.reason)")
        }
        let source = SourceConfig(
            sequences: try reader.int(try required("sequences"), key: "src.sequences", atLeast: 1),
            files: files,
            framesPerSequence: try reader.int(try required("frames_per_sequence"), key: "src.frames_per_sequence", atLeast: 1),
            crop: try reader.int(try required("crop"), key: "src.crop", atLeast: 1),
            samples: try reader.int(try required("samples"), key: "src.samples", atLeast: 1),
            renderingHeight: try reader.int(try required("rendering_height"), key: "src.rendering_height", atLeast: 1),
            renderingWidth: try reader.int(try required("rendering_width"), key: "src.rendering_width", atLeast: 1))
        guard source.crop <= min(source.renderingHeight, source.renderingWidth) else {
            throw ConfigError(file: reader.file, key: "src.crop", reason: "\(source.crop) is larger than the \(source.renderingHeight)×\(source.renderingWidth) rendering")
        }
        return source
    }

    private static func readServe(_ node: Node, _ reader: YAMLFields) throws(ConfigError) -> ServeConfig {
        var serve = ServeConfig()
        for (key, value) in try reader.mapping(node, key: "serve").ordered {
            let path = "serve.\(key)"
            switch key {
            case "endpoint": serve.endpoint = try reader.string(value, key: path)
            case "control": serve.control = try reader.optionalString(value, key: path)
            case "control_mode": serve.controlMode = try readMode(value, key: path, reader)
            case "socket_mode": serve.socketMode = try readMode(value, key: path, reader)
            case "socket_group":
                serve.socketGroup = try reader.optionalString(value, key: path)
                if serve.socketGroup?.isEmpty == true {
                    throw ConfigError(file: reader.file, key: path, reason: "is empty; give a group name or number, or leave it out")
                }
            case "secret_key_file": serve.secretKeyFile = try reader.optionalString(value, key: path)
            case "authorized_keys": serve.authorizedKeys = try reader.optionalString(value, key: path)
            case "allow_unauthenticated_network": serve.allowUnauthenticatedNetwork = try reader.bool(value, key: path)
            case "ranks":
                serve.ranks = try reader.sequence(value, key: path).enumerated().map { (index, item) throws(ConfigError) in
                    try reader.int(item, key: "\(path)[\(index)]", atLeast: 0)
                }
            case "world_size": serve.worldSize = try reader.int(value, key: path, atLeast: 1)
            case "prefetch": serve.prefetch = try reader.int(value, key: path, atLeast: 1)
            case "leases": serve.leases = try reader.int(value, key: path, atLeast: 1)
            case "shm_socket": serve.shmSocket = try reader.optionalString(value, key: path) ?? ""
            case "metrics": serve.metrics = try reader.optionalString(value, key: path) ?? ""
            case "state_dir": serve.stateDirectory = try reader.optionalString(value, key: path)
            case "resume":
                let mode = try reader.string(value, key: path)
                guard ["auto", "never"].contains(mode) else {
                    throw ConfigError(file: reader.file, key: path, reason: "'\(mode)' is neither auto nor never")
                }
                serve.resume = mode
            default:
                throw ConfigError(file: reader.file, key: path, reason: "unknown key")
            }
        }
        switch (serve.secretKeyFile, serve.authorizedKeys) {
        case (nil, .some):
            throw ConfigError(file: reader.file, key: "serve.authorized_keys", reason: "needs serve.secret_key_file (the server's CURVE key) too")
        case (.some, nil):
            throw ConfigError(file: reader.file, key: "serve.secret_key_file", reason: "needs serve.authorized_keys too (without it any client that knows the server's public key could connect)")
        default: break
        }
        if let ranks = serve.ranks, let bad = ranks.first(where: { $0 >= serve.worldSize }) {
            throw ConfigError(file: reader.file, key: "serve.ranks", reason: "rank \(bad) is not below serve.world_size \(serve.worldSize)")
        }
        return serve
    }

    /// An octal file mode such as `"0660"` (quoted or not: YAML reads an unquoted 0660 as an octal number).
    private static func readMode(_ node: Node, key: String, _ reader: YAMLFields) throws(ConfigError) -> Int {
        let text = try reader.string(node, key: key)
        guard let mode = Int(text, radix: 8), (0...0o777).contains(mode) else {
            throw ConfigError(file: reader.file, key: key, reason: "'\(text)' is not an octal file mode like 0600")
        }
        return mode
    }
}

/// Typed access to YAML nodes; every failure names the key.
struct YAMLFields {
    let file: String

    struct Mapping {
        var ordered: [(String, Node)]
        subscript(key: String) -> Node? { ordered.first { $0.0 == key }?.1 }
    }

    private func fail(_ key: String, _ reason: String) -> ConfigError { ConfigError(file: file, key: key, reason: reason) }

    func mapping(_ node: Node, key: String) throws(ConfigError) -> Mapping {
        guard case .mapping(let mapping) = node else { throw fail(key, "must be a mapping of keys to values") }
        var ordered: [(String, Node)] = []
        for (name, value) in mapping {
            guard let text = name.string else { throw fail(key, "has a key that is not a string") }
            let full = key.isEmpty ? text : "\(key).\(text)"
            if ordered.contains(where: { $0.0 == text }) { throw fail(full, "appears twice") }
            ordered.append((text, value))
        }
        return Mapping(ordered: ordered)
    }

    func sequence(_ node: Node, key: String) throws(ConfigError) -> [Node] {
        guard case .sequence(let items) = node else { throw fail(key, "must be a list") }
        return Array(items)
    }

    func string(_ node: Node, key: String) throws(ConfigError) -> String {
        guard case .scalar(let scalar) = node, node.tag == Tag(.str) || node.int != nil else { throw fail(key, "must be a string") }
        return scalar.string
    }

    func optionalString(_ node: Node, key: String) throws(ConfigError) -> String? {
        if node.null != nil { return nil }
        return try string(node, key: key)
    }

    func int(_ node: Node, key: String, atLeast minimum: Int) throws(ConfigError) -> Int {
        guard node.tag == Tag(.int), let value = node.int else { throw fail(key, "must be an integer, not '\(node.string ?? "\(node)")'") }
        guard value >= minimum else { throw fail(key, "must be at least \(minimum), not \(value)") }
        return value
    }

    func double(_ node: Node, key: String) throws(ConfigError) -> Double {
        guard node.tag == Tag(.int) || node.tag == Tag(.float), let value = node.float else {
            throw fail(key, "must be a number, not '\(node.string ?? "\(node)")'")
        }
        return value
    }

    func bool(_ node: Node, key: String) throws(ConfigError) -> Bool {
        guard node.tag == Tag(.bool), let value = node.bool else { throw fail(key, "must be true or false, not '\(node.string ?? "\(node)")'") }
        return value
    }
}
