import ArgumentParser
import Foundation
import Glibc
import NBDaemon
import NBTransport

/// `--server-key` and `--client-key`: how a client of a daemon with CURVE endpoints authenticates.
struct CurveClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The daemon's public certificate (its NAME.key from `nb-serve keygen`), for tcp endpoints secured with CURVE.", valueName: "file"))
    var serverKey: String?

    @Option(help: ArgumentHelp("This client's secret certificate (NAME.key_secret; its NAME.key must be in the daemon's serve.authorized_keys).", valueName: "file"))
    var clientKey: String?

    func validate() throws {
        guard (serverKey == nil) == (clientKey == nil) else {
            throw ValidationError("--server-key and --client-key go together (CURVE needs the daemon's public key and this client's key pair)")
        }
    }

    /// The keys, read and checked; nil when neither option is given.
    func load() throws -> ClientCurve? {
        guard let serverKey, let clientKey else { return nil }
        let server = try CurveCertificate.read(serverKey, requireSecret: false).publicKey
        guard let pair = try CurveCertificate.read(clientKey, requireSecret: true).keyPair else {
            throw CurveCertificateError(file: clientKey, reason: "holds no secret key")
        }
        return ClientCurve(serverKey: server, keyPair: pair)
    }
}

/// A client's CURVE keys: applied to every tcp endpoint it connects to.
struct ClientCurve {
    let serverKey: CurveKey
    let keyPair: CurveKeyPair

    func apply(to socket: ZmqSocket, endpoint: String) throws {
        guard endpoint.hasPrefix("tcp://") else { return }
        try socket.makeCurveClient(serverKey: serverKey, keyPair: keyPair)
    }
}

/// A clear error, rather than a wait that ends in a timeout, when this user may not connect to an ipc
/// endpoint: connecting to a unix socket needs search permission on its directories and write
/// permission on the socket file.
func checkIPCAccess(_ endpoint: String) throws {
    guard endpoint.hasPrefix("ipc://") else { return }
    let path = String(endpoint.dropFirst(6))
    if access(path, W_OK) == 0 { return }
    let code = errno
    guard code == EACCES else { return }  // ENOENT: not started yet; the timeout says so
    var info = stat()
    let detail = stat(path, &info) == 0
        ? String(format: "the socket is mode %04o, group %u", info.st_mode & 0o7777, info.st_gid)
        : "a directory on the path is not searchable"
    throw DaemonError(
        "permission denied connecting to \(endpoint): \(detail), and this user (uid \(getuid())) may not connect; the daemon's serve.socket_mode and serve.socket_group decide who may (README \"Trust model\")")
}
