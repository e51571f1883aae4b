import ArgumentParser
import Foundation
import Glibc
import NBTransport

extension NBServe {
    /// `nb-serve keygen`: a CURVE key pair for the daemon or for a trainer.
    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a CURVE key pair: NAME.key (public, mode 0644) and NAME.key_secret (secret, mode 0600).",
            discussion: """
                The files are ZeroMQ certificates, the format czmq and pyzmq's zmq.auth read and write. For \
                the daemon: point serve.secret_key_file at its NAME.key_secret and give trainers its NAME.key. \
                For each trainer (or each trainer host): put its NAME.key in the directory serve.authorized_keys \
                names, and give the trainer its NAME.key_secret and the daemon's NAME.key (nbserve.Loader's \
                client_key= and server_key=). The secret file is created with mode 0600 from the start; \
                existing files are never replaced. Exit status 1 when the files cannot be written.
                """
        )

        @Argument(help: "Base name of the two files, e.g. server or trainer-node3.")
        var name: String

        @Option(help: ArgumentHelp("Directory to write them in (created with mode 0700 if missing; its parent must exist).", valueName: "dir"))
        var directory = "."

        func validate() throws {
            guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else {
                throw ValidationError("NAME must be a plain file name (no '/', not starting with '.'), not '\(name)'")
            }
        }

        func run() throws {
            do {
                // Created with its final mode (mkdir applies it at creation; the umask can only narrow it).
                if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                    throw CurveCertificateError(file: directory, reason: "cannot create the directory: \(String(cString: strerror(errno)))")
                }
                let pair = try CurveKeyPair.generate()
                let (publicPath, secretPath) = try CurveCertificate.write(pair, directory: directory, name: name)
                print("public key \(pair.publicKey.z85)")
                print("wrote \(publicPath) (public: give it to the other side)")
                print("wrote \(secretPath) (secret: mode 0600, keep it here)")
            } catch {
                printError("error: \(error)")
                throw ExitCode.failure
            }
        }
    }
}
