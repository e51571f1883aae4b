import Foundation
import Glibc

/// Why a CURVE certificate file could not be read or written; always names the file.
public struct CurveCertificateError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) {
        self.file = file
        self.reason = reason
    }
    public var description: String { "\(file): \(reason)" }
}

/// CURVE key files in the ZeroMQ certificate format that czmq (`zcert`) and pyzmq (`zmq.auth`) read and
/// write: `NAME.key` holds the public key and may be shared; `NAME.key_secret` holds the public and the
/// secret key and is readable by its owner only. A directory of `*.key` files is a list of authorised peers.
public enum CurveCertificate {
    /// A file's public key and, for a secret certificate, its key pair.
    public struct Contents: Sendable {
        public let publicKey: CurveKey
        public let keyPair: CurveKeyPair?
    }

    /// Reads a certificate. With `requireSecret`, the file must hold the secret key and must not be readable
    /// by group or others (as ssh insists for its keys).
    public static func read(_ path: String, requireSecret: Bool) throws(CurveCertificateError) -> Contents {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw CurveCertificateError(file: path, reason: "cannot read: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw CurveCertificateError(file: path, reason: "is not a regular file")
        }
        guard info.st_size <= 64 * 1024 else {
            throw CurveCertificateError(file: path, reason: "is \(info.st_size) bytes, too large for a certificate")
        }
        if requireSecret && info.st_mode & 0o077 != 0 {
            throw CurveCertificateError(
                file: path, reason: String(format: "holds a secret key but is mode %04o: it must be readable by its owner only (chmod 600)", info.st_mode & 0o7777))
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CurveCertificateError(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        var publicText: String?
        var secretText: String?
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            guard !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: CharacterSet(charactersIn: " \t\"'"))
            switch name {
            case "public-key": publicText = value
            case "secret-key": secretText = value
            default: continue
            }
        }
        guard let publicText else { throw CurveCertificateError(file: path, reason: "has no public-key line") }
        guard let publicKey = CurveKey(z85: publicText) else {
            throw CurveCertificateError(file: path, reason: "public-key is not a 40-character Z85 key")
        }
        guard requireSecret else { return Contents(publicKey: publicKey, keyPair: nil) }
        guard let secretText else {
            throw CurveCertificateError(file: path, reason: "has no secret-key line: this is a public certificate (NAME.key); give the secret one (NAME.key_secret)")
        }
        guard let secretKey = CurveKey(z85: secretText) else {
            throw CurveCertificateError(file: path, reason: "secret-key is not a 40-character Z85 key")
        }
        guard let pair = CurveKeyPair(publicKey: publicKey, secretKey: secretKey) else {
            throw CurveCertificateError(file: path, reason: "public-key does not belong to secret-key")
        }
        return Contents(publicKey: publicKey, keyPair: pair)
    }

    /// The public keys of a certificate file, or of every `*.key` file in a directory (secret certificates,
    /// `*.key_secret`, are not read there). An empty directory is an error: it would authorise nobody.
    public static func publicKeys(at path: String) throws(CurveCertificateError) -> [String: CurveKey] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CurveCertificateError(file: path, reason: "does not exist")
        }
        guard isDirectory.boolValue else { return [path: try read(path, requireSecret: false).publicKey] }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw CurveCertificateError(file: path, reason: "cannot list: \(error.localizedDescription)")
        }
        var keys: [String: CurveKey] = [:]
        for name in names.sorted() where name.hasSuffix(".key") && !name.hasPrefix(".") {
            let file = path + "/" + name
            keys[file] = try read(file, requireSecret: false).publicKey
        }
        guard !keys.isEmpty else { throw CurveCertificateError(file: path, reason: "holds no public certificate (*.key)") }
        return keys
    }

    /// Writes `NAME.key` (mode 0644) and `NAME.key_secret` (created 0600, never wider) in `directory`;
    /// refuses to replace either. Returns (public file, secret file).
    public static func write(_ pair: CurveKeyPair, directory: String, name: String) throws(CurveCertificateError) -> (String, String) {
        let publicPath = directory + "/" + name + ".key"
        let secretPath = directory + "/" + name + ".key_secret"
        for path in [publicPath, secretPath] where FileManager.default.fileExists(atPath: path) {
            throw CurveCertificateError(file: path, reason: "already exists; not replaced (remove it first)")
        }
        let stamp = ISO8601DateFormatter().string(from: Date())
        let secret = """
            #   ****  Generated on \(stamp) by nb-serve keygen  ****
            #   ZeroMQ CURVE **Secret** Certificate
            #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

            metadata
            curve
                public-key = "\(pair.publicKey.z85)"
                secret-key = "\(pair.secretKey.z85)"

            """
        let certificate = """
            #   ****  Generated on \(stamp) by nb-serve keygen  ****
            #   ZeroMQ CURVE Public Certificate
            #   Exchange securely, or use a secure mechanism to verify the contents
            #   of this file after exchange. Store public certificates in your home
            #   directory, in the .curve subdirectory.

            metadata
            curve
                public-key = "\(pair.publicKey.z85)"

            """
        try create(secretPath, contents: secret, mode: 0o600)
        do {
            try create(publicPath, contents: certificate, mode: 0o644)
        } catch {
            unlink(secretPath)
            throw error
        }
        return (publicPath, secretPath)
    }

    /// Creates `path` exclusively with `mode` from the first moment (the umask can only narrow it, and
    /// `fchmod` then sets exactly `mode`), writes and syncs it; removes it again on any failure.
    private static func create(_ path: String, contents: String, mode: mode_t) throws(CurveCertificateError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw CurveCertificateError(file: path, reason: "cannot create: \(String(cString: strerror(errno)))") }
        var failure: String?
        if fchmod(fd, mode) != 0 { failure = "fchmod: \(String(cString: strerror(errno)))" }
        let bytes = Array(contents.utf8)
        var written = 0
        while failure == nil && written < bytes.count {
            let count = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                failure = "write: \(String(cString: strerror(errno)))"
            } else {
                written += count
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = "fsync: \(String(cString: strerror(errno)))" }
        close(fd)
        if let failure {
            unlink(path)
            throw CurveCertificateError(file: path, reason: failure)
        }
    }
}
