import Foundation
import NBTestSupport
import NBTransport
import XCTest

/// One `zmq_poll` loop over a ZeroMQ socket fed by pyzmq and a pipe, as the daemon polls worker pipes.
final class ZmqPollerTests: XCTestCase {
    private func makePipe() throws -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw POSIXError(.EIO) }
        return (ends[0], ends[1])
    }

    func testReportsAReadablePipeAndAReadableSocket() throws {
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        try pull.bind("tcp://127.0.0.1:*")
        var (readEnd, writeEnd) = try makePipe()
        defer { close(readEnd); if writeEnd >= 0 { close(writeEnd) } }

        let poller = ZmqPoller()
        let socketToken = poller.add(pull)
        let pipeToken = poller.add(fileDescriptor: readEnd, events: [.readable])

        XCTAssertTrue(try poller.poll(timeout: .zero).isEmpty)
        let start = ContinuousClock.now
        XCTAssertTrue(try poller.poll(timeout: .milliseconds(150)).isEmpty)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(140))

        // The pipe.
        var byte: UInt8 = 1
        XCTAssertEqual(write(writeEnd, &byte, 1), 1)
        var ready = try poller.poll(timeout: .seconds(5))
        XCTAssertEqual(ready[pipeToken], .readable)
        XCTAssertEqual(ready[socketToken], [])
        XCTAssertEqual(read(readEnd, &byte, 1), 1)

        // The socket, fed by pyzmq.
        let peer = try PythonPeer(self, script: """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PUSH)
            s.connect(sys.argv[1])
            s.send_multipart([b"a", b"b"])
            s.close(linger=20000)
            """, arguments: [try pull.lastEndpoint])
        ready = try poller.poll(timeout: .seconds(20))
        XCTAssertEqual(ready[socketToken], .readable)
        XCTAssertEqual(ready[pipeToken], [])
        XCTAssertEqual(try pull.receiveMultipart(timeout: .zero), [[97], [98]])
        try peer.finish()
        XCTAssertTrue(try poller.poll(timeout: .zero).isEmpty)

        // A worker that exits closes its end: poll() says POLLHUP, which libzmq reports as an error event.
        close(writeEnd)
        writeEnd = -1
        ready = try poller.poll(timeout: .seconds(5))
        XCTAssertTrue(ready[pipeToken].contains(.error), "\(ready[pipeToken])")
        XCTAssertEqual(read(readEnd, &byte, 1), 0, "end of file")

        // Removed sources are no longer reported; their slot is reused.
        poller.remove(pipeToken)
        XCTAssertTrue(try poller.poll(timeout: .zero).isEmpty)
        let (otherRead, otherWrite) = try makePipe()
        defer { close(otherRead); close(otherWrite) }
        let writable = poller.add(fileDescriptor: otherWrite, events: .writable)
        XCTAssertEqual(try poller.poll(timeout: .zero)[writable], .writable)
        poller.update(writable, events: [])
        XCTAssertTrue(try poller.poll(timeout: .zero).isEmpty)
    }

    func testSocketWritabilityFollowsThePeer() throws {
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.bind("tcp://127.0.0.1:*")
        let poller = ZmqPoller()
        let token = poller.add(push, events: .writable)
        XCTAssertEqual(try poller.poll(timeout: .zero)[token], [], "a PUSH socket without a peer cannot send")

        let peer = try PythonPeer(self, script: """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PULL)
            s.setsockopt(zmq.RCVTIMEO, 20000)
            s.connect(sys.argv[1])
            print(s.recv_multipart()[0].decode())
            """, arguments: [try push.lastEndpoint])
        XCTAssertEqual(try poller.poll(timeout: .seconds(20))[token], .writable)
        XCTAssertTrue(try push.send([Array("hi".utf8)], dontWait: true))
        XCTAssertEqual(try peer.finish(), "hi\n")
    }

    func testPollingAClosedSocketThrows() throws {
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        let poller = ZmqPoller()
        poller.add(pull)
        pull.close()
        XCTAssertThrowsError(try poller.poll(timeout: .zero)) { error in
            XCTAssertEqual(error as? ZmqError, ZmqError(call: "zmq_poll", errno: ENOTSOCK))
        }
    }
}
