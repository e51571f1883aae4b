import Foundation
import XCTest

@testable import NBLoader

/// Checks the numpy random port against the real numpy (and noisebase's real `Shuffler`) at test time.
///
/// Every expected value comes from running `python3` (or `$NB_PYTHON`) with numpy 2.x; none is written
/// here. A missing interpreter, numpy or noisebase fails the tests rather than skipping them, because the
/// port is only worth anything while it is proven against the original.
final class RandomTests: XCTestCase {

    // MARK: SeedSequence and PCG64

    func testSeedSequenceMatchesNumpy() throws {
        let lines = try Self.runPython(Self.prelude + Self.seedList + #"""
            for seed in seeds:
                ss = np.random.SeedSequence(seed)
                emit("SS", seed, csv(words(seed)), csv(ss.pool), csv(ss.generate_state(10)),
                     csv(ss.generate_state(5, np.uint64)))
            """#)
        var checked = 0
        for fields in lines where fields.first == "SS" {
            let seed = String(fields[1])
            let words = try Self.csv(fields[2], as: UInt32.self)
            let sequence = SeedSequence(entropyWords: words)
            XCTAssertEqual(sequence.pool, try Self.csv(fields[3], as: UInt32.self), "pool for seed \(seed)")
            XCTAssertEqual(
                sequence.generateState(words: 10), try Self.csv(fields[4], as: UInt32.self),
                "generate_state(10) for seed \(seed)")
            XCTAssertEqual(
                sequence.generateState64(words: 5), try Self.csv(fields[5], as: UInt64.self),
                "generate_state(5, np.uint64) for seed \(seed)")
            try assertIntegerEntropyPaths(seed: seed, words: words, expected: sequence)
            checked += 1
        }
        XCTAssertGreaterThan(checked, 200, "numpy printed too few SeedSequence cases")
    }

    /// The integer initialisers must split a seed into the same words numpy does.
    private func assertIntegerEntropyPaths(seed: String, words: [UInt32], expected: SeedSequence) throws {
        if words.count <= 2 {
            let value = words.reversed().reduce(UInt64(0)) { $0 << 32 | UInt64($1) }
            XCTAssertEqual(SeedSequence(entropy: value), expected, "SeedSequence(entropy:) for \(seed)")
            XCTAssertEqual(try SeedSequence(integer: value), expected, "SeedSequence(integer: UInt64) for \(seed)")
            if let signed = Int64(exactly: value) {
                XCTAssertEqual(try SeedSequence(integer: signed), expected, "SeedSequence(integer: Int64) for \(seed)")
            }
        }
        if words.count <= 4, #available(macOS 15.0, iOS 18.0, *) {
            let value = words.reversed().reduce(UInt128(0)) { $0 << 32 | UInt128($1) }
            XCTAssertEqual(try SeedSequence(integer: value), expected, "SeedSequence(integer: UInt128) for \(seed)")
        }
    }

    func testNegativeEntropyIsRejectedLikeNumpy() throws {
        let lines = try Self.runPython(Self.prelude + #"""
            for seed in (-1, -2**40):
                try:
                    np.random.SeedSequence(seed)
                    emit("NEG", seed, "ok")
                except ValueError:
                    emit("NEG", seed, "ValueError")
            """#)
        let cases = lines.filter { $0.first == "NEG" }
        XCTAssertEqual(cases.count, 2)
        for fields in cases {
            XCTAssertEqual(fields[2], "ValueError", "numpy accepted seed \(fields[1])")
            let seed = try Self.parse(fields[1], as: Int64.self)
            XCTAssertThrowsError(try SeedSequence(integer: seed)) { error in
                XCTAssertEqual(error as? NumpyRandomError, .negativeSeed(String(seed)))
            }
        }
    }

    func testPCG64MatchesNumpy() throws {
        let lines = try Self.runPython(Self.prelude + Self.seedList + #"""
            for seed in seeds:
                bg = np.random.PCG64(seed)
                st = bg.state["state"]
                seeded = [st["state"] >> 64, st["state"] & M64, st["inc"] >> 64, st["inc"] & M64]
                raw = bg.random_raw(6)
                g = np.random.Generator(bg)
                halves = [g.integers(0, 2**32) for _ in range(3)]
                after = bg.state
                emit("PCG", seed, csv(words(seed)), csv(seeded), csv(raw), csv(halves),
                     after["has_uint32"], after["uinteger"])
            """#)
        var checked = 0
        for fields in lines where fields.first == "PCG" {
            let seed = String(fields[1])
            let words = try Self.csv(fields[2], as: UInt32.self)
            let seeded = try Self.csv(fields[3], as: UInt64.self)
            var generator = PCG64(seedSequence: SeedSequence(entropyWords: words))
            XCTAssertEqual(
                [generator.stateHigh, generator.stateLow, generator.incrementHigh, generator.incrementLow], seeded,
                "seeded state for \(seed)")
            if words.count <= 2 {
                let value = words.reversed().reduce(UInt64(0)) { $0 << 32 | UInt64($1) }
                XCTAssertEqual(PCG64(seed: value), generator, "PCG64(seed:) for \(seed)")
            }
            XCTAssertEqual(
                PCG64(
                    stateHigh: seeded[0], stateLow: seeded[1], incrementHigh: seeded[2], incrementLow: seeded[3]),
                generator, "pcg64_set_state for \(seed)")
            let raw = (0..<6).map { _ in generator.nextUInt64() }
            XCTAssertEqual(raw, try Self.csv(fields[4], as: UInt64.self), "random_raw for \(seed)")
            let halves = (0..<3).map { _ in UInt64(generator.nextUInt32()) }
            XCTAssertEqual(halves, try Self.csv(fields[5], as: UInt64.self), "buffered 32-bit draws for \(seed)")
            XCTAssertEqual(generator.hasUInt32, try Self.parse(fields[6], as: Int.self) != 0, "has_uint32 for \(seed)")
            XCTAssertEqual(
                generator.bufferedUInt32, try Self.parse(fields[7], as: UInt32.self), "uinteger for \(seed)")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 200, "numpy printed too few PCG64 cases")
    }

    // MARK: Generator.integers

    func testIntegersMatchNumpy() throws {
        let lines = try Self.runPython(Self.prelude + Self.seedList + #"""
            ranges = [(0, 2**31), (0, 8), (0, 1), (0, 2), (0, 3), (0, 7), (-10, 10), (5, 6), (-1000, 1000),
                      (0, 2**31 + 1), (0, 3 * 2**30), (0, 2**32 - 2), (0, 2**32 - 1), (0, 2**32), (0, 2**32 + 1),
                      (0, 2**32 + 2), (7, 2**32 + 7), (-2**31, 2**31), (0, 2**33 + 1), (0, 2**40),
                      (-2**63, 2**62), (0, 2**63 - 1), (0, 2**63), (-2**63, 2**63 - 1), (-2**63, 2**63),
                      (2**62, 2**63), (-2**63, -2**63 + 1), (2**63 - 2, 2**63),
                      # 64-bit Lemire with frequent rejections (threshold 2**62 - 1 and 2**61 + 1).
                      (-2**63, 2**62 + 1), (-2**63 + 5, 2**63 - 2**61 + 3)]
            uint64_seeds = [s for s in seeds if s < 2**64]
            for seed in uint64_seeds:
                # Mixed ranges on one generator: the 32-bit buffer carries over between calls.
                g = np.random.default_rng(seed)
                order = list(ranges) * 2
                r.shuffle(order)
                entries = []
                for low, high in order:
                    single = low == 0 and r.random() < 0.5
                    value = g.integers(high) if single else g.integers(low, high)
                    entries.append(f"{int(single)}:{low}:{high}:{value}")
                emit("MIX", seed, *entries)
            for seed in uint64_seeds[:40]:
                for low, high in ranges:
                    g = np.random.default_rng(seed)
                    emit("REP", seed, low, high, csv(g.integers(low, high) for _ in range(40)))
            """#)
        var draws = 0
        for fields in lines where fields.first == "MIX" {
            let seed = try Self.parse(fields[1], as: UInt64.self)
            var generator = NumpyGenerator(seed: seed)
            for entry in fields.dropFirst(2) {
                let parts = entry.split(separator: ":")
                let single = parts[0] == "1"
                let low = try Self.parse(parts[1], as: Int64.self)
                let high = parts[2]
                let got: Int64
                if single, let open = Int64(high) {
                    got = generator.integers(open)
                } else {
                    got = draw(&generator, low: low, high: high)
                }
                XCTAssertEqual(got, try Self.parse(parts[3], as: Int64.self), "seed \(seed), integers \(entry)")
                draws += 1
            }
        }
        for fields in lines where fields.first == "REP" {
            let seed = try Self.parse(fields[1], as: UInt64.self)
            let low = try Self.parse(fields[2], as: Int64.self)
            var generator = NumpyGenerator(seed: seed)
            let expected = try Self.csv(fields[4], as: Int64.self)
            let got = expected.map { _ in draw(&generator, low: low, high: fields[3]) }
            XCTAssertEqual(got, expected, "seed \(seed), 40 draws of integers(\(low), \(fields[3]))")
            draws += expected.count
        }
        XCTAssertGreaterThan(draws, 20_000, "numpy printed too few integers cases")
    }

    /// `integers(low, high)` where Python's `high` may be 2**63, which Int64 expresses as a closed bound.
    private func draw(_ generator: inout NumpyGenerator, low: Int64, high: Substring) -> Int64 {
        if let open = Int64(high) {
            return generator.integers(low, open)
        }
        precondition(high == "9223372036854775808", "unexpected upper bound \(high)")
        return generator.integers(low, Int64.max, endpoint: true)
    }

    // MARK: Generator.shuffle

    func testShuffleMatchesNumpy() throws {
        let lines = try Self.runPython(Self.prelude + #"""
            sizes = list(range(0, 1101)) + [4096, 65537, 100000]
            for n in sizes:
                seed = n if n % 3 == 0 else r.getrandbits(r.choice([8, 31, 32, 63, 64]))
                g = np.random.default_rng(seed)
                a = np.arange(n)
                g.shuffle(a)
                # Draws after the shuffle show whether the 32-bit buffer was left as numpy leaves it.
                emit("SHUF", seed, n, g.integers(0, 2**32), g.integers(0, 2**40), csv(a))
            """#)
        var checked = 0
        for fields in lines where fields.first == "SHUF" {
            let seed = try Self.parse(fields[1], as: UInt64.self)
            let n = try Self.parse(fields[2], as: Int64.self)
            var generator = NumpyGenerator(seed: seed)
            var array = Array(0..<n)
            generator.shuffle(&array)
            XCTAssertEqual(array, try Self.csv(fields[5], as: Int64.self), "shuffle(arange(\(n))) with seed \(seed)")
            XCTAssertEqual(generator.integers(0, 1 << 32), try Self.parse(fields[3], as: Int64.self), "n \(n)")
            XCTAssertEqual(generator.integers(0, 1 << 40), try Self.parse(fields[4], as: Int64.self), "n \(n)")
            checked += 1
        }
        XCTAssertEqual(checked, 1104, "numpy printed too few shuffle cases")
    }

    /// The draws depend only on the length, so every collection kind must end up in the same order as an
    /// `[Int64]`, whose order the numpy comparison above pins down.
    func testShuffleIsGenericOverCollections() {
        var reference = NumpyGenerator(seed: 7)
        var int64s: [Int64] = Array(0..<50)
        reference.shuffle(&int64s)

        var generator = NumpyGenerator(seed: 7)
        var ints = Array(0..<50)
        generator.shuffle(&ints)
        XCTAssertEqual(ints.map(Int64.init), int64s)
        XCTAssertEqual(generator, reference)

        // A collection without contiguous storage takes the index-based path.
        generator = NumpyGenerator(seed: 7)
        var indexed = IndexedOnly(elements: Array(0..<50))
        generator.shuffle(&indexed)
        XCTAssertEqual(indexed.elements, int64s)
        XCTAssertEqual(generator, reference)
    }

    /// A mutable random-access collection that offers no contiguous storage.
    private struct IndexedOnly: MutableCollection, RandomAccessCollection {
        var elements: [Int64]
        var startIndex: Int { 0 }
        var endIndex: Int { elements.count }
        subscript(position: Int) -> Int64 {
            get { elements[position] }
            set { elements[position] = newValue }
        }
    }

    // MARK: noisebase Shuffler

    func testShufflerMatchesNoisebase() throws {
        let lines = try Self.runPython(Self.prelude + Self.loadShuffler + #"""
            def attempt(f):
                try:
                    return f()
                except (ValueError, OverflowError):
                    return "ERR"

            # Python's round() goes half to even, slicing counts a negative index from the end, and a
            # non-finite product raises; these fixed cases pin those down on top of the random ones.
            edge_splits = [(10, 0.25, 0), (6, 0.25, 0), (2, 0.25, 0), (2, 0.25, 8), (10, 0.35, 0),
                           (10, 0.45, 0), (3, 0.5, 0), (5, 0.5, 0), (7, 0.5, 0), (10, -0.25, 0), (10, -0.25, -3),
                           (10, -0.35, -4), (10, -5.0, -20), (10, 1e300, 0), (10, -1e300, -3),
                           (10, float("nan"), 0), (10, float("inf"), 0), (0, float("nan"), 0)]

            user_seeds = [0, 1, 2, 42, 1234, 2**31 - 1, 2**32 + 5, 2**63 - 1]
            user_seeds += [r.getrandbits(r.choice([8, 16, 31, 32, 48, 63])) for _ in range(100)]
            for user_seed in user_seeds:
                sh = Shuffler(user_seed)
                emit("SH", user_seed, sh.seed)
                for k in (-1, 0, 1, 2, 7, r.getrandbits(20)):
                    n = r.choice([0, 1, 2, 3, 5, 10, 17, 64, 100, 257, 1000])
                    a = np.arange(n)
                    ok = attempt(lambda: sh.shuffle(k, a))
                    emit("SHSHUF", user_seed, k, n, "ERR" if ok == "ERR" else csv(a))
                cases = [(n, split, r.random() < 0.5, smallest) for n, split, smallest in edge_splits]
                for _ in range(6):
                    n = r.choice([0, 1, 2, 4, 6, 10, 16, 17, 20, 100, 257, 1000])
                    split = r.choice([0.0, 0.05, 0.1, 0.125, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, -0.1, -0.25])
                    cases.append((n, split, r.random() < 0.7, r.choice([0, 1, 4, 8, 32, 2000, -3])))
                for n, split, shuffled, smallest in cases:
                    a = np.arange(n)
                    res = attempt(lambda: sh.split(-1, a, split, shuffled, smallest))
                    if res == "ERR":
                        emit("SHSPLIT", user_seed, n, repr(split), int(shuffled), smallest, "ERR", csv(a))
                    else:
                        head, tail = res
                        emit("SHSPLIT", user_seed, n, repr(split), int(shuffled), smallest, len(head),
                             csv(head), csv(tail), csv(a))
                for epoch in range(3):
                    d = sh.derive(epoch)
                    emit("SHDER", user_seed, epoch, d.seed)
                    emit("SHORI", user_seed, epoch, csv(d.integers(i, 0, 8) for i in range(20)))
                for k, args in ((-1, (8,)), (3, (2**31,)), (5, (-7, 9)), (11, (0, 2**40)), (0, (0,)), (1, (5, 5))):
                    emit("SHINT", user_seed, k, csv(args), attempt(lambda: sh.integers(k, *args)))
                emit("SHDERERR", user_seed, -(sh.seed + 1), attempt(lambda: sh.derive(-(int(sh.seed) + 1)).seed))
            emit("SHNEG", -5, attempt(lambda: Shuffler(-5).seed))
            """#)
        var counts: [Substring: Int] = [:]
        var shufflers: [Substring: Shuffler] = [:]
        for fields in lines {
            guard let tag = fields.first, tag.hasPrefix("SH") else { continue }
            counts[tag, default: 0] += 1
            if tag == "SHNEG" {
                XCTAssertEqual(fields[2], "ERR")
                XCTAssertThrowsError(try Shuffler(seed: try Self.parse(fields[1], as: Int64.self)))
                continue
            }
            if tag == "SH" {
                let shuffler = try Shuffler(seed: try Self.parse(fields[1], as: Int64.self))
                XCTAssertEqual(shuffler.seed, try Self.parse(fields[2], as: Int64.self), "Shuffler(\(fields[1])).seed")
                XCTAssertEqual(Shuffler(derivedSeed: shuffler.seed), shuffler)
                shufflers[fields[1]] = shuffler
                continue
            }
            let shuffler = try XCTUnwrap(shufflers[fields[1]], "no SH line before \(fields)")
            try checkShufflerLine(shuffler, tag: tag, fields: fields)
        }
        for tag in ["SH", "SHSHUF", "SHSPLIT", "SHDER", "SHORI", "SHINT", "SHDERERR", "SHNEG"] {
            XCTAssertGreaterThan(counts[Substring(tag), default: 0], 0, "noisebase printed no \(tag) case")
        }
    }

    private func checkShufflerLine(_ shuffler: Shuffler, tag: Substring, fields: [Substring]) throws {
        let context = fields.prefix(7).joined(separator: " ")
        switch tag {
        case "SHSHUF":
            let k = try Self.parse(fields[2], as: Int64.self)
            var array = Array(0..<(try Self.parse(fields[3], as: Int64.self)))
            if fields[4] == "ERR" {
                XCTAssertThrowsError(try shuffler.shuffle(k, &array), context)
            } else {
                try shuffler.shuffle(k, &array)
                XCTAssertEqual(array, try Self.csv(fields[4], as: Int64.self), context)
            }
        case "SHSPLIT":
            var array = Array(0..<(try Self.parse(fields[2], as: Int64.self)))
            let split = try XCTUnwrap(Double(String(fields[3])), context)
            let shuffled = fields[4] == "1"
            let smallest = try Self.parse(fields[5], as: Int.self)
            if fields[6] == "ERR" {
                XCTAssertThrowsError(
                    try shuffler.split(-1, &array, split, shuffled: shuffled, smallest: smallest), context)
                // Python shuffles in place before round() raises.
                XCTAssertEqual(array, try Self.csv(fields[7], as: Int64.self), "in-place shuffle, \(context)")
                return
            }
            let (head, tail) = try shuffler.split(-1, &array, split, shuffled: shuffled, smallest: smallest)
            XCTAssertEqual(head.count, try Self.parse(fields[6], as: Int.self), context)
            XCTAssertEqual(head, try Self.csv(fields[7], as: Int64.self), context)
            XCTAssertEqual(tail, try Self.csv(fields[8], as: Int64.self), context)
            XCTAssertEqual(array, try Self.csv(fields[9], as: Int64.self), "in-place shuffle, \(context)")
        case "SHDER":
            let derived = try shuffler.derive(try Self.parse(fields[2], as: Int64.self))
            XCTAssertEqual(derived.seed, try Self.parse(fields[3], as: Int64.self), context)
        case "SHORI":
            let derived = try shuffler.derive(try Self.parse(fields[2], as: Int64.self))
            let orientations = try (0..<20).map { index throws(NumpyRandomError) in
                try derived.integers(Int64(index), 0, 8)
            }
            XCTAssertEqual(orientations, try Self.csv(fields[3], as: Int64.self), context)
        case "SHINT":
            let k = try Self.parse(fields[2], as: Int64.self)
            let args = try Self.csv(fields[3], as: Int64.self)
            let call = { () throws(NumpyRandomError) -> Int64 in
                args.count == 1 ? try shuffler.integers(k, args[0]) : try shuffler.integers(k, args[0], args[1])
            }
            if fields[4] == "ERR" {
                XCTAssertThrowsError(try call(), context) { error in
                    XCTAssertEqual(
                        error as? NumpyRandomError,
                        .emptyRange(low: args.count == 1 ? 0 : args[0], high: args[args.count - 1]))
                }
            } else {
                XCTAssertEqual(try call(), try Self.parse(fields[4], as: Int64.self), context)
            }
        case "SHDERERR":
            XCTAssertEqual(fields[3], "ERR", "noisebase accepted a negative derived seed: \(context)")
            let offset = try Self.parse(fields[2], as: Int64.self)
            XCTAssertThrowsError(try shuffler.derive(offset), context) { error in
                XCTAssertEqual(error as? NumpyRandomError, .negativeSeed("-1"))
            }
        default:
            XCTFail("unknown line \(context)")
        }
    }

    // MARK: Running numpy

    /// Shared Python: numpy (2.x required), a deterministic `random.Random`, and line output helpers.
    private static let prelude = #"""
        import sys, random
        try:
            import numpy as np
        except ImportError as error:
            print("MISSING numpy:", error)
            sys.exit(3)
        if int(np.__version__.split(".")[0]) < 2:
            print("MISSING numpy 2.x, found", np.__version__)
            sys.exit(3)
        M64 = 2**64 - 1
        r = random.Random(20240601)
        def emit(*fields):
            print(" ".join(str(f) for f in fields))
        def csv(values):
            return ",".join(str(int(v)) for v in values) or "-"
        def words(n):
            out = []
            while n > 0:
                out.append(n & 0xFFFFFFFF)
                n >>= 32
            return out or [0]

        """#

    /// Seeds from 0 to far beyond 128 bits (more words than the pool), plus 200 pseudo-random ones.
    private static let seedList = #"""
        seeds = [0, 1, 2, 42, 12345, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1, 2**63,
                 2**64 - 1, 2**64, 2**64 + 1, 2**96 - 1, 2**100 + 12345, 2**128 - 1, 2**128, 2**160 + 99,
                 2**200 + 7, 3**150]
        seeds += [r.getrandbits(r.choice([1, 8, 16, 31, 32, 33, 48, 63, 64, 65, 100, 128, 129, 256]))
                  for _ in range(200)]

        """#

    /// noisebase's package `__init__` needs hydra and `misc.py` imports torch, neither of which the
    /// Shuffler uses; load `misc.py` by path with a stub `torch` module.
    private static let loadShuffler = #"""
        import importlib.util, os, types
        spec = importlib.util.find_spec("noisebase")
        if spec is None or not spec.submodule_search_locations:
            print("MISSING noisebase (pip install --no-deps noisebase==1.1.1)")
            sys.exit(3)
        sys.modules.setdefault("torch", types.ModuleType("torch"))
        misc_path = os.path.join(list(spec.submodule_search_locations)[0], "torch", "misc.py")
        misc_spec = importlib.util.spec_from_file_location("noisebase_torch_misc", misc_path)
        misc = importlib.util.module_from_spec(misc_spec)
        misc_spec.loader.exec_module(misc)
        Shuffler = misc.Shuffler

        """#

    private struct PythonFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs `script` with `$NB_PYTHON` (default `python3` on `PATH`) and splits its output into fields.
    private static func runPython(
        _ script: String, file: StaticString = #filePath, line: UInt = #line
    ) throws -> [[Substring]] {
        let interpreter = ProcessInfo.processInfo.environment["NB_PYTHON"] ?? "python3"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [interpreter, "-c", script]
        let stdout = Pipe()
        let stderrURL = FileManager.default.temporaryDirectory
            .appendingPathComponent("nb-random-tests-\(UUID().uuidString).stderr")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: stderrURL) }
        let stderr = try FileHandle(forWritingTo: stderrURL)
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        let requirement = "these tests compare against real numpy 2.x and noisebase: install python3 with numpy"
            + " (and noisebase==1.1.1 --no-deps), or point NB_PYTHON at such an interpreter"
        do {
            try process.run()
        } catch {
            let message = "could not start \(interpreter): \(error); \(requirement)"
            XCTFail(message, file: file, line: line)
            throw PythonFailure(description: message)
        }
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try stderr.close()
        let text = String(decoding: output, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let errorText = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
            let missing = text.split(separator: "\n").filter { $0.hasPrefix("MISSING") }.joined(separator: "; ")
            let message = "\(interpreter) exited with status \(process.terminationStatus): "
                + "\(missing.isEmpty ? String(errorText.suffix(2000)) : missing); \(requirement)"
            XCTFail(message, file: file, line: line)
            throw PythonFailure(description: message)
        }
        return text.split(separator: "\n").map { $0.split(separator: " ") }
    }

    private static func parse<T: FixedWidthInteger>(_ field: Substring, as _: T.Type) throws -> T {
        guard let value = T(field) else {
            throw PythonFailure(description: "cannot read \(field) as \(T.self)")
        }
        return value
    }

    /// A comma-separated list; Python prints `-` for an empty one so that fields never vanish.
    private static func csv<T: FixedWidthInteger>(_ field: Substring, as type: T.Type) throws -> [T] {
        if field == "-" { return [] }
        return try field.split(separator: ",").map { try parse($0, as: type) }
    }
}
