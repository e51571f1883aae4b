import Glibc
import NBSystem
import XCTest

@testable import NBDaemon

final class WorkerTests: XCTestCase {
    func testBackoffGrowsAndIsBounded() {
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 1), .zero)
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 2), .milliseconds(100))
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 3), .milliseconds(200))
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 7), .milliseconds(3200))
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 8), WorkerPool.maximumBackoff)
        XCTAssertEqual(WorkerPool.backoff(afterDeaths: 1000), WorkerPool.maximumBackoff)
    }

    func testTaskRecordsRoundTrip() throws {
        let task = WorkerTask(id: 7, bufferOffset: 1 << 40, slot: 3, sequence: 812, frame: 63, orientation: 2, batchSize: 4)
        XCTAssertEqual(task.encoded.count, WorkerTask.byteCount)
        XCTAssertEqual(WorkerTask(decoding: task.encoded), task)
        XCTAssertNil(WorkerTask(decoding: task.encoded.dropLast()))
        let result = WorkerResult(id: 9, decodeNanoseconds: 258, error: #"{"file": "a.zip"}"#)
        XCTAssertEqual(Array(result.encoded.prefix(24)), [9, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0])
    }

    /// Real children: a clean exit, an exit status, and a signal are each told apart.
    func testProcessExitReadsRealWaitStatuses() throws {
        func spawn(_ script: String) throws -> pid_t {
            var pid: pid_t = 0
            let argv = ["/bin/sh", "-c", script]
            var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
            defer { cArguments.forEach { free($0) } }
            XCTAssertEqual(posix_spawn(&pid, "/bin/sh", nil, nil, &cArguments, environ), 0)
            return pid
        }
        XCTAssertEqual(ProcessExit.wait(try spawn("exit 0"), timeoutMilliseconds: 10_000), .exited(0))
        XCTAssertEqual(ProcessExit.wait(try spawn("exit 3"), timeoutMilliseconds: 10_000), .exited(3))
        let killed = ProcessExit.wait(try spawn("kill -9 $$"), timeoutMilliseconds: 10_000)
        XCTAssertEqual(killed, .signaled(SIGKILL))
        XCTAssertFalse(killed?.isClean ?? true)
        XCTAssertEqual(killed?.description, "killed by signal 9 (Killed)")
        let sleeper = try spawn("exec sleep 30")
        XCTAssertNil(ProcessExit.wait(sleeper, timeoutMilliseconds: 50), "still running at the deadline")
        kill(sleeper, SIGTERM)
        XCTAssertEqual(ProcessExit.wait(sleeper, timeoutMilliseconds: 10_000), .signaled(SIGTERM))
    }
}
