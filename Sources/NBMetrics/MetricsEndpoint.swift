import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization

/// Why the metrics endpoint could not start.
public enum MetricsEndpointError: Error, CustomStringConvertible, Equatable {
    /// Another process listens on the address already (a second daemon on the host, say).
    case addressInUse(String)
    /// The address could not be bound for another reason (no such interface, a privileged port…).
    case cannotBind(String, reason: String)

    public var description: String {
        switch self {
        case .addressInUse(let address): "\(address) is in use by another process"
        case .cannotBind(let address, let reason): "cannot listen on \(address): \(reason)"
        }
    }
}

/// An HTTP listener that answers `GET /metrics` with a registry's metrics in Prometheus' text exposition
/// format (version 0.0.4). It runs on one event-loop thread of its own (swift-nio), so a scrape never
/// waits for the daemon's loop and the loop never waits for a scrape: the registry is thread-safe.
///
/// The thread is swift-nio's process-wide event-loop group, limited to one thread and never shut down:
/// shutting a group down completes on a Dispatch queue, whose threads adjust their own scheduling
/// priority (`setpriority`), a call the systemd unit's `SystemCallFilter=` refuses.
public final class MetricsEndpoint: Sendable {
    /// The bound address, the port resolved when the configured one was 0.
    public let host: String
    public let port: Int
    private let channel: any Channel

    /// `http://HOST:PORT/metrics`, bracketing an IPv6 host.
    public var url: String {
        "http://\(host.contains(":") ? "[\(host)]" : host):\(port)/metrics"
    }

    /// Listens on `address` and serves `registry` until ``close()``.
    public init(address: MetricsAddress, registry: PrometheusCollectorRegistry) throws(MetricsEndpointError) {
        if !Self.groupSized.exchange(true, ordering: .relaxed) { NIOSingletons.groupLoopCountSuggestion = 1 }
        let group = MultiThreadedEventLoopGroup.singleton
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(registry: registry))
                }
            }
        do {
            channel = try bootstrap.bind(host: address.host, port: address.port).wait()
        } catch {
            if let io = error as? IOError, io.errnoCode == EADDRINUSE { throw .addressInUse(address.description) }
            throw .cannotBind(address.description, reason: "\(error)")
        }
        host = address.host
        port = channel.localAddress?.port ?? address.port
    }

    /// Stops listening (the event-loop thread stays, idle, until the process ends).
    public func close() {
        try? channel.close().wait()
    }

    /// Whether the process-wide group's size was set (before its first use, as swift-nio requires).
    private static let groupSized = Atomic(false)
}

/// `GET` (or `HEAD`) `/metrics` → 200 with the exposition; any other path 404, any other method 405.
private final class MetricsRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        var body: [UInt8]
        if path != "/metrics" {
            status = .notFound
            contentType = "text/plain; charset=utf-8"
            body = Array("nb-serve serves Prometheus metrics at /metrics only\n".utf8)
        } else if head.method != .GET && head.method != .HEAD {
            status = .methodNotAllowed
            contentType = "text/plain; charset=utf-8"
            body = Array("/metrics answers GET and HEAD only\n".utf8)
        } else {
            status = .ok
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body = registry.emitToBuffer()
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        if head.method == .HEAD { body = [] }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
