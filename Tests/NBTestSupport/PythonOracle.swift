import Foundation
import XCTest

/// Runs a Python snippet (numpy, zarr-python, numcodecs, noisebase: the oracles) and returns its standard
/// output. A missing interpreter or package fails the test; it never skips it. `$NB_PYTHON` picks the
/// interpreter (default `python3`).
public enum PythonOracle {
    public static func run(_ script: String, arguments: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [ProcessInfo.processInfo.environment["NB_PYTHON"] ?? "python3", "-c", script] + arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let errorText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            XCTFail("python3 failed (\(process.terminationStatus)): \(errorText)", file: file, line: line)
            throw CocoaError(.executableLoad)
        }
        return data
    }

    /// A fresh temporary directory, removed when the test ends.
    public static func temporaryDirectory(_ test: XCTestCase) throws -> String {
        let path = NSTemporaryDirectory() + "nbserve-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }
}
