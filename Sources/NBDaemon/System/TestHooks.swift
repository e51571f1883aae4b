import Foundation

/// Faults that process tests inject into a running daemon or worker, named in `NB_SERVE_TEST_FAULT`
/// (comma-separated). They exist only in debug builds (`NB_SERVE_TEST_HOOKS`, which the test suite runs):
/// a release binary contains none of them and reads no such variable.
enum TestHooks {
    #if NB_SERVE_TEST_HOOKS
    private static let faults: [Substring] = (ProcessInfo.processInfo.environment["NB_SERVE_TEST_FAULT"] ?? "").split(separator: ",")

    private static func value(_ name: String) -> Substring? {
        faults.first { $0 == name || $0.hasPrefix(name + "=") }.map { $0.dropFirst(min($0.count, name.count + 1)) }
    }

    /// The daemon's main loop fails (throws) when the first `ack` arrives.
    static let failLoopOnAck = value("fail-loop-on-ack") != nil
    /// The daemon dies after writing a complete resume state but before renaming it into place.
    static let crashBeforeRename = value("crash-before-rename") != nil
    /// A worker kills itself with SIGBUS whenever it is asked to decode this sequence (a poison frame).
    static let poisonSequence: Int64? = value("poison-sequence").flatMap { Int64($0) }
    /// The daemon's main loop stops turning for good (blocked, not sleeping) when a `stop` arrives: a wedged loop.
    static let wedgeOnStop = value("wedge-on-stop") != nil
    #else
    static let failLoopOnAck = false
    static let crashBeforeRename = false
    static let poisonSequence: Int64? = nil
    static let wedgeOnStop = false
    #endif
}
