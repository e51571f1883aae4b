import Foundation
import NBVocabulary
import NBTestSupport
import NBTransport
import XCTest

/// Wire protocol v1: Swift-encoded batches read by numpy over a real socket, pyzmq-encoded batches read by
/// the Swift decoder, the reader printed in docs/protocol.md, and the decoder's refusals.
final class WireProtocolTests: XCTestCase {
    private typealias Spec = WireProtocol.TensorSpec

    private static func dtype(_ typestr: String) -> DataType {
        guard let type = DataType(typestr: typestr) else { preconditionFailure("bad test typestr \(typestr)") }
        return type
    }

    private static func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        values.flatMap { value in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
    }

    /// A batch with every dtype family, a 0-d scalar and an empty tensor, its payloads and each tensor's
    /// values as doubles (what numpy's `tolist()` gives).
    private static func sampleBatch() -> (WireProtocol.BatchHeader, [[UInt8]], [[Double]]) {
        let color: [Float] = (0..<120).map { (index: Int) -> Float in Float(index) * 0.1 - 7 }
        let half: [Float16] = [0.5, -2, 65504, 0.333]
        let matrix: [Double] = (0..<32).map { (index: Int) -> Double in Double(index) / 3 }
        let crop: [Int32] = [0, 128, -64, 2_000_000_000]
        let flags: [UInt8] = [1, 0, 1]
        let tensors: [(Spec, [UInt8], [Double])] = [
            (Spec(name: "color", dataType: dtype("<f4"), shape: [2, 3, 4, 5]),
             littleEndianBytes(color.map { $0.bitPattern }), color.map { Double($0) }),
            (Spec(name: "prev_camera.crop_offset", dataType: dtype("<i4"), shape: [2, 2]),
             littleEndianBytes(crop), crop.map { Double($0) }),
            (Spec(name: "frame_index", dataType: dtype("<i8"), shape: []), littleEndianBytes([Int64(17)]), [17]),
            (Spec(name: "mask", dataType: dtype("|b1"), shape: [3]), flags, flags.map { Double($0) }),
            (Spec(name: "half", dataType: dtype("<f2"), shape: [2, 2]),
             littleEndianBytes(half.map { $0.bitPattern }), half.map { Double($0) }),
            (Spec(name: "view_proj_mat", dataType: dtype("<f8"), shape: [2, 4, 4]),
             littleEndianBytes(matrix.map { $0.bitPattern }), matrix),
            (Spec(name: "empty", dataType: dtype("|u1"), shape: [0, 4]), [], []),
        ]
        let header = WireProtocol.BatchHeader(
            stream: 7, stage: .train, epoch: 3, batch: 17, frameIndex: 5, sequences: [812, 45], orientations: [2, 7],
            rank: 1, worldSize: 2, tensors: tensors.map(\.0))
        return (header, tensors.map(\.1), tensors.map(\.2))
    }

    private static let numpyReader = """
        import json, zmq, numpy as np
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.RCVTIMEO, 20000)
        s.connect(sys.argv[1])
        out = []
        while True:
            frames = s.recv_multipart(copy=False)
            header = json.loads(frames[0].bytes)
            entry = {"header": header}
            if header["type"] == "batch":
                assert len(frames) == 1 + len(header["tensors"])
                tensors = []
                for t, f in zip(header["tensors"], frames[1:]):
                    a = np.frombuffer(f.buffer, np.dtype(t["dtype"])).reshape(t["shape"])
                    tensors.append({"name": t["name"], "dtype": a.dtype.str, "shape": list(a.shape),
                                    "hex": a.tobytes().hex(), "values": [v.hex() for v in a.astype(np.float64).ravel().tolist()],
                                    "view": not a.flags.owndata})
                entry["tensors"] = tensors
            out.append(entry)
            if header["type"] == "end":
                break
        print(json.dumps(out))
        """

    func testSwiftBatchReadByNumpyEqualsTheOriginalArrays() throws {
        let (header, payloads, values) = Self.sampleBatch()
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.set(.sendTimeout, 20_000)
        try push.bind("tcp://127.0.0.1:*")
        let peer = try PythonPeer(self, script: Self.numpyReader, arguments: [try push.lastEndpoint])

        // The largest tensor goes zero-copy, as the daemon sends from shared memory; the rest are copied.
        let released = ReleaseCounter()
        try payloads[0].withUnsafeBytes { color in
            var parts: [ZmqPart] = [.zeroCopy(ZeroCopyBuffer(color, onRelease: released.callback()))]
            parts += payloads.dropFirst().map { .bytes($0) }
            XCTAssertTrue(try push.send(WireProtocol.batchParts(header, payloads: parts)))
            let error = WireProtocol.ErrorHeader(
                stream: 7, stage: .train, epoch: 3, batch: 18, file: "data/scène \"3\".zip", array: "color", chunk: nil,
                reason: "line one\nline two\ttab \\ backslash \u{1}")
            XCTAssertTrue(try push.send([WireProtocol.Header.error(error).encoded()]))
            XCTAssertTrue(try push.send([WireProtocol.Header.end(.init(stream: 7, stage: .train, epoch: 3, batches: 1)).encoded()]))
            _ = try peer.finish()
            XCTAssertEqual(released.wait(for: 1), 1)
        }

        let messages = try XCTUnwrap(try parseJSON(peer.output) as? [[String: Any]])
        XCTAssertEqual(messages.count, 3)
        let batchHeader = try XCTUnwrap(messages[0]["header"] as? [String: Any])
        XCTAssertEqual(batchHeader["v"] as? Int, 1)
        XCTAssertEqual(batchHeader["type"] as? String, "batch")
        XCTAssertEqual(batchHeader["stage"] as? String, "train")
        XCTAssertEqual(batchHeader["epoch"] as? Int, 3)
        XCTAssertEqual(batchHeader["batch"] as? Int, 17)
        XCTAssertEqual(batchHeader["frame_index"] as? Int, 5)
        XCTAssertEqual(batchHeader["sequences"] as? [Int], [812, 45])
        XCTAssertEqual(batchHeader["orientations"] as? [Int], [2, 7])
        XCTAssertEqual(batchHeader["rank"] as? Int, 1)
        XCTAssertEqual(batchHeader["world_size"] as? Int, 2)

        let tensors = try XCTUnwrap(messages[0]["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, header.tensors.count)
        for (index, tensor) in tensors.enumerated() {
            let spec = header.tensors[index]
            XCTAssertEqual(tensor["name"] as? String, spec.name)
            XCTAssertEqual(tensor["dtype"] as? String, spec.dataType.littleEndianTypestr, spec.name)
            XCTAssertEqual(tensor["shape"] as? [Int], spec.shape, spec.name)
            XCTAssertEqual(tensor["hex"] as? String, payloads[index].map { String(format: "%02x", $0) }.joined(), spec.name)
            // Exact values as hexadecimal floats: Foundation's JSONSerialization rounds some decimal doubles wrongly.
            XCTAssertEqual((tensor["values"] as? [String])?.map { Double($0) }, values[index], spec.name)
            XCTAssertEqual(tensor["view"] as? Bool, true, "\(spec.name): numpy copied the frame")
        }

        let error = try XCTUnwrap(messages[1]["header"] as? [String: Any])
        XCTAssertEqual(error["type"] as? String, "error")
        XCTAssertEqual(error["batch"] as? Int, 18)
        XCTAssertEqual(error["file"] as? String, "data/scène \"3\".zip")
        XCTAssertTrue(error["chunk"] is NSNull)
        XCTAssertEqual(error["reason"] as? String, "line one\nline two\ttab \\ backslash \u{1}")
        let end = try XCTUnwrap(messages[2]["header"] as? [String: Any])
        XCTAssertEqual(end as NSDictionary, ["v": 1, "type": "end", "stream": 7, "stage": "train", "epoch": 3, "batches": 1] as NSDictionary)
    }

    /// The Python reader printed in docs/protocol.md, run as it is against a Swift-sent epoch with stale
    /// messages (older streams) and the other stage's messages mixed in, as a daemon can send them.
    func testTheDocumentedReaderReadsASwiftStream() throws {
        let documentURL = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/protocol.md")
        let document = try String(contentsOf: documentURL, encoding: .utf8)
        let blocks = document.components(separatedBy: "```python\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
        let reader = try XCTUnwrap(blocks.first)
        XCTAssertLessThanOrEqual(reader.split(separator: "\n", omittingEmptySubsequences: false).count, 40)

        let (header, payloads, _) = Self.sampleBatch()
        let directory = try PythonOracle.temporaryDirectory(self)
        let context = try ZmqContext()
        let push = try ZmqSocket(.push, context: context)
        try push.set(.sendTimeout, 20_000)
        try push.bind("ipc://\(directory)/rank1.sock")
        let peer = try PythonPeer(self, script: reader + """

            socket = zmq.Context.instance().socket(zmq.PULL)
            socket.setsockopt(zmq.RCVTIMEO, 20000)
            socket.connect(sys.argv[1])
            reader = Reader(socket)
            reader.started("train", {"stream": 7})
            reader.started("val", {"stream": 9})
            for header, tensors in reader.read_epoch("train"):
                print(header["batch"], " ".join(f"{k}:{v.dtype.str}:{list(v.shape)}:{v.tobytes().hex()}" for k, v in tensors.items()))
            print("end")
            for header, tensors in reader.read_epoch("val"):
                print("val", header["batch"])
            print("val end")
            """, arguments: [try push.lastEndpoint])

        func batch(_ index: Int, stream: Int = 7, stage: WireProtocol.Stage = .train) throws -> [[UInt8]] {
            var next = header
            (next.batch, next.stream, next.stage) = (index, stream, stage)
            return try WireProtocol.encode(.init(header: .batch(next), payloads: payloads))
        }
        XCTAssertTrue(try push.send(batch(99, stream: 6)))           // an abandoned train stream: dropped
        XCTAssertTrue(try push.send(batch(0, stream: 9, stage: .val))) // the val stream: kept aside
        XCTAssertTrue(try push.send(batch(0)))
        XCTAssertTrue(try push.send(batch(5, stream: 8, stage: .val))) // an abandoned val stream: dropped
        XCTAssertTrue(try push.send(batch(1)))
        let failure = WireProtocol.ErrorHeader(stream: 7, stage: .train, epoch: 3, batch: 2, file: "a.zip", array: "color", chunk: "color/0.0", reason: "bad")
        XCTAssertTrue(try push.send(WireProtocol.encode(.init(header: .error(failure)))))
        XCTAssertTrue(try push.send(WireProtocol.encode(.init(header: .end(.init(stream: 6, stage: .train, epoch: 3, batches: 1))))))
        XCTAssertTrue(try push.send(WireProtocol.encode(.init(header: .end(.init(stream: 7, stage: .train, epoch: 3, batches: 2))))))
        XCTAssertTrue(try push.send(WireProtocol.encode(.init(header: .end(.init(stream: 9, stage: .val, epoch: 3, batches: 1))))))

        let tensorLine = zip(header.tensors, payloads).map { spec, bytes in
            let shape = "[" + spec.shape.map(String.init).joined(separator: ", ") + "]"
            return "\(spec.name):\(spec.dataType.littleEndianTypestr):\(shape):" + bytes.map { String(format: "%02x", $0) }.joined()
        }.joined(separator: " ")
        XCTAssertEqual(try peer.finish(), "0 \(tensorLine)\n1 \(tensorLine)\nend\nval 0\nval end\n")
    }

    func testPythonEncodedBatchPassesTheSwiftDecoder() throws {
        let context = try ZmqContext()
        let pull = try ZmqSocket(.pull, context: context)
        try pull.bind("tcp://127.0.0.1:*")
        // Written independently of the Swift encoder: spaces, another key order, an extra key (ignored).
        let peer = try PythonPeer(self, script: """
            import json, zmq, numpy as np
            color = (np.arange(2 * 3 * 2 * 2, dtype=np.float32) / 7).reshape(2, 3, 2, 2)
            offset = np.array([[1, -2], [3, 4]], dtype=np.int32)
            index = np.array(9, dtype=np.int64)
            tensors = [("color", color), ("crop_offset", offset), ("frame_index", index)]
            header = {"type": "batch", "v": 1, "tensors": [{"shape": list(a.shape), "name": n, "dtype": a.dtype.str} for n, a in tensors],
                      "stream": 7, "stage": "val", "epoch": 0, "batch": 4, "frame_index": 9, "sequences": [3, 1], "orientations": [7, 7],
                      "rank": 0, "world_size": 1, "future_key": {"x": [1.5]}}
            s = zmq.Context().socket(zmq.PUSH)
            s.connect(sys.argv[1])
            s.send_multipart([json.dumps(header).encode()] + [a.tobytes() for _, a in tensors])
            print(json.dumps([a.tobytes().hex() for _, a in tensors]))
            s.close(linger=20000)
            """, arguments: [try pull.lastEndpoint])
        let frames = try XCTUnwrap(try pull.receiveMultipart(timeout: .seconds(20)))
        let expectedHex = try XCTUnwrap(try parseJSON(try peer.finish()) as? [String])

        let message = try WireProtocol.decode(frames)
        guard case .batch(let batch) = message.header else { return XCTFail("\(message.header)") }
        XCTAssertEqual(batch, WireProtocol.BatchHeader(
            stream: 7, stage: .val, epoch: 0, batch: 4, frameIndex: 9, sequences: [3, 1], orientations: [7, 7], rank: 0, worldSize: 1,
            tensors: [
                Spec(name: "color", dataType: Self.dtype("<f4"), shape: [2, 3, 2, 2]),
                Spec(name: "crop_offset", dataType: Self.dtype("<i4"), shape: [2, 2]),
                Spec(name: "frame_index", dataType: Self.dtype("<i8"), shape: []),
            ]))
        XCTAssertEqual(message.payloads.map { $0.map { String(format: "%02x", $0) }.joined() }, expectedHex)
    }

    /// The examples printed in docs/protocol.md are exactly what the encoder writes.
    func testDocumentedExamplesAreTheEncodersOutput() throws {
        let batch = WireProtocol.BatchHeader(
            stream: 1796186412000001, stage: .train, epoch: 3, batch: 17, frameIndex: 5, sequences: [812, 45], orientations: [2, 7], rank: 0, worldSize: 2,
            tensors: [
                Spec(name: "color", dataType: Self.dtype("<f4"), shape: [2, 3, 256, 256, 8]),
                Spec(name: "crop_offset", dataType: Self.dtype("<i4"), shape: [2, 2]),
                Spec(name: "prev_camera.crop_offset", dataType: Self.dtype("<i4"), shape: [2, 2]),
                Spec(name: "frame_index", dataType: Self.dtype("<i8"), shape: []),
            ])
        let end = WireProtocol.EndHeader(stream: 1796186412000001, stage: .train, epoch: 3, batches: 40)
        let error = WireProtocol.ErrorHeader(
            stream: 1796186412000001, stage: .train, epoch: 3, batch: 18, file: "data/scene0003.zip", array: "color", chunk: "color/12.0.0.0.0",
            reason: "blosc header is invalid or claims more data than the 811 stored bytes")
        let encoded = [
            try WireProtocol.Header.batch(batch).encoded(payloadByteCounts: [12_582_912, 16, 16, 8]),
            try WireProtocol.Header.end(end).encoded(),
            try WireProtocol.Header.error(error).encoded(),
        ].map { "frame 0: " + String(decoding: $0, as: UTF8.self) }

        let documentURL = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/protocol.md")
        let documented = try String(contentsOf: documentURL, encoding: .utf8)
            .split(separator: "\n").filter { $0.hasPrefix("frame 0: ") }.map(String.init)
        XCTAssertEqual(documented, encoded)
    }

    func testRoundTripThroughTheSwiftDecoder() throws {
        let (header, payloads, _) = Self.sampleBatch()
        let message = WireProtocol.Message(header: .batch(header), payloads: payloads)
        XCTAssertEqual(try WireProtocol.decode(try WireProtocol.encode(message)), message)
        let error = WireProtocol.Message(header: .error(.init(
            stream: 7, stage: .val, epoch: 0, batch: 0, file: nil, array: nil, chunk: nil, reason: "\"quoted\" \u{7f} ünï")))
        XCTAssertEqual(try WireProtocol.decode(try WireProtocol.encode(error)), error)
    }

    func testLeaseMessagesRoundTripAndAreChecked() throws {
        let (header, _, _) = Self.sampleBatch()
        var offset = 4096
        let tensors = header.tensors.map { spec -> WireProtocol.SharedTensor in
            defer { offset += spec.byteCount! + 64 }
            return WireProtocol.SharedTensor(spec: spec, offset: offset)
        }
        let lease = WireProtocol.LeaseHeader(batch: header, lease: 12, tensors: tensors)
        let frames = try WireProtocol.encode(.init(header: .lease(lease)))
        XCTAssertEqual(frames.count, 1, "a lease is one frame: the tensors stay in shared memory")
        let text = String(decoding: frames[0], as: UTF8.self)
        XCTAssertTrue(text.hasPrefix(#"{"v":1,"type":"lease","stream":7,"#), text)
        XCTAssertTrue(text.contains(#""lease":12,"#) && text.contains(#""offset":4096}"#), text)
        XCTAssertEqual(try WireProtocol.decode(frames).header, .lease(lease))
        assertRefused(frames + [[1]], .frameCountMismatch(type: "lease", expected: 1, found: 2))
        var negative = lease
        negative.tensors[0].offset = -1
        XCTAssertThrowsError(try WireProtocol.Header.lease(negative).encoded()) { error in
            XCTAssertEqual(error as? WireProtocolError, .invalidField(type: "lease", field: "tensors[0].offset", reason: "-1 is negative"))
        }
        let missing = text.replacingOccurrences(of: #","offset":4096"#, with: "")
        assertRefused([Array(missing.utf8)], .missingField(type: "lease", field: "tensors[0].offset"))
    }

    // MARK: Refusals

    private func assertRefused(
        _ frames: [[UInt8]], _ expected: WireProtocolError, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try WireProtocol.decode(frames), file: file, line: line) { error in
            XCTAssertEqual(error as? WireProtocolError, expected, file: file, line: line)
        }
    }

    private func header(_ json: String) -> [UInt8] { Array(json.utf8) }

    func testDecoderRefusesAWrongVersion() {
        assertRefused([header(#"{"v":2,"type":"end","stage":"train","epoch":0,"batches":0}"#)], .unsupportedVersion(found: "2"))
        assertRefused([header(#"{"v":"1","type":"end"}"#)], .unsupportedVersion(found: #""1""#))
        assertRefused([header(#"{"v":1.5,"type":"end"}"#)], .unsupportedVersion(found: "1.5"))
        assertRefused([header(#"{"type":"end","stage":"train","epoch":0,"batches":0}"#)], .missingField(type: "header", field: "v"))
        XCTAssertEqual(
            "\(WireProtocolError.unsupportedVersion(found: "2"))",
            "wire protocol: unsupported version 2 (this reader speaks version 1)")
    }

    func testDecoderRefusesAShortTensorFrame() throws {
        let (header, payloads, _) = Self.sampleBatch()
        var frames = try WireProtocol.encode(.init(header: .batch(header), payloads: payloads))
        frames[1].removeLast()
        assertRefused(frames, .tensorSizeMismatch(tensor: "color", dtype: "<f4", shape: [2, 3, 4, 5], expectedBytes: 480, foundBytes: 479))
        XCTAssertThrowsError(try WireProtocol.decode(frames)) { error in
            XCTAssertEqual("\(error)", "wire protocol: tensor 'color' (<f4 [2, 3, 4, 5]) frame has 479 bytes, expected 480")
        }
        // A long frame is as wrong as a short one.
        frames[1] += [0, 0]
        assertRefused(frames, .tensorSizeMismatch(tensor: "color", dtype: "<f4", shape: [2, 3, 4, 5], expectedBytes: 480, foundBytes: 481))
    }

    func testDecoderRefusesAFrameCountMismatch() throws {
        let (header, payloads, _) = Self.sampleBatch()
        let frames = try WireProtocol.encode(.init(header: .batch(header), payloads: payloads))
        assertRefused(Array(frames.dropLast()), .frameCountMismatch(type: "batch", expected: 8, found: 7))
        assertRefused(frames + [[]], .frameCountMismatch(type: "batch", expected: 8, found: 9))
        let end = try WireProtocol.Header.end(.init(stream: 7, stage: .val, epoch: 1, batches: 2)).encoded()
        assertRefused([end, [1]], .frameCountMismatch(type: "end", expected: 1, found: 2))
        assertRefused([], .emptyMessage)
        XCTAssertEqual(
            "\(WireProtocolError.frameCountMismatch(type: "batch", expected: 8, found: 7))",
            "wire protocol: batch message has 7 frames, its header implies 8")
    }

    func testDecoderRefusesMalformedHeaders() {
        assertRefused([header("not json")], .malformedHeader(reason: "not JSON (8 bytes)"))
        assertRefused([[0xFF, 0xFE]], .malformedHeader(reason: "not valid UTF-8"))
        assertRefused([header("[1, 2]")], .malformedHeader(reason: "JSON [1, 2] is not an object"))
        assertRefused([header(#"{"v":1,"type":"hello"}"#)], .unknownMessageType(#""hello""#))
        assertRefused([header(#"{"v":1}"#)], .missingField(type: "header", field: "type"))
        assertRefused([header(#"{"v":1,"type":"end","stream":7,"stage":"train","epoch":0}"#)], .missingField(type: "end", field: "batches"))
        assertRefused([header(#"{"v":1,"type":"end","stage":"train","epoch":0,"batches":1}"#)], .missingField(type: "end", field: "stream"))
        assertRefused([header(#"{"v":1,"type":"end","stream":0,"stage":"train","epoch":0,"batches":1}"#)],
                      .invalidField(type: "end", field: "stream", reason: "0 is not at least 1"))
        assertRefused([header(#"{"v":1,"type":"end","stream":false,"stage":"train","epoch":0,"batches":1}"#)],
                      .invalidField(type: "end", field: "stream", reason: "false is not an integer"))
        assertRefused([header(#"{"v":1,"type":"end","stream":7,"stage":"test","epoch":0,"batches":1}"#)],
                      .invalidField(type: "end", field: "stage", reason: "'test' is neither 'train' nor 'val'"))
        assertRefused([header(#"{"v":1,"type":"end","stream":7,"stage":"val","epoch":-1,"batches":1}"#)],
                      .invalidField(type: "end", field: "epoch", reason: "-1 is negative"))
        assertRefused([header(#"{"v":1,"type":"end","stream":7,"stage":"val","epoch":true,"batches":1}"#)],
                      .invalidField(type: "end", field: "epoch", reason: "true is not an integer"))
        assertRefused([header(#"{"v":1,"type":"error","stream":7,"stage":"val","epoch":0,"batch":0,"file":1,"array":null,"chunk":null,"reason":"x"}"#)],
                      .invalidField(type: "error", field: "file", reason: "1 is neither a string nor null"))

        let batch = #"{"v":1,"type":"batch","stream":7,"stage":"train","epoch":0,"batch":0,"frame_index":0,"rank":0,"world_size":1,"sequences":[0],"orientations":[7],"tensors":[TENSOR]}"#
        func tensor(_ json: String) -> [UInt8] { header(batch.replacingOccurrences(of: "TENSOR", with: json)) }
        assertRefused([tensor(#"{"name":"c","dtype":">f4","shape":[1]}"#), [0, 0, 0, 0]],
                      .invalidField(type: "batch", field: "tensors[0].dtype",
                                    reason: "'>f4' is not a little-endian bool, integer or float typestr such as '<f4' or '|u1'"))
        assertRefused([tensor(#"{"name":"c","dtype":"<U4","shape":[1]}"#), [0, 0, 0, 0]],
                      .invalidField(type: "batch", field: "tensors[0].dtype",
                                    reason: "'<U4' is not a little-endian bool, integer or float typestr such as '<f4' or '|u1'"))
        assertRefused([tensor(#"{"name":"c","dtype":"<f4"}"#), []], .missingField(type: "batch", field: "tensors[0].shape"))
        assertRefused([tensor(#"{"name":"c","dtype":"<f4","shape":[-1]}"#), []],
                      .invalidField(type: "batch", field: "tensors[0]", reason: "'c' has an invalid shape [-1]"))
        assertRefused([tensor(#"{"name":"c","dtype":"<f4","shape":[4611686018427387904,4]}"#), []],
                      .invalidField(type: "batch", field: "tensors[0]", reason: "'c' has an invalid shape [4611686018427387904, 4]"))
        assertRefused([tensor(#"{"name":"c","dtype":"|u1","shape":[1]},{"name":"c","dtype":"|u1","shape":[1]}"#), [1], [2]],
                      .invalidField(type: "batch", field: "tensors[1]", reason: "duplicate name 'c'"))
    }

    func testEncoderRefusesWhatTheDecoderWouldRefuse() {
        let (valid, payloads, _) = Self.sampleBatch()
        let counts = payloads.map(\.count)
        func assertRefused(_ change: (inout WireProtocol.BatchHeader) -> Void, _ expected: WireProtocolError, line: UInt = #line) {
            var header = valid
            change(&header)
            XCTAssertThrowsError(try WireProtocol.Header.batch(header).encoded(payloadByteCounts: counts), line: line) { error in
                XCTAssertEqual(error as? WireProtocolError, expected, line: line)
            }
        }
        XCTAssertNoThrow(try WireProtocol.Header.batch(valid).encoded(payloadByteCounts: counts))
        assertRefused({ $0.rank = 2 }, .invalidField(type: "batch", field: "rank", reason: "2 is not in 0..<2"))
        assertRefused({ $0.worldSize = 0; $0.rank = 0 }, .invalidField(type: "batch", field: "world_size", reason: "0 is not at least 1"))
        assertRefused({ $0.orientations = [2, 8] }, .invalidField(type: "batch", field: "orientations", reason: "8 is not in 0...7"))
        assertRefused({ $0.orientations = [2] }, .invalidField(type: "batch", field: "orientations", reason: "1 orientations for 2 sequences"))
        assertRefused({ $0.sequences = [-1, 2] }, .invalidField(type: "batch", field: "sequences", reason: "-1 is negative"))
        assertRefused({ $0.tensors[1].name = "color" }, .invalidField(type: "batch", field: "tensors[1]", reason: "duplicate name 'color'"))
        assertRefused({ $0.tensors[0].name = "" }, .invalidField(type: "batch", field: "tensors[0]", reason: "empty name"))
        assertRefused({ $0.tensors[0].dataType = Self.dtype(">f4") },
                      .invalidField(type: "batch", field: "tensors[0]", reason: "'color' is big-endian; v1 is little-endian only"))
        XCTAssertThrowsError(try WireProtocol.Header.batch(valid).encoded(payloadByteCounts: Array(counts.dropLast()))) { error in
            XCTAssertEqual(error as? WireProtocolError, .frameCountMismatch(type: "batch", expected: 8, found: 7))
        }
        // batchParts checks before anything reaches libzmq.
        XCTAssertThrowsError(try WireProtocol.batchParts(valid, payloads: payloads.map { .bytes($0 + [0]) })) { error in
            XCTAssertEqual(error as? WireProtocolError,
                           .tensorSizeMismatch(tensor: "color", dtype: "<f4", shape: [2, 3, 4, 5], expectedBytes: 480, foundBytes: 481))
        }
    }
}
