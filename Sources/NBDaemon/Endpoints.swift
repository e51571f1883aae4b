import CNBSystem
import Foundation
import Glibc
import NBLoader
import NBSystem
import NBTransport

/// The daemon's trust model, applied where its sockets listen (README "Trust model"):
///
/// - every `tcp://` endpoint, control and data, is a CURVE server when `serve.secret_key_file` is set, and
///   a ZAP handler lets in only the clients in `serve.authorized_keys`;
/// - without CURVE, a tcp endpoint must be loopback unless `serve.allow_unauthenticated_network: true`;
/// - an `ipc://` socket file is created by the daemon itself with `serve.socket_mode` (and
///   `serve.socket_group`) from the first moment, and handed to libzmq (`ZMQ_USE_FD`), so libzmq never
///   unlinks a path: a live socket (another daemon) and anything that is not a socket are refused, and only a
///   socket nobody answers on (left by a killed daemon) is removed.
struct EndpointSecurity {
    /// The ZAP domain of the daemon's CURVE sockets.
    static let zapDomain = "nb-serve"
    /// Connections a listening ipc socket queues before accepting (libzmq's own default).
    static let backlog: Int32 = 100

    struct Curve {
        let keyPair: CurveKeyPair
        let authorized: Set<CurveKey>
        let source: String
    }

    let file: String
    let curve: Curve?
    let allowUnauthenticatedNetwork: Bool
    let socketMode: mode_t
    let controlMode: mode_t
    let group: gid_t?
    let groupName: String?

    /// Reads the key files and resolves the socket group; every failure names its config key.
    init(config: LoaderConfig) throws {
        let serve = config.serve
        file = config.file
        allowUnauthenticatedNetwork = serve.allowUnauthenticatedNetwork
        socketMode = mode_t(serve.socketMode)
        controlMode = mode_t(serve.controlMode ?? serve.socketMode)
        if let secretFile = serve.secretKeyFile, let authorizedPath = serve.authorizedKeys {
            guard CurveKeyPair.isAvailable else {
                throw ConfigError(file: file, key: "serve.secret_key_file", reason: "this libzmq was built without CURVE (zmq_has(\"curve\") is false); install a libzmq built with libsodium")
            }
            let contents: CurveCertificate.Contents
            do { contents = try CurveCertificate.read(secretFile, requireSecret: true) } catch {
                throw ConfigError(file: file, key: "serve.secret_key_file", reason: error.description)
            }
            guard let pair = contents.keyPair else {
                throw ConfigError(file: file, key: "serve.secret_key_file", reason: "\(secretFile) holds no secret key")
            }
            let keys: [String: CurveKey]
            do { keys = try CurveCertificate.publicKeys(at: authorizedPath) } catch {
                throw ConfigError(file: file, key: "serve.authorized_keys", reason: error.description)
            }
            curve = Curve(keyPair: pair, authorized: Set(keys.values), source: authorizedPath)
        } else {
            curve = nil
        }
        if let name = serve.socketGroup {
            groupName = name
            if let number = gid_t(name) {
                group = number
            } else if let entry = getgrnam(name) {
                group = entry.pointee.gr_gid
            } else {
                throw ConfigError(file: file, key: "serve.socket_group", reason: "no group named '\(name)' (create it: groupadd --system \(name))")
            }
        } else {
            group = nil
            groupName = nil
        }
    }

    /// A one-line summary for the start-up log; public keys only, never secret ones.
    var summary: String {
        var parts: [String] = []
        if let curve {
            parts.append("CURVE on every tcp endpoint (server key \(curve.keyPair.publicKey.z85), \(curve.authorized.count) authorised client keys from \(curve.source))")
        } else {
            parts.append(allowUnauthenticatedNetwork ? "tcp unauthenticated (serve.allow_unauthenticated_network)" : "tcp loopback only, unauthenticated")
        }
        let groupText = groupName.map { " group \($0)" } ?? ""
        parts.append(String(format: "ipc sockets mode %04o", socketMode) + (controlMode != socketMode ? String(format: " (control %04o)", controlMode) : "") + groupText)
        return parts.joined(separator: "; ")
    }

    // MARK: - Checks before anything is bound

    /// Checks every endpoint against the trust model before any socket is bound, so a refused config
    /// leaves nothing behind.
    func check(control: String, dataTemplate: String, ranks: [Int]) throws {
        var endpoints = [(control, "serve.control")]
        for rank in ranks {
            if let endpoint = EndpointTemplate.render(dataTemplate, rank: rank) { endpoints.append((endpoint, "serve.endpoint")) }
        }
        for (endpoint, key) in endpoints {
            if endpoint.hasPrefix("ipc://") {
                let path = String(endpoint.dropFirst(6))
                if path.hasPrefix("@") || path.hasPrefix("*") || path.isEmpty {
                    throw ConfigError(file: file, key: key, reason: "'\(endpoint)': abstract and wildcard ipc endpoints are refused (they have no file permissions to protect them); name a socket file")
                }
                _ = try existingSocketIsStale(path, endpoint: endpoint)
            } else if endpoint.hasPrefix("tcp://") {
                guard curve == nil, !allowUnauthenticatedNetwork, !Self.isLoopback(endpoint) else { continue }
                throw ConfigError(
                    file: file, key: key,
                    reason: "'\(endpoint)' listens beyond loopback without authentication: anyone who reaches it could stop the daemon or take a rank's batches. Set serve.secret_key_file and serve.authorized_keys (CURVE keys from `nb-serve keygen`), or serve.allow_unauthenticated_network: true to accept an open network endpoint")
            } else {
                throw ConfigError(file: file, key: key, reason: "'\(endpoint)': only tcp:// and ipc:// endpoints are served")
            }
        }
    }

    /// Whether a tcp endpoint's host is a loopback address (127.0.0.0/8, ::1, localhost or the `lo` interface).
    static func isLoopback(_ endpoint: String) -> Bool {
        var address = String(endpoint.dropFirst(6))
        guard let colon = address.lastIndex(of: ":") else { return false }
        address = String(address[..<colon])
        if address.hasPrefix("[") && address.hasSuffix("]") { address = String(address.dropFirst().dropLast()) }
        if address == "localhost" || address == "lo" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { $0.elementsEqual([UInt8](repeating: 0, count: 15) + [1]) }
        }
        return false
    }

    // MARK: - Binding

    /// The ZAP handler for the context's CURVE sockets; nil without CURVE. Bound before any socket, so no
    /// connection is ever let in unchecked. The daemon's poll loop services it.
    func makeAuthenticator(context: ZmqContext) throws -> ZapResponder? {
        guard let curve else { return nil }
        let log = RefusalLog()
        return try ZapResponder(context: context, domain: Self.zapDomain, allowed: curve.authorized, onRefusal: log.record)
    }

    /// Binds `socket` to `endpoint` under the trust model: a CURVE server on tcp when keys are configured;
    /// a socket file made here, with its final mode and group, on ipc.
    func bind(_ socket: ZmqSocket, to endpoint: String, isControl: Bool) throws {
        if endpoint.hasPrefix("tcp://") {
            if let curve { try socket.makeCurveServer(secretKey: curve.keyPair.secretKey, zapDomain: Self.zapDomain) }
            do { try socket.bind(endpoint) } catch {
                guard error.errno == EADDRINUSE else { throw error }
                throw DaemonError("\(endpoint) is in use (another nb-serve, or another program, listens there): refusing to start")
            }
            return
        }
        let path = String(endpoint.dropFirst(6))
        try prepareSocketPath(path, endpoint: endpoint)
        let fd = try listen(path, mode: isControl ? controlMode : socketMode)
        do {
            try socket.set(.useFileDescriptor, fd)
            try socket.bind(endpoint)
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
    }

    /// Makes the socket's directory, and clears the path only of a socket that nobody answers on.
    func prepareSocketPath(_ path: String, endpoint: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        guard try existingSocketIsStale(path, endpoint: endpoint) else { return }
        Daemon.log("removing the stale socket \(path) (nothing answers on it)")
        guard unlink(path) == 0 || errno == ENOENT else { throw SystemCallError(call: "unlink(\(path))", errno: errno) }
    }

    /// False when nothing is at `path`; true when a socket is there that nobody answers on (a killed
    /// daemon's). Throws for anything else: a live socket (another daemon) or a file that is not a socket.
    func existingSocketIsStale(_ path: String, endpoint: String) throws -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            guard errno == ENOENT else { throw SystemCallError(call: "lstat(\(path))", errno: errno) }
            return false
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw DaemonError("\(endpoint): \(path) exists and is \(Self.kind(info.st_mode)), not a socket; refusing to remove it (choose another path)")
        }
        switch nb_unix_probe(path) {
        case 1:
            throw DaemonError("another process answers on \(endpoint) (a running nb-serve?): refusing to take over its socket; stop it first (nb-serve ctl stop --control …)")
        case 0:
            return true
        default:
            throw DaemonError("\(endpoint): cannot tell whether anything answers on \(path) (\(String(cString: strerror(errno)))); refusing to remove it")
        }
    }

    /// Creates the listening socket file. With a group, the file is created with the owner's bits only,
    /// given the group, and only then opened to the group: a socket's file mode cannot be changed through
    /// its descriptor (fchmod on a socket does not reach the file), and a socket file cannot be created
    /// with a group other than the process's own (setfsgid allows no supplementary group), so this
    /// order is what makes sure it is never open to a group other than the one configured.
    func listen(_ path: String, mode: mode_t) throws -> Int32 {
        let createMode = group == nil ? mode : mode & 0o700
        let fd = nb_unix_listen(path, UInt32(createMode), Self.backlog)
        guard fd >= 0 else {
            let code = errno
            if code == EADDRINUSE { throw DaemonError("\(path) appeared while starting (another nb-serve starting at the same time?); refusing to take it over") }
            throw SystemCallError(call: "bind(\(path))", errno: code)
        }
        guard let group else { return fd }
        if lchown(path, uid_t.max, group) != 0 {
            let code = errno
            close(fd)
            unlink(path)
            throw ConfigError(
                file: file, key: "serve.socket_group",
                reason: "cannot give \(path) the group \(groupName ?? String(group)): \(String(cString: strerror(code))) (the daemon must be a member of that group: SupplementaryGroups= in the systemd unit)")
        }
        if mode != createMode && chmod(path, mode) != 0 {
            let code = errno
            close(fd)
            unlink(path)
            throw SystemCallError(call: "chmod(\(path))", errno: code)
        }
        return fd
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFLNK: "a symbolic link"
        case S_IFIFO: "a FIFO"
        case S_IFCHR, S_IFBLK: "a device"
        default: "not a socket"
        }
    }
}

/// A refused client retries about ten times a second: each distinct refusal is logged once (up to 1000).
private final class RefusalLog {
    private var seen: Set<String> = []

    func record(_ message: String) {
        guard seen.count < 1000, seen.insert(message).inserted else { return }
        Daemon.log("authentication: " + message)
    }
}
