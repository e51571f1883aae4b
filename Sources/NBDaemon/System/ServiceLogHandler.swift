import Glibc
import Logging

/// The daemon's and its workers' log handler (swift-log), writing one line per message to stderr.
///
/// Under systemd (`JOURNAL_STREAM` names stderr's file) each line starts with its syslog priority (`<3>` an
/// error, `<4>` a warning, `<6>` information…), which journald reads as the entry's priority, and carries no
/// timestamp (the journal has its own). Anywhere else a line is `2026-12-02T04:20:12Z warning nb-serve: …`.
/// Metadata follows the message as `key=value`.
public struct ServiceLogHandler: LogHandler {
    public enum Style: Sendable {
        case journal
        case terminal
    }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let style: Style

    public init(label: String, style: Style) {
        self.label = label
        self.style = style
    }

    /// Installs the handler for the whole process (once), journal style when stderr is the journal.
    public static func bootstrap() {
        let style: Style = Self.stderrIsJournal() ? .journal : .terminal
        LoggingSystem.bootstrap { label in ServiceLogHandler(label: label, style: style) }
    }

    /// Whether stderr is the stream systemd's `JOURNAL_STREAM` (`device:inode`) names.
    static func stderrIsJournal() -> Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return value == "\(info.st_dev):\(info.st_ino)"
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = ""
        switch style {
        case .journal:
            line = "<\(Self.priority(event.level))>\(label): \(event.message)"
        case .terminal:
            line = "\(Self.timestamp()) \(event.level) \(label): \(event.message)"
        }
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for key in merged.keys.sorted() { line += " \(key)=\(merged[key]!)" }
        line += "\n"
        // One write per line, so lines of the daemon and its workers (sharing stderr) never interleave.
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    /// syslog(3) priorities, as journald reads them from a `<N>` prefix.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// UTC, to the second, without a formatter object per line.
    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
