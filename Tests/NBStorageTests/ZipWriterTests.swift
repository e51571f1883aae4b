import Foundation
import NBTestSupport
import NBVocabulary
import XCTest
@testable import NBStorage

/// Archives written by `ZipWriter` (and Zarr groups by `ZarrWriter`), read back by `ZipArchive`, Python's
/// zipfile and zarr-python.
final class ZipWriterTests: XCTestCase {
    private func contents(_ i: Int) -> [UInt8] { (0..<(1000 * i + 3)).map { UInt8((i * 7 + $0 * 13) % 256) } }

    private func writeArchive(_ path: String, zip64: ZipWriter.Zip64Policy) throws {
        let writer = try ZipWriter(path: path, zip64: zip64)
        for i in 0..<5 { try writer.add("dir/entry\(i)", bytes: contents(i)) }
        try writer.add("empty", bytes: [])
        try writer.add("ünïcode", bytes: [1, 2, 3])
        try writer.finish()
    }

    private let pythonReader = """
        import sys, zipfile, hashlib
        with zipfile.ZipFile(sys.argv[1]) as z:
            assert z.testzip() is None
            for info in z.infolist():
                assert info.compress_type == zipfile.ZIP_STORED, info
                assert info.date_time == (1980, 1, 1, 0, 0, 0), info.date_time
                assert info.external_attr >> 16 == 0o644, oct(info.external_attr)
                print(info.filename, hashlib.sha256(z.read(info)).hexdigest(), info.file_size)
        """

    private func check(zip64: ZipWriter.Zip64Policy) throws {
        let path = try PythonOracle.temporaryDirectory(self) + "/written.zip"
        try writeArchive(path, zip64: zip64)
        let archive = try ZipArchive(path: path)
        XCTAssertEqual(archive.names, (0..<5).map { "dir/entry\($0)" } + ["empty", "ünïcode"])
        for i in 0..<5 {
            XCTAssertEqual(try archive.withContents(of: "dir/entry\(i)", verifyChecksum: true) { Array($0) }, contents(i))
        }
        XCTAssertEqual(try archive.withContents(of: "empty", verifyChecksum: true) { $0.count }, 0)
        XCTAssertEqual(try archive.withContents(of: "ünïcode", verifyChecksum: true) { Array($0) }, [1, 2, 3])

        let listing = String(decoding: try PythonOracle.run(pythonReader, arguments: [path]), as: UTF8.self)
        let lines = listing.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        XCTAssertEqual(lines.map { $0[0] }, (0..<5).map { "dir/entry\($0)" } + ["empty", "ünïcode"])
        for i in 0..<5 {
            let digest = try PythonOracle.run(
                "import sys, hashlib; print(hashlib.sha256(bytes(int(x) for x in sys.argv[1].split(','))).hexdigest())",
                arguments: [contents(i).map(String.init).joined(separator: ",")])
            XCTAssertEqual(lines[i][1], String(decoding: digest, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            XCTAssertEqual(Int(lines[i][2]), contents(i).count)
        }
    }

    func testReadBackClassic() throws { try check(zip64: .whenNeeded) }
    func testReadBackZip64() throws { try check(zip64: .always) }

    func testSameEntriesSameBytes() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        try writeArchive(directory + "/a.zip", zip64: .whenNeeded)
        try writeArchive(directory + "/b.zip", zip64: .whenNeeded)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: directory + "/a.zip")),
                       try Data(contentsOf: URL(fileURLWithPath: directory + "/b.zip")))
    }

    func testNothingAppearsUntilFinishedAndAbandonedWritersLeaveNothing() throws {
        let directory = try PythonOracle.temporaryDirectory(self)
        let path = directory + "/x.zip"
        do {
            let writer = try ZipWriter(path: path)
            try writer.add("a", bytes: [1])
            XCTAssertFalse(FileManager.default.fileExists(atPath: path))
            XCTAssertThrowsError(try writer.add("a", bytes: [2])) { error in
                XCTAssertEqual(error as? ZipWriterError, .duplicateEntry(file: path, entry: "a"))
                XCTAssertTrue("\(error)".hasPrefix(path))
            }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), [])
    }

    func testUnwritableDirectoryIsATypedErrorNamingTheFile() {
        XCTAssertThrowsError(try ZipWriter(path: "/nonexistent-directory/x.zip")) { error in
            guard case .io(let failure)? = error as? ZipWriterError else { return XCTFail("\(error)") }
            XCTAssertEqual(failure.call, "open")
            XCTAssertTrue(failure.path.hasPrefix("/nonexistent-directory/"))
        }
    }

    /// A Zarr group written natively: zarr-python reads the same values, and writes the same `.zarray`.
    func testZarrArraysReadBackWithZarrPython() throws {
        let path = try PythonOracle.temporaryDirectory(self) + "/group.zip"
        let zip = try ZipWriter(path: path)
        let zarr = try ZarrWriter(zip: zip)
        // Shape not a multiple of the chunks: edge chunks are padded.
        let values = (0..<(5 * 3 * 7)).map { Float($0) * 0.5 - 3 }
        let array = try zarr.createArray("a", shape: [5, 3, 7], chunks: [2, 3, 4], dataType: DataType(typestr: "<f4")!, compressor: .noisebase)
        try values.withUnsafeBytes { try array.write($0) }
        let ints: [Int32] = [1, -2, 3, -4]
        let plain = try zarr.createArray("b", shape: [4], chunks: [4], dataType: DataType(typestr: "<i4")!, compressor: nil)
        try ints.withUnsafeBytes { try plain.write($0) }
        XCTAssertThrowsError(try ints.withUnsafeBytes { try plain.writeChunk([1], $0) }) { error in
            XCTAssertTrue("\(error)".contains("array 'b' chunk 'b/1'"), "\(error)")
        }
        try zip.finish()

        let script = """
            import sys, zarr, numcodecs, numpy as np
            store = zarr.ZipStore(sys.argv[1], mode="r")
            group = zarr.open_group(store=store, mode="r")
            a, b = group["a"], group["b"]
            assert np.array_equal(a[...], (np.arange(105, dtype=np.float32) * 0.5 - 3).reshape(5, 3, 7))
            assert np.array_equal(b[...], np.array([1, -2, 3, -4], np.int32))
            reference = zarr.group(store=zarr.MemoryStore())
            reference.create_dataset("a", shape=(5, 3, 7), chunks=(2, 3, 4), dtype="<f4",
                                     compressor=numcodecs.Blosc(cname="lz4hc", clevel=9, shuffle=1))
            reference.create_dataset("b", shape=(4,), chunks=(4,), dtype="<i4", compressor=None)
            for key in ("a/.zarray", "b/.zarray", ".zgroup"):
                assert store[key] == reference.store[key], (key, store[key], reference.store[key])
            print(sorted(store.keys()))
            """
        let keys = String(decoding: try PythonOracle.run(script, arguments: [path]), as: UTF8.self)
        XCTAssertEqual(keys.trimmingCharacters(in: .whitespacesAndNewlines),
                       "['.zgroup', 'a/.zarray', 'a/0.0.0', 'a/0.0.1', 'a/1.0.0', 'a/1.0.1', 'a/2.0.0', 'a/2.0.1', 'b/.zarray', 'b/0']")
    }
}
