import Foundation
import NBTestSupport
import NBVocabulary
import XCTest
@testable import NBStorage

/// Chunks encoded by numcodecs, decoded by our codecs.
final class CodecTests: XCTestCase {
    /// Encodes the same 4099 float32 values with each codec configuration; prints one hex line each.
    private let encoder = """
        import json, sys, numpy as np, numcodecs
        data = np.random.default_rng(5).standard_normal(4099).astype("<f4")
        configs = json.loads(sys.argv[1])
        print(data.tobytes().hex())
        for config in configs:
            print(numcodecs.get_codec(config).encode(data).hex())
        """

    private func configurations() -> [JSONValue] {
        var configs: [JSONValue] = []
        for cname in ["blosclz", "lz4", "lz4hc", "zlib", "zstd"] {
            for shuffle in 0...2 {
                configs.append(.object(["id": .string("blosc"), "cname": .string(cname), "clevel": .int(5), "shuffle": .int(Int64(shuffle))]))
            }
        }
        configs.append(.object(["id": .string("zstd"), "level": .int(3)]))
        configs.append(.object(["id": .string("lz4"), "acceleration": .int(1)]))
        configs.append(.object(["id": .string("zlib"), "level": .int(6)]))
        configs.append(.object(["id": .string("gzip"), "level": .int(6)]))
        return configs
    }

    private func hexBytes(_ line: Substring) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = line.startIndex
        while index < line.endIndex {
            let next = line.index(index, offsetBy: 2)
            bytes.append(UInt8(line[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    func testEveryCodecDecodesNumcodecsOutput() throws {
        let configs = configurations()
        let output = try PythonOracle.run(encoder, arguments: [JSONValue.array(configs).description])
        let lines = String(decoding: output, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, configs.count + 1)
        let raw = hexBytes(lines[0])
        for (config, line) in zip(configs, lines.dropFirst()) {
            let codec = try CodecRegistry.codec(for: config, file: "test", array: "a")
            var decoded = [UInt8](repeating: 0, count: raw.count)
            try hexBytes(line).withUnsafeBytes { source in
                try decoded.withUnsafeMutableBytes { try codec.decode(source, into: $0) }
            }
            XCTAssertEqual(decoded, raw, "\(config)")
        }
    }

    func testWrongSizesAndGarbageAreRejectedForEveryCodec() throws {
        let configs = configurations()
        let output = try PythonOracle.run(encoder, arguments: [JSONValue.array(configs).description])
        let lines = String(decoding: output, as: UTF8.self).split(separator: "\n")
        let size = hexBytes(lines[0]).count
        for (config, line) in zip(configs, lines.dropFirst()) {
            let codec = try CodecRegistry.codec(for: config, file: "test", array: "a")
            let encoded = hexBytes(line)
            // A destination of another size than the data holds.
            var small = [UInt8](repeating: 0, count: size - 4)
            XCTAssertThrowsError(try encoded.withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try codec.decode(source, into: $0) }
            }, "\(config) accepted a wrong size")
            // Truncated data.
            var full = [UInt8](repeating: 0, count: size)
            XCTAssertThrowsError(try Array(encoded.prefix(encoded.count / 2)).withUnsafeBytes { source in
                try full.withUnsafeMutableBytes { try codec.decode(source, into: $0) }
            }, "\(config) accepted truncated data")
        }
    }

    func testUnknownCodecIsUnsupported() {
        XCTAssertThrowsError(try CodecRegistry.codec(for: .object(["id": .string("bz2")]), file: "f.zip", array: "color")) { error in
            XCTAssertTrue("\(error)".hasPrefix("f.zip: array 'color': unsupported compressor 'bz2'"), "\(error)")
        }
    }
}
