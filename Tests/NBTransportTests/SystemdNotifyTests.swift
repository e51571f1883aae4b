import Foundation
import NBTestSupport
import NBTransport
import XCTest

/// sd_notify datagrams, received on unix datagram sockets the tests bind themselves (a path and an
/// abstract name), the way systemd listens.
final class SystemdNotifyTests: XCTestCase {
    /// A bound `AF_UNIX` datagram socket; `name` is `$NOTIFY_SOCKET`'s spelling of its address.
    private final class Listener {
        let descriptor: Int32

        init(name: String) throws {
            descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { throw POSIXError(.EIO) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            var path = Array(name.utf8)
            let abstract = path.first == UInt8(ascii: "@")
            if abstract { path[0] = 0 }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
            let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (abstract ? 0 : 1))
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
            }
            guard result == 0 else { close(descriptor); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }

        deinit { close(descriptor) }

        /// The next datagram, or nil if none arrives within `milliseconds`.
        func receive(milliseconds: Int32) -> String? {
            var item = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&item, 1, milliseconds) == 1 else { return nil }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &buffer, buffer.count, 0)
            return count < 0 ? nil : String(decoding: buffer[..<count], as: UTF8.self)
        }
    }

    func testSendsReadyStatusAndStoppingToAPathSocket() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let name = directory + "/notify.sock"
        let listener = try Listener(name: name)
        let notify = SystemdNotify(socketName: name)

        XCTAssertTrue(try notify.ready())
        XCTAssertEqual(listener.receive(milliseconds: 5000), "READY=1")
        XCTAssertTrue(try notify.status("serving 2 ranks\nepoch 3"))
        XCTAssertEqual(listener.receive(milliseconds: 5000), "STATUS=serving 2 ranks epoch 3")
        XCTAssertTrue(try notify.notify(["STOPPING=1", "STATUS=shutting down"]))
        XCTAssertEqual(listener.receive(milliseconds: 5000), "STOPPING=1\nSTATUS=shutting down")
        XCTAssertTrue(try notify.stopping())
        XCTAssertEqual(listener.receive(milliseconds: 5000), "STOPPING=1")
    }

    func testSendsToAnAbstractSocket() throws {
        let name = "@nb-serve-test-" + UUID().uuidString
        let listener = try Listener(name: name)
        XCTAssertTrue(try SystemdNotify(socketName: name).ready())
        XCTAssertEqual(listener.receive(milliseconds: 5000), "READY=1")
    }

    func testReadsNotifySocketFromTheEnvironment() throws {
        let name = "@nb-serve-test-" + UUID().uuidString
        let listener = try Listener(name: name)
        setenv("NOTIFY_SOCKET", name, 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        XCTAssertEqual(SystemdNotify().socketName, name)
        XCTAssertTrue(try SystemdNotify().ready())
        XCTAssertEqual(listener.receive(milliseconds: 5000), "READY=1")
    }

    func testIsSilentWithoutNotifySocket() throws {
        let name = "@nb-serve-test-" + UUID().uuidString
        let listener = try Listener(name: name)
        unsetenv("NOTIFY_SOCKET")
        let notify = SystemdNotify()
        XCTAssertNil(notify.socketName)
        XCTAssertFalse(try notify.ready())
        XCTAssertFalse(try notify.status("x"))
        XCTAssertFalse(try notify.stopping())
        XCTAssertFalse(try SystemdNotify(socketName: "").ready())
        XCTAssertNil(listener.receive(milliseconds: 100), "nothing may be sent anywhere")
    }

    func testRefusesUnusableAddresses() throws {
        XCTAssertThrowsError(try SystemdNotify(socketName: "vsock:2:1234").ready()) { error in
            XCTAssertEqual(error as? SystemdNotifyError, .unsupportedAddress("vsock:2:1234"))
        }
        let long = "/" + String(repeating: "x", count: 200)
        XCTAssertThrowsError(try SystemdNotify(socketName: long).ready()) { error in
            XCTAssertEqual(error as? SystemdNotifyError, .unsupportedAddress(long))
        }
        let directory = try PythonOracle.temporaryDirectory(self)
        XCTAssertThrowsError(try SystemdNotify(socketName: directory + "/nobody.sock").ready()) { error in
            guard case .systemCall(let call, _, let code) = error as? SystemdNotifyError else { return XCTFail("\(error)") }
            XCTAssertEqual(call, "sendto")
            XCTAssertEqual(code, ENOENT)
        }
    }
}
