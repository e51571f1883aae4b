/// Where the metrics endpoint listens: `HOST:PORT` (`[V6]:PORT` for an IPv6 literal), as `serve.metrics`
/// writes it; port 0 lets the system pick one (tests, and several daemons on one host).
public struct MetricsAddress: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// Prometheus' registered default port for this kind of exporter, on loopback.
    public static let standard = MetricsAddress(host: "127.0.0.1", port: 9464)

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, or says why the text is not one.
    public static func parse(_ text: String) -> Result<MetricsAddress, MetricsAddressError> {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(.init(text: text, reason: "an IPv6 address is written [ADDRESS]:PORT"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                return .failure(.init(text: text, reason: "it is not HOST:PORT (e.g. 127.0.0.1:9464)"))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { return .failure(.init(text: text, reason: "the host is empty (127.0.0.1 listens on loopback)")) }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber), let port = Int(portText), port <= 65535 else {
            return .failure(.init(text: text, reason: "the port must be a number from 0 to 65535"))
        }
        return .success(MetricsAddress(host: String(host), port: port))
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// A `serve.metrics` value that is not an address.
public struct MetricsAddressError: Error, Equatable, CustomStringConvertible {
    public let text: String
    public let reason: String
    public var description: String { "'\(text)' is not an address: \(reason)" }
}
