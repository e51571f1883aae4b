import Foundation
import XCTest

/// Runs a Python snippet (numpy, zarr-python, numcodecs, noisebase: the oracles) and returns its standard
/// output. A missing interpreter or package fails the test; it never skips it. `$NB_PYTHON` picks the
/// interpreter (default `python3`).
public enum PythonOracle {
    /// Standard output is read through a pipe until the script closes it; standard error goes to a file, so a
    /// script that writes more than a pipe holds (64 KiB) to standard error cannot block while this side waits
    /// for its standard output.
    public static func run(_ script: String, arguments: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        let errorPath = NSTemporaryDirectory() + "nbserve-python-stderr-" + UUID().uuidString
        guard FileManager.default.createFile(atPath: errorPath, contents: nil, attributes: [.posixPermissions: 0o600]),
              let errorFile = FileHandle(forWritingAtPath: errorPath) else {
            XCTFail("cannot create \(errorPath) for python3's standard error", file: file, line: line)
            throw CocoaError(.fileWriteUnknown)
        }
        defer {
            try? errorFile.close()
            try? FileManager.default.removeItem(atPath: errorPath)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [ProcessInfo.processInfo.environment["NB_PYTHON"] ?? "python3", "-c", script] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = errorFile
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let errorText = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
            XCTFail("python3 failed (\(process.terminationStatus)): \(errorText.suffix(8000))", file: file, line: line)
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
