import ArgumentParser
import Foundation
import NBClient
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

