/// A loader's stage: noisebase's `train`, or `val` (which its configs also call `validation`).
public enum Stage: String, Sendable, Codable, CaseIterable {
    case train, val

    /// A stage as configs, commands and requests name it: `train`, `val` or noisebase's `validation`.
    public init?(name: String) {
        switch name {
        case "train": self = .train
        case "val", "validation": self = .val
        default: return nil
        }
    }

    /// The other stage.
    public var other: Stage { self == .train ? .val : .train }
}
