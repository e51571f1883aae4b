import Foundation
import NBTestSupport
import NBTransport
import XCTest

final class ZeroCopyTests: XCTestCase {
    func testZeroCopySendReleasesExactlyOnceAfterThePeerHasTheData() throws {
        let count = 4 << 20
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        memory.copyBytes(from: pattern(count, seed: 9))
        let releases = ReleaseCounter()
        let second = ReleaseCounter()

        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.set(.sendTimeout, 20_000)
        try push.bind("tcp://127.0.0.1:*")
        let peer = try PythonPeer(self, script: pythonPattern + """
            import zmq
            ctx = zmq.Context()
            s = ctx.socket(zmq.PULL)
            s.setsockopt(zmq.RCVTIMEO, 20000)
            s.connect(sys.argv[1])
            frames = s.recv_multipart(copy=False)
            assert [len(f) for f in frames] == [6, 4 << 20, 1000, 0], [len(f) for f in frames]
            assert frames[0].bytes == b"header"
            assert frames[1].bytes == pattern(4 << 20, 9), "zero-copy frame differs"
            assert frames[2].bytes == pattern(1000, 9)
            print("received", flush=True)
            """, arguments: [try push.lastEndpoint])

        let whole = UnsafeRawBufferPointer(memory)
        let sent = try push.send([
            .bytes(Array("header".utf8)),
            .zeroCopy(ZeroCopyBuffer(whole, onRelease: releases.callback())),
            .zeroCopy(ZeroCopyBuffer(UnsafeRawBufferPointer(rebasing: whole[0..<1000]), onRelease: second.callback())),
            .zeroCopy(ZeroCopyBuffer(UnsafeRawBufferPointer(start: nil, count: 0), onRelease: second.callback())),
        ])
        XCTAssertTrue(sent)
        XCTAssertEqual(try peer.finish(), "received\n")

        XCTAssertEqual(releases.wait(for: 1), 1)
        XCTAssertEqual(second.wait(for: 2), 2)
        // No late second call.
        usleep(100_000)
        XCTAssertEqual(releases.value, 1)
        XCTAssertEqual(second.value, 2)
        push.close()
        context.close()
        XCTAssertEqual(releases.value, 1)
        memory.deallocate()
    }

    func testZeroCopyPartIsReleasedWhenTheSendWouldBlockOrFails() throws {
        let memory = pattern(4096, seed: 1)
        try memory.withUnsafeBytes { bytes in
            let releases = ReleaseCounter()
            let context = try ZmqContext()
            let push = try ZmqSocket(.push, context: context)
            try push.bind("tcp://127.0.0.1:*")

            // No peer: nothing is queued, so the release runs before send returns.
            XCTAssertFalse(try push.send([.bytes([1]), .zeroCopy(ZeroCopyBuffer(bytes, onRelease: releases.callback()))], dontWait: true))
            XCTAssertEqual(releases.value, 1)

            // A closed socket: the call throws, and the release has still run once.
            push.close()
            XCTAssertThrowsError(try push.send([.zeroCopy(ZeroCopyBuffer(bytes, onRelease: releases.callback()))]))
            XCTAssertEqual(releases.value, 2)
            context.close()
        }
    }

    func testQueuedZeroCopyPartIsReleasedWhenTheContextEnds() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let memory = pattern(1 << 20, seed: 2)
        let releases = ReleaseCounter()
        try memory.withUnsafeBytes { bytes in
            let context = try ZmqContext()
            let push = try ZmqSocket(.push, context: context)
            // Connecting (to nobody) creates the pipe at once, so the message is queued, not refused.
            try push.connect("ipc://\(directory)/nobody.sock")
            XCTAssertTrue(try push.send([.zeroCopy(ZeroCopyBuffer(bytes, onRelease: releases.callback()))], dontWait: true))
            XCTAssertEqual(releases.value, 0, "queued, not yet released")
            push.close()
            context.close()
            // Termination has dropped the queued message: the memory is free to reuse when close returns.
            XCTAssertEqual(releases.value, 1)
        }
    }
}
