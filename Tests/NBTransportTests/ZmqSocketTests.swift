import Foundation
import NBTestSupport
import NBTransport
import Synchronization
import XCTest

/// Sockets against a real pyzmq peer: multipart round trips both ways, back-pressure, timeouts, errors.
final class ZmqSocketTests: XCTestCase {
    private static let pullPeer = pythonPattern + """
        import json, zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.RCVTIMEO, 20000)
        s.connect(sys.argv[1])
        first = s.recv_multipart()
        second = s.recv_multipart()
        third = s.recv_multipart()
        assert first[0] == b"hello" and first[1] == b"" and first[3] == b"", first[:2]
        assert first[2] == pattern(8 << 20, 1), "8 MB part differs"
        assert second == [pattern(100, 2)]
        assert third == [b"", pattern(300000, 3)]
        print(json.dumps([[len(p) for p in m] for m in (first, second, third)]))
        """

    func testSwiftPushToPythonPullCarriesLargeAndEmptyParts() throws {
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.set(.sendTimeout, 20_000)
        try push.bind("tcp://127.0.0.1:*")
        let endpoint = try push.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:") && !endpoint.hasSuffix(":*"), endpoint)

        let peer = try PythonPeer(self, script: Self.pullPeer, arguments: [endpoint])
        // Blocking sends wait (within the send timeout) until the peer has connected.
        XCTAssertTrue(try push.send([Array("hello".utf8), [], pattern(8 << 20, seed: 1), []]))
        XCTAssertTrue(try push.send([pattern(100, seed: 2)]))
        let third = pattern(300_000, seed: 3)
        let sent = try third.withUnsafeBytes { bytes in try push.send(copying: [UnsafeRawBufferPointer(start: nil, count: 0), bytes]) }
        XCTAssertTrue(sent)

        let lengths = try parseJSON(try peer.finish()) as? [[Int]]
        XCTAssertEqual(lengths, [[5, 0, 8 << 20, 0], [100], [0, 300_000]])
        push.close()
        context.close()
    }

    func testPythonPushToSwiftPullCarriesLargeAndEmptyParts() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        try pull.bind("ipc://\(directory)/pull.sock")
        XCTAssertEqual(try pull.lastEndpoint, "ipc://\(directory)/pull.sock")

        let peer = try PythonPeer(self, script: pythonPattern + """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PUSH)
            s.connect(sys.argv[1])
            s.send_multipart([b"", pattern(8 << 20, 4), b"x"])
            s.send_multipart([b""])
            s.send_multipart([pattern(70000, 5)], copy=False)
            s.close(linger=20000)
            """, arguments: [try pull.lastEndpoint])

        let first = try XCTUnwrap(try pull.receiveMultipart(timeout: .seconds(20)))
        XCTAssertEqual(first.map(\.count), [0, 8 << 20, 1])
        XCTAssertTrue(first[1] == pattern(8 << 20, seed: 4), "8 MB part differs")
        XCTAssertEqual(first[2], Array("x".utf8))
        XCTAssertEqual(try pull.receiveMultipart(timeout: .seconds(20)), [[]])
        XCTAssertEqual(try pull.receiveMultipart(timeout: .seconds(20)), [pattern(70000, seed: 5)])
        try peer.finish()
    }

    func testNonBlockingSendReturnsFalseAtTheHighWaterMarkAndRecovers() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.set(.sendHighWaterMark, 1)
        try push.set(.sendTimeout, 20_000)
        XCTAssertEqual(try push.get(.sendHighWaterMark), 1)

        // No peer at all: a PUSH socket has nowhere to queue the message.
        try push.bind("ipc://\(directory)/hwm.sock")
        XCTAssertFalse(try push.send([[1, 2, 3]], dontWait: true))

        // A peer that takes one message and then reads nothing until told to.
        let peer = try PythonPeer(self, script: """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PULL)
            s.setsockopt(zmq.RCVHWM, 1)
            s.setsockopt(zmq.RCVTIMEO, 20000)
            s.connect(sys.argv[1])
            s.recv_multipart()
            print("first", flush=True)
            more = int(sys.stdin.readline())
            for _ in range(more):
                s.recv_multipart()
            print("drained", more, flush=True)
            """, arguments: [try push.lastEndpoint])
        XCTAssertTrue(try push.send([[0]]))
        try peer.waitFor(line: "first")

        var accepted = 0
        var refused = false
        let block = pattern(64 << 10, seed: 6)
        for _ in 0..<10_000 {
            if try push.send([block, [7]], dontWait: true) { accepted += 1 } else { refused = true; break }
        }
        XCTAssertTrue(refused, "10 000 messages of 64 KiB queued to a peer that reads nothing")

        // Once the peer reads again, sending works again: back-pressure, not a broken socket.
        peer.send(line: String(accepted + 1))
        XCTAssertTrue(try push.send([block]))
        XCTAssertEqual(try peer.finish(), "first\ndrained \(accepted + 1)\n")
    }

    func testBlockingSendTimesOutWithFalse() throws {
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.bind("tcp://127.0.0.1:*")
        try push.set(.sendTimeout, 100)
        let start = ContinuousClock.now
        XCTAssertFalse(try push.send([[1]]))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(90))
    }

    func testReceiveTimeoutReturnsNil() throws {
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        try pull.bind("tcp://127.0.0.1:*")
        // A connected peer that sends only when told to.
        let peer = try PythonPeer(self, script: """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PUSH)
            s.connect(sys.argv[1])
            print("connected", flush=True)
            sys.stdin.readline()
            s.send_multipart([b"late"])
            s.close(linger=20000)
            """, arguments: [try pull.lastEndpoint])
        try peer.waitFor(line: "connected")

        var start = ContinuousClock.now
        XCTAssertNil(try pull.receiveMultipart(timeout: .milliseconds(200)))
        let waited = ContinuousClock.now - start
        XCTAssertGreaterThanOrEqual(waited, .milliseconds(200))
        XCTAssertLessThan(waited, .seconds(5))

        start = ContinuousClock.now
        XCTAssertNil(try pull.receiveMultipart(timeout: .zero))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))

        // Without a timeout argument the socket's own receive timeout applies.
        try pull.set(.receiveTimeout, 100)
        start = ContinuousClock.now
        XCTAssertNil(try pull.receiveMultipart())
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(90))

        peer.send(line: "go")
        XCTAssertEqual(try pull.receiveMultipart(timeout: .seconds(20)), [Array("late".utf8)])
        try peer.finish()
    }

    func testOptionsReadBack() throws {
        let context = try ZmqContext()
        let socket = try ZmqSocket(.dealer, context: context)
        XCTAssertEqual(try socket.get(.linger), 0, "ZMQ_BLOCKY=0 gives new sockets a linger of 0")
        for (option, value) in [(ZmqIntOption.linger, Int32(250)), (.sendHighWaterMark, 7), (.receiveHighWaterMark, 9),
                                (.sendTimeout, 1234), (.receiveTimeout, 4321), (.sendBuffer, 1 << 20), (.receiveBuffer, 1 << 20)] {
            try socket.set(option, value)
            XCTAssertEqual(try socket.get(option), value, option.name)
        }
        for option in [ZmqBoolOption.immediate, .ipv6] {
            try socket.set(option, true)
            XCTAssertTrue(try socket.get(option), option.name)
            try socket.set(option, false)
            XCTAssertFalse(try socket.get(option), option.name)
        }
    }

    func testEveryPatternCanBeCreatedAndReqRepTalk() throws {
        let context = try ZmqContext()
        for type in ZmqSocketType.allCases {
            let socket = try ZmqSocket(type, context: context)
            XCTAssertEqual(socket.type, type)
            socket.close()
        }
        let rep = try ZmqSocket(.rep, context: context)
        try rep.bind("tcp://127.0.0.1:*")
        let peer = try PythonPeer(self, script: """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.RCVTIMEO, 20000)
            s.connect(sys.argv[1])
            s.send_json({"cmd": "status"})
            print(s.recv_json()["ok"])
            """, arguments: [try rep.lastEndpoint])
        let request = try XCTUnwrap(try rep.receiveMultipart(timeout: .seconds(20)))
        XCTAssertEqual(String(decoding: request[0], as: UTF8.self), #"{"cmd": "status"}"#)
        XCTAssertTrue(try rep.send([Array(#"{"ok": true}"#.utf8)]))
        XCTAssertEqual(try peer.finish(), "True\n")
        // A REP socket must receive before it sends again: libzmq's EFSM comes back as a typed error.
        XCTAssertThrowsError(try rep.send([[1]], dontWait: true)) { error in
            XCTAssertEqual((error as? ZmqError)?.call, "zmq_msg_send")
        }
    }

    func testErrorsNameTheCallAndEndpoint() throws {
        let context = try ZmqContext()
        let socket = try ZmqSocket(.push, context: context)
        XCTAssertThrowsError(try socket.bind("tcp://999.0.0.1:1")) { error in
            let zmqError = error as? ZmqError
            XCTAssertEqual(zmqError?.call, "zmq_bind")
            XCTAssertEqual(zmqError?.endpoint, "tcp://999.0.0.1:1")
            XCTAssertTrue("\(error)".hasPrefix("zmq_bind(tcp://999.0.0.1:1) failed: "), "\(error)")
        }
        XCTAssertThrowsError(try socket.connect("nonsense")) { error in
            XCTAssertEqual((error as? ZmqError)?.errno, EINVAL, "\(error)")
        }
        try socket.bind("tcp://127.0.0.1:*")
        let other = try ZmqSocket(.push, context: context)
        XCTAssertThrowsError(try other.bind(try socket.lastEndpoint)) { error in
            XCTAssertEqual((error as? ZmqError)?.errno, EADDRINUSE, "\(error)")
        }
        socket.close()
        socket.close()
        XCTAssertFalse(socket.isOpen)
        XCTAssertThrowsError(try socket.send([[1]])) { error in
            XCTAssertEqual(error as? ZmqError, ZmqError(call: "zmq_msg_send", errno: ENOTSOCK))
        }
        XCTAssertThrowsError(try other.send([] as [[UInt8]])) { error in
            XCTAssertEqual((error as? ZmqError)?.errno, EINVAL, "a message needs at least one part")
        }
    }

    /// libzmq 4.3 binds an ipc:// path that already exists by replacing the file, even when another socket
    /// is listening there: the earlier listener silently stops receiving connections. Recorded here because
    /// the daemon must guard its endpoints itself (a stale file from a killed daemon is harmless for the same
    /// reason).
    func testBindingAnExistingIpcPathReplacesIt() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let path = "ipc://\(directory)/shared.sock"
        let context = try ZmqContext()
        let first = try ZmqSocket(.pull, context: context)
        try first.bind(path)
        let second = try ZmqSocket(.pull, context: context)
        XCTAssertNoThrow(try second.bind(path))

        let push = try ZmqSocket(.push, context: context)
        try push.connect(path)
        XCTAssertTrue(try push.send([[42]]))
        XCTAssertEqual(try second.receiveMultipart(timeout: .seconds(10)), [[42]])
        XCTAssertNil(try first.receiveMultipart(timeout: .zero))
    }

    func testContextCloseWithOpenSocketsDoesNotHang() throws {
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        try pull.bind("tcp://127.0.0.1:*")
        let start = ContinuousClock.now
        context.close()
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))
        // Every later call on its sockets fails with ETERM until they are closed.
        XCTAssertThrowsError(try pull.receiveMultipart(timeout: .seconds(5))) { error in
            XCTAssertEqual((error as? ZmqError)?.isContextTerminated, true, "\(error)")
        }
        XCTAssertThrowsError(try ZmqSocket(.push, context: context)) { error in
            XCTAssertEqual((error as? ZmqError)?.isContextTerminated, true, "\(error)")
        }
        pull.close()
        context.close()
    }

    /// The receive is proven blocked before the context closes: its thread is asleep in libzmq's poll(2)
    /// (Linux's /proc shows the system call a sleeping thread is in), and it returns only after `close()`.
    func testContextCloseWakesABlockedReceive() throws {
        let context = try ZmqContext()
        let state = BlockedReceive()
        let woke = expectation(description: "blocked receive returned")
        let thread = Thread {
            do {
                let pull = try ZmqSocket(.pull, context: context)
                try pull.bind("tcp://127.0.0.1:*")
                let task = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self")
                state.task.withLock { $0 = "/proc/" + task }
                _ = try pull.receiveMultipart()
                XCTFail("receive returned without a message or an error")
            } catch let error as ZmqError where error.isContextTerminated {
                state.returnedAfterClose.store(state.closing.load(ordering: .acquiring), ordering: .releasing)
                woke.fulfill()
            } catch {
                XCTFail("\(error)")
            }
        }
        thread.start()
        let blocked = state.waitUntilBlockedInPoll(timeout: .seconds(10))
        XCTAssertTrue(blocked, "the receiving thread never slept in poll(2); last seen: \(state.lastSeen)")
        state.closing.store(true, ordering: .releasing)
        context.close()
        wait(for: [woke], timeout: 10)
        XCTAssertTrue(state.returnedAfterClose.load(ordering: .acquiring), "the receive returned before close()")
    }
}

/// What testContextCloseWakesABlockedReceive's receiving thread shares with the test.
private final class BlockedReceive: Sendable {
    /// /proc/PID/task/TID of the receiving thread, once it is about to receive.
    let task = Mutex<String?>(nil)
    let closing = Atomic<Bool>(false)
    let returnedAfterClose = Atomic<Bool>(false)
    private let seen = Mutex<String>("nothing")

    var lastSeen: String { seen.withLock { $0 } }

    /// Polls (bounded) until the thread is asleep (state S) in poll or ppoll, the system calls libzmq's
    /// blocking receive waits in: x86-64 numbers 7 and 271, arm64's ppoll 73.
    func waitUntilBlockedInPoll(timeout: Duration) -> Bool {
        #if arch(x86_64)
        let pollCalls: Set<Substring> = ["7", "271"]
        #else
        let pollCalls: Set<Substring> = ["73"]
        #endif
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let task = task.withLock({ $0 }),
               let syscall = try? String(contentsOfFile: task + "/syscall", encoding: .utf8),
               let stat = try? String(contentsOfFile: task + "/stat", encoding: .utf8) {
                let number = syscall.split(separator: " ").first ?? ""
                // The state is the first field after the parenthesised command name.
                let threadState = stat.split(separator: ")").last?.split(separator: " ").first ?? ""
                seen.withLock { $0 = "syscall \(number), state \(threadState)" }
                if pollCalls.contains(number) && threadState == "S" { return true }
            }
            usleep(1000)
        }
        return false
    }
}
