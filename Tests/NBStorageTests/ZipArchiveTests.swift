import NBTestSupport
import XCTest
@testable import NBStorage

/// ZIP files written by Python's zipfile module, read back by `ZipArchive`.
final class ZipArchiveTests: XCTestCase {
    private let writer = """
        import sys, zipfile, os
        path, method, zip64 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
        if zip64:
            # Shrink zipfile's limits so the central directory and end record take their ZIP64 forms.
            zipfile.ZIP64_LIMIT = 64
            zipfile.ZIP_FILECOUNT_LIMIT = 2
        with zipfile.ZipFile(path, "w", compression=method) as z:
            for i in range(5):
                z.writestr(f"dir/entry{i}", bytes((i * 7 + j) % 256 for j in range(1000 * i + 3)))
            z.writestr("empty", b"")
        """

    private func expectedBytes(_ i: Int) -> [UInt8] { (0..<(1000 * i + 3)).map { UInt8((i * 7 + $0) % 256) } }

    private func check(method: Int, zip64: Bool) throws {
        let path = try PythonOracle.temporaryDirectory(self) + "/test.zip"
        _ = try PythonOracle.run(writer, arguments: [path, String(method), zip64 ? "1" : "0"])
        let archive = try ZipArchive(path: path)
        XCTAssertEqual(archive.names, (0..<5).map { "dir/entry\($0)" } + ["empty"])
        for i in 0..<5 {
            let bytes = try archive.withContents(of: "dir/entry\(i)", verifyChecksum: true) { Array($0) }
            XCTAssertEqual(bytes, expectedBytes(i), "entry \(i), method \(method), zip64 \(zip64)")
        }
        XCTAssertEqual(try archive.withContents(of: "empty") { $0.count }, 0)
        XCTAssertNil(try archive.withContents(of: "missing") { $0.count })
    }

    func testStored() throws { try check(method: 0, zip64: false) }
    func testDeflated() throws { try check(method: 8, zip64: false) }
    func testStoredZip64() throws { try check(method: 0, zip64: true) }
    func testDeflatedZip64() throws { try check(method: 8, zip64: true) }

    func testEveryTruncationIsATypedErrorNamingTheFile() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let path = directory + "/whole.zip"
        _ = try PythonOracle.run(writer, arguments: [path, "0", "0"])
        let whole = try Data(contentsOf: URL(fileURLWithPath: path))
        let cut = directory + "/cut.zip"
        // Cutting anywhere must never crash; most cuts lose the end record, the rest must fail on read.
        for length in stride(from: 0, to: whole.count, by: 97) {
            try whole.prefix(length).write(to: URL(fileURLWithPath: cut))
            do {
                let archive = try ZipArchive(path: cut)
                for name in archive.names { _ = try archive.withContents(of: name, verifyChecksum: true) { $0.count } }
                XCTFail("a ZIP cut to \(length) of \(whole.count) bytes opened without error")
            } catch let error as ZipError {
                XCTAssertTrue(error.description.hasPrefix(cut), "\(error)")
            }
        }
    }

    func testCorruptedStoredEntryFailsItsChecksum() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let path = directory + "/flip.zip"
        _ = try PythonOracle.run(writer, arguments: [path, "0", "0"])
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        // entry4 is the largest entry; flip a byte in the middle of its data.
        let archive = try ZipArchive(path: path)
        let entry = try XCTUnwrap(archive.entries["dir/entry4"])
        bytes[entry.dataOffset + entry.compressedSize / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
        let damaged = try ZipArchive(path: path)
        XCTAssertThrowsError(try damaged.withContents(of: "dir/entry4", verifyChecksum: true) { $0.count }) { error in
            XCTAssertEqual("\(error)", "\(path): corrupt ZIP entry 'dir/entry4': CRC-32 mismatch (data damaged)")
        }
    }
}
