import CDecodeKernels
import Foundation
import NBTestSupport
import XCTest
@testable import NBLoader

/// The building blocks of frame decoding, against numpy and noisebase's own functions.
final class DecodeTests: XCTestCase {
    /// Every float16 bit pattern widens exactly as numpy's `astype(np.float32)`.
    func testHalfToFloatMatchesNumpyForAllBitPatterns() throws {
        let output = try PythonOracle.run("""
            import sys, numpy as np
            sys.stdout.buffer.write(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32).tobytes())
            """)
        XCTAssertEqual(output.count, 65536 * 4)
        output.withUnsafeBytes { raw in
            for bits in stride(from: 0, to: 65536, by: 4) {
                let halves = [UInt16(bits), UInt16(bits + 1), UInt16(bits + 2), UInt16(bits + 3)]
                // The kernels' conversion (F16C where built for it) and the integer one of generic builds.
                for (path, widened) in [("kernels", nb_widen_halves(halves)), ("integer", nb_widen_halves_integer(halves))] {
                    let bits32 = unsafeBitCast(widened, to: SIMD4<UInt32>.self)
                    for lane in 0..<4 {
                        let expected = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: (bits + lane) * 4, as: UInt32.self))
                        if bits32[lane] != expected {
                            XCTFail("\(path): half 0x\(String(bits + lane, radix: 16)): got 0x\(String(bits32[lane], radix: 16)), numpy 0x\(String(expected, radix: 16))")
                            return
                        }
                    }
                }
            }
            // Eight at a time, as the kernels widen pairs of chunks (groups with and without NaNs, and mixed).
            for bits in stride(from: 0, to: 65536, by: 8) {
                let halves = (0..<8).map { UInt16(bits + $0) }
                var widened = [Float](repeating: 0, count: 8)
                nb_widen_halves8(halves, &widened)
                for lane in 0..<8 {
                    let expected = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: (bits + lane) * 4, as: UInt32.self))
                    if widened[lane].bitPattern != expected {
                        XCTFail("eight lanes: half 0x\(String(bits + lane, radix: 16)): got 0x\(String(widened[lane].bitPattern, radix: 16)), numpy 0x\(String(expected, radix: 16))")
                        return
                    }
                }
            }
        }
    }

    /// `FlipRotate.walk` and `cropOffset` reproduce noisebase's `apply_array` and `apply_camera`
    /// offsets for all 8 orientations.
    func testFlipRotateMatchesNoisebase() throws {
        let n = 5, height = 13, width = 20
        let output = try PythonOracle.run("""
            import sys, numpy as np, importlib.util
            spec = importlib.util.find_spec("noisebase")
            path = spec.submodule_search_locations[0] + "/projective.py"
            module_spec = importlib.util.spec_from_file_location("nb_projective", path)
            projective = importlib.util.module_from_spec(module_spec); module_spec.loader.exec_module(projective)
            n, h, w = \(n), \(height), \(width)
            index = np.arange(n * n, dtype=np.int64).reshape(1, n, n)
            for o in range(8):
                f = projective.FlipRotate(o, h, w, n)
                out = f.apply_array(index.copy())
                z = np.zeros(3, np.float32); up = np.array([0, 1, 0], np.float32)
                _, _, _, _, offset, _ = f.apply_camera(np.array([0, 0, 1], np.float32), up, z, np.eye(4, dtype=np.float32), np.array([3, 7], np.int32))
                print(o, *out.ravel(), *np.asarray(offset).ravel())
            """)
        let lines = String(decoding: output, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 8)
        for line in lines {
            let fields = line.split(separator: " ").compactMap { Int($0) }
            let orientation = fields[0]
            let expected = Array(fields[1...(n * n)])
            let flipRotate = FlipRotate(orientation: orientation, height: height, width: width, window: n)
            // The decode kernels walk the window with `walk`; `sourceRow` is its per-row form.
            let walk = flipRotate.walk
            var actual: [Int] = []
            for i in 0..<n {
                XCTAssertEqual(flipRotate.sourceRow(i).start, walk.start + i * walk.rowStep)
                for j in 0..<n { actual.append(walk.start + i * walk.rowStep + j * walk.columnStep) }
            }
            XCTAssertEqual(actual, expected, "orientation \(orientation)")
            let offset = flipRotate.cropOffset((3, 7))
            XCTAssertEqual([offset.0, offset.1], Array(fields[(n * n + 1)...]), "crop_offset, orientation \(orientation)")
        }
    }

    /// `Camera` from `StoredCamera.applying` equals noisebase's `apply_camera` (basis, offset and the
    /// view-projection matrix) on random cameras, all orientations.
    func testApplyCameraMatchesNoisebase() throws {
        let output = try PythonOracle.run("""
            import numpy as np, importlib.util
            spec = importlib.util.find_spec("noisebase")
            module_spec = importlib.util.spec_from_file_location("nb_projective", spec.submodule_search_locations[0] + "/projective.py")
            projective = importlib.util.module_from_spec(module_spec); module_spec.loader.exec_module(projective)
            rng = np.random.default_rng(3)
            for case in range(40):
                target, up, pos = (rng.normal(size=3).astype(np.float32) * 5 for _ in range(3))
                p = rng.normal(size=(4, 4)).astype(np.float32)
                offset = rng.integers(0, 200, size=2).astype(np.int32)
                o = case % 8
                W, V, U, _, off, pv = projective.FlipRotate(o, 1080, 1920, 256).apply_camera(target, up, pos, p, offset.copy())
                values = [o, *target, *up, *pos, *p.ravel(), *offset, *W, *V, *U, *np.asarray(off).ravel(), *pv.ravel()]
                print(" ".join(repr(float(v)) for v in values))
            """)
        for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
            let v = line.split(separator: " ").map { Float(Double($0)!) }
            func vector(_ at: Int) -> SIMD3<Float> { SIMD3(v[at], v[at + 1], v[at + 2]) }
            let stored = StoredCamera(
                target: vector(1), up: vector(4), position: vector(7), projection: Array(v[10..<26]),
                cropOffset: SIMD2(Int32(v[26]), Int32(v[27])))
            let camera = stored.applying(FlipRotate(orientation: Int(v[0]), height: 1080, width: 1920, window: 256))
            XCTAssertEqual(camera.forward, vector(28))
            XCTAssertEqual(camera.up, vector(31))
            XCTAssertEqual(camera.left, vector(34))
            XCTAssertEqual(camera.cropOffset, SIMD2(Int32(v[37]), Int32(v[38])))
            for (ours, theirs) in zip(camera.viewProjection, v[39..<55]) {
                XCTAssertEqual(ours, theirs, accuracy: Swift.max(abs(theirs), 1) * 1e-6, "orientation \(v[0])")
            }
        }
    }

    /// `nb_log8`/`nb_exp8` (the decode kernels' math) stay within 2 ulp of the correctly rounded result (numpy in float64,
    /// rounded to float32) over the ranges the decoder feeds them, special values included.
    func testVectorMathWithinTwoUlp() throws {
        let output = try PythonOracle.run("""
            import sys, numpy as np
            rng = np.random.default_rng(9)
            logs = np.concatenate([1 + rng.random(20000, dtype=np.float32) * 4, np.exp(rng.uniform(-80, 80, 20000)).astype(np.float32),
                                   np.array([1, 1.5, 2, np.inf, 0, -1, 1e-40, np.nan], np.float32)]).astype(np.float32)
            exps = np.concatenate([rng.uniform(-86, 86, 40000), rng.uniform(-2, 2, 4000), [0, 88.5, -100, np.nan]]).astype(np.float32)
            for name, x, f in (("log", logs, np.log), ("exp", exps, np.exp)):
                with np.errstate(all="ignore"):
                    y = f(x.astype(np.float64)).astype(np.float32)
                sys.stdout.buffer.write(np.int64(len(x)).tobytes() + x.tobytes() + y.tobytes())
            """)
        var offset = 0
        for name in ["log", "exp"] {
            let count = output.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: offset, as: Int64.self)) }
            offset += 8
            let (inputs, expected) = output.withUnsafeBytes { raw in
                ((0..<count).map { raw.loadUnaligned(fromByteOffset: offset + $0 * 4, as: Float.self) },
                 (0..<count).map { raw.loadUnaligned(fromByteOffset: offset + (count + $0) * 4, as: Float.self) })
            }
            offset += count * 8
            var worst = 0
            for start in stride(from: 0, to: count, by: 8) {
                // The last group repeats its first input in the lanes past the end.
                let group = (0..<8).map { start + $0 < count ? inputs[start + $0] : inputs[start] }
                let x = SIMD8(group)
                let y = name == "log" ? nb_log8(x) : nb_exp8(x)
                for lane in 0..<min(8, count - start) {
                    let (ours, truth) = (y[lane], expected[start + lane])
                    if truth.isNaN { XCTAssertTrue(ours.isNaN, "\(name)(\(x[lane]))"); continue }
                    if truth.isInfinite || truth == 0 { XCTAssertEqual(ours, truth, "\(name)(\(x[lane]))"); continue }
                    let ulps = abs(Int(ours.bitPattern) - Int(truth.bitPattern))
                    worst = max(worst, ulps)
                    XCTAssertLessThanOrEqual(ulps, 2, "\(name)(\(x[lane])) = \(ours), correctly rounded \(truth)")
                }
            }
            XCTAssertLessThanOrEqual(worst, 2, name)
        }
    }
}
