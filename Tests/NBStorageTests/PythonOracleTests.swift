import Foundation
import NBTestSupport
import Synchronization
import XCTest

/// The oracle runner itself: a script that writes far more to standard error than a pipe holds must still be
/// read to its end (a runner that reads standard output first and standard error after would wait forever).
final class PythonOracleTests: XCTestCase {
    func testLargeStandardErrorDoesNotBlockTheScript() throws {
        let finished = expectation(description: "PythonOracle.run returned")
        let script = """
            import sys
            sys.stderr.write("e" * (4 << 20))
            sys.stderr.flush()
            sys.stdout.write("done")
            """
        let output = Output()
        let thread = Thread {
            let data = try? PythonOracle.run(script)
            output.text.withLock { $0 = data.map { String(decoding: $0, as: UTF8.self) } }
            finished.fulfill()
        }
        thread.start()
        wait(for: [finished], timeout: 60)
        XCTAssertEqual(output.text.withLock { $0 }, "done")
    }
}

/// What the script printed, handed from the thread that ran it.
private final class Output: Sendable {
    let text = Mutex<String?>(nil)
}
