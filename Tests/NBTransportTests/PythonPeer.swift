import Foundation
import NBTestSupport
import XCTest

/// A pyzmq program running beside a test, for exchanges that need both sides at once (PythonOracle.run
/// waits for the script to end). Its standard output and error go to files; its standard input stays open
/// so the test can send it lines. Every script is killed by `SIGALRM` after `alarm` seconds and by the test
/// after `finish`'s timeout, so no test can hang on it.
final class PythonPeer {
    private let process = Process()
    private let input = Pipe()
    private let outputPath: String
    private let errorPath: String

    /// Starts `python3 -c PRELUDE+script arguments…` (`$NB_PYTHON` picks the interpreter).
    init(_ test: XCTestCase, script: String, arguments: [String] = [], alarm: Int = 30) throws {
        let directory = try PythonOracle.temporaryDirectory(test)
        outputPath = directory + "/stdout"
        errorPath = directory + "/stderr"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
        let prelude = """
            import signal, sys
            signal.alarm(\(alarm))

            """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [ProcessInfo.processInfo.environment["NB_PYTHON"] ?? "python3", "-c", prelude + script] + arguments
        process.standardInput = input
        process.standardOutput = FileHandle(forWritingAtPath: outputPath)
        process.standardError = FileHandle(forWritingAtPath: errorPath)
        try process.run()
        let process = process
        test.addTeardownBlock {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
    }

    /// What the script has printed so far.
    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    private var errorOutput: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }

    /// Sends one line to the script's standard input.
    func send(line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Closes the script's standard input (end of file for `sys.stdin.read()`).
    func closeInput() {
        try? input.fileHandleForWriting.close()
    }

    /// Waits until the script has printed a line equal to `line`; fails the test on timeout or early exit.
    func waitFor(line: String, timeout: TimeInterval = 20, file: StaticString = #filePath, testLine: UInt = #line) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.split(separator: "\n").contains(Substring(line)) { return }
            if !process.isRunning, !output.split(separator: "\n").contains(Substring(line)) {
                XCTFail("python peer exited (\(process.terminationStatus)) before printing '\(line)': \(errorOutput)", file: file, line: testLine)
                throw CocoaError(.executableLoad)
            }
            usleep(10_000)
        }
        XCTFail("python peer did not print '\(line)' within \(timeout) s; stderr: \(errorOutput)", file: file, line: testLine)
        throw CocoaError(.executableLoad)
    }

    /// Closes standard input, waits for the script to exit (killing it after `timeout`) and returns its
    /// standard output; a non-zero exit fails the test with the script's standard error.
    @discardableResult
    func finish(timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        closeInput()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            XCTFail("python peer still running after \(timeout) s; stderr: \(errorOutput)", file: file, line: line)
            throw CocoaError(.executableLoad)
        }
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            XCTFail("python peer failed (\(process.terminationStatus)): \(errorOutput)", file: file, line: line)
            throw CocoaError(.executableLoad)
        }
        return output
    }
}

/// The test byte pattern: byte `j` is `(j ^ j>>8 ^ j>>16 ^ seed) & 0xFF`, so a shifted, truncated or
/// reordered part never matches. `pythonPattern` computes the same with numpy.
func pattern(_ count: Int, seed: Int) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        for j in 0..<count { buffer[j] = UInt8(truncatingIfNeeded: j ^ (j >> 8) ^ (j >> 16) ^ seed) }
        initialized = count
    }
}

let pythonPattern = """
    import numpy as np
    def pattern(n, seed):
        a = np.arange(n, dtype=np.int64)
        return ((a ^ (a >> 8) ^ (a >> 16) ^ seed) & 0xFF).astype(np.uint8).tobytes()

    """

/// Parses a JSON document printed by a peer.
func parseJSON(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(text.utf8))
}
