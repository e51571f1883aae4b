import Foundation
import Glibc
import NBTransport
import XCTest

/// CURVE keys, certificate files and the ZAP responder, against libzmq itself.
final class CurveTests: XCTestCase {
    /// The example keys of libzmq's zmq_curve(7) manual page: each public key belongs to its secret key.
    func testPublicKeyOfSecretMatchesLibzmqsManual() throws {
        try XCTSkipUnless(CurveKeyPair.isAvailable, "libzmq without CURVE")
        let pairs = [
            ("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"),
            ("Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"),
        ]
        for (publicText, secretText) in pairs {
            let publicKey = try XCTUnwrap(CurveKey(z85: publicText))
            let secretKey = try XCTUnwrap(CurveKey(z85: secretText))
            XCTAssertEqual(try CurveKeyPair.publicKey(of: secretKey), publicKey)
            XCTAssertNotNil(CurveKeyPair(publicKey: publicKey, secretKey: secretKey))
            XCTAssertEqual(publicKey.z85, publicText)
        }
        let other = try XCTUnwrap(CurveKey(z85: pairs[0].0))
        XCTAssertNil(CurveKeyPair(publicKey: other, secretKey: try XCTUnwrap(CurveKey(z85: pairs[1].1))))
        XCTAssertNil(CurveKey(z85: String(pairs[0].0.dropLast())), "39 characters")
        XCTAssertNil(CurveKey(z85: pairs[0].0 + "abcde"), "45 characters")
        XCTAssertNil(CurveKey(z85: String(repeating: "~", count: 40)), "not Z85")
    }

    func testCertificatesRoundTripWithTheirModes() throws {
        let directory = NSTemporaryDirectory() + "curve-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pair = try CurveKeyPair.generate()
        let previous = umask(0)
        let written = Result { try CurveCertificate.write(pair, directory: directory, name: "node") }
        umask(previous)
        let (publicPath, secretPath) = try written.get()
        var info = stat()
        XCTAssertEqual(stat(secretPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o7777, 0o600)
        XCTAssertEqual(stat(publicPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o7777, 0o644)
        XCTAssertEqual(try CurveCertificate.read(secretPath, requireSecret: true).keyPair, pair)
        XCTAssertEqual(try CurveCertificate.read(publicPath, requireSecret: false).publicKey, pair.publicKey)
        XCTAssertThrowsError(try CurveCertificate.read(publicPath, requireSecret: true))
        XCTAssertEqual(try CurveCertificate.publicKeys(at: directory), [publicPath: pair.publicKey])
        XCTAssertThrowsError(try CurveCertificate.write(pair, directory: directory, name: "node"))
        chmod(secretPath, 0o640)
        XCTAssertThrowsError(try CurveCertificate.read(secretPath, requireSecret: true)) { error in
            XCTAssertTrue("\(error)".contains("chmod 600"), "\(error)")
        }
    }

    /// A CURVE server whose context has a ``ZapResponder``: a listed client's request arrives, an unlisted
    /// client's (with a valid handshake) and a client without CURVE never do.
    func testZapResponderAdmitsOnlyListedKeys() throws {
        try XCTSkipUnless(CurveKeyPair.isAvailable, "libzmq without CURVE")
        let server = try CurveKeyPair.generate()
        let listed = try CurveKeyPair.generate()
        let unlisted = try CurveKeyPair.generate()
        let context = try ZmqContext()
        defer { context.close() }
        var refusals: [String] = []
        let zap = try ZapResponder(context: context, domain: "test", allowed: [listed.publicKey]) { refusals.append($0) }
        defer { zap.close() }
        let pull = try ZmqSocket(.pull, context: context)
        defer { pull.close() }
        try pull.makeCurveServer(secretKey: server.secretKey, zapDomain: "test")
        try pull.bind("tcp://127.0.0.1:*")
        let endpoint = try pull.lastEndpoint

        let clients = try ZmqContext()
        defer { clients.close() }
        var pushes: [ZmqSocket] = []
        defer { pushes.forEach { $0.close() } }
        for (name, pair) in [("unlisted", unlisted as CurveKeyPair?), ("plain", nil), ("listed", listed)] {
            let push = try ZmqSocket(.push, context: clients)
            try push.set(.linger, 0)
            if let pair { try push.makeCurveClient(serverKey: server.publicKey, keyPair: pair) }
            try push.connect(endpoint)
            // Queued on the connection's pipe; it leaves only once the handshake (and ZAP) let it through.
            try push.set(.sendTimeout, 3000)
            XCTAssertTrue(try push.send([Array(name.utf8)]), name)
            pushes.append(push)
        }

        var received: [String] = []
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            let poller = ZmqPoller()
            let zapToken = poller.add(zap.socket, events: .readable)
            let pullToken = poller.add(pull, events: .readable)
            let ready = try poller.poll(timeout: .milliseconds(100))
            if ready[zapToken].contains(.readable) { try zap.answerPending() }
            if ready[pullToken].contains(.readable), let message = try pull.receiveMultipart(timeout: .zero) {
                received.append(String(decoding: message[0], as: UTF8.self))
            }
            // Past the listed client's message, wait a little longer for anything that must not come.
            if received.contains("listed") && refusals.contains(where: { $0.contains(unlisted.publicKey.z85) }) { break }
        }
        let settle = ContinuousClock.now + .milliseconds(300)
        while ContinuousClock.now < settle {
            if let message = try pull.receiveMultipart(timeout: .milliseconds(50)) { received.append(String(decoding: message[0], as: UTF8.self)) }
            try zap.answerPending()
        }
        XCTAssertEqual(received, ["listed"])
        XCTAssertTrue(refusals.contains { $0.contains(unlisted.publicKey.z85) && $0.contains("not in the authorised keys") }, "\(refusals)")
        XCTAssertFalse(refusals.contains { $0.contains(server.secretKey.z85) || $0.contains(unlisted.secretKey.z85) })
    }
}
