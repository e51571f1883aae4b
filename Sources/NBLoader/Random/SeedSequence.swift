// A bit-exact port of numpy's `numpy.random.SeedSequence` (numpy/random/bit_generator.pyx), restricted to
// what `numpy.random.default_rng(seed)` does with an integer seed: no spawn key, the default pool of four
// 32-bit words. noisebase derives every shuffle and augmentation from such seeds, so the streams must
// match numpy exactly, not just statistically.

/// A failure where numpy or noisebase would raise a Python exception.
public enum NumpyRandomError: Error, Equatable, Sendable {
    /// A negative seed. numpy's `SeedSequence` raises `ValueError("expected non-negative integer")`.
    ///
    /// The payload is the seed as numpy sees it. For noisebase's `self.seed + seed` that is the int64 sum,
    /// which numpy wraps on overflow (it only warns) and then rejects as negative; the payload is that
    /// wrapped value.
    case negativeSeed(String)
    /// `integers(low, high)` with `low >= high` (`high <= 0` for `integers(high)`): numpy raises
    /// `ValueError("low >= high")` or `ValueError("high <= 0")`.
    case emptyRange(low: Int64, high: Int64)
    /// `round(len(sequence) * split)` of a NaN or infinite product: Python raises `ValueError` or
    /// `OverflowError`.
    case invalidSplit(Double)
}

extension NumpyRandomError: CustomStringConvertible {
    /// The condition in the words of the Python exception it stands for.
    public var description: String {
        switch self {
        case .negativeSeed(let seed):
            return "seed \(seed) is negative (numpy: ValueError: expected non-negative integer)"
        case .emptyRange(let low, let high):
            return "integers(\(low), \(high)) has an empty range (numpy: ValueError: low >= high)"
        case .invalidSplit(let split):
            return "split \(split) gives a non-finite round(len(sequence) * split) (Python raises)"
        }
    }
}

/// numpy's `SeedSequence` for an integer entropy, with the default pool size of four words and no spawn key.
///
/// `SeedSequence(entropy)` turns the integer into little-endian 32-bit words, hashes them into a pool of
/// four words (`mix_entropy`), and `generate_state` stretches that pool into as many words as a bit
/// generator needs.
public struct SeedSequence: Sendable, Hashable {
    /// Size of the entropy pool in 32-bit words (numpy's `DEFAULT_POOL_SIZE`).
    public static let poolSize = 4

    // Constants of O'Neill's seed_seq alternative, as numpy spells them in bit_generator.pyx.
    private static let initA: UInt32 = 0x43b0_d7e5
    private static let multA: UInt32 = 0x931e_8875
    private static let initB: UInt32 = 0x8b51_f9dd
    private static let multB: UInt32 = 0x58f3_8ded
    private static let mixMultL: UInt32 = 0xca01_f9dd
    private static let mixMultR: UInt32 = 0x4973_f715
    private static let xshift: UInt32 = 16

    /// The mixed pool, kept inline so that seeding a generator does not allocate.
    private var mixed: SIMD4<UInt32>

    /// The mixed entropy pool, numpy's `SeedSequence.pool`.
    public var pool: [UInt32] { [mixed[0], mixed[1], mixed[2], mixed[3]] }

    /// `SeedSequence(entropy)` for a non-negative integer that fits in 64 bits.
    public init(entropy: UInt64) {
        let low = UInt32(truncatingIfNeeded: entropy)
        let high = UInt32(truncatingIfNeeded: entropy >> 32)
        // numpy's `_int_to_uint32_array` emits only the words the value needs, and one word for zero.
        if high == 0 {
            self.init(entropyWords: CollectionOfOne(low))
        } else {
            self.init(entropyWords: [low, high])
        }
    }

    /// `SeedSequence(entropy)` for an integer of any width, including arbitrary-precision types.
    ///
    /// - Throws: ``NumpyRandomError/negativeSeed(_:)`` for a negative value, as numpy does.
    public init<T: BinaryInteger>(integer entropy: T) throws(NumpyRandomError) {
        guard entropy >= 0 else { throw .negativeSeed(String(entropy)) }
        var words: [UInt32] = []
        for word in entropy.words {
            var rest = word
            for _ in 0..<(UInt.bitWidth / 32) {
                words.append(UInt32(truncatingIfNeeded: rest))
                rest >>= 32
            }
        }
        // `words` is two's complement, so a non-negative value may carry zero words above its top bit;
        // numpy's `_int_to_uint32_array` stops at the highest non-zero word.
        while words.count > 1, words.last == 0 { words.removeLast() }
        if words.isEmpty { words = [0] }
        self.init(entropyWords: words)
    }

    /// `SeedSequence(np.array(words, dtype=np.uint32))`: the entropy is taken as these words verbatim.
    ///
    /// An integer entropy `n` corresponds to its little-endian 32-bit words with no zero words above the
    /// highest non-zero one (`[0]` for zero); ``init(integer:)`` performs that conversion.
    public init(entropyWords: some Sequence<UInt32>) {
        var hashConst = Self.initA
        var pool = SIMD4<UInt32>()
        var words = entropyWords.makeIterator()
        var exhausted = false

        // Fill the pool from the first words, hashing zeros once the entropy runs out.
        for i in 0..<Self.poolSize {
            var word: UInt32 = 0
            if !exhausted {
                if let next = words.next() { word = next } else { exhausted = true }
            }
            pool[i] = Self.hashmix(word, &hashConst)
        }
        // Mix every pool word into every other one so that late words affect early ones.
        for source in 0..<Self.poolSize {
            for destination in 0..<Self.poolSize where source != destination {
                pool[destination] = Self.mix(pool[destination], Self.hashmix(pool[source], &hashConst))
            }
        }
        // Words beyond the pool size are mixed into every pool word, re-hashed for each.
        if !exhausted {
            while let word = words.next() {
                for destination in 0..<Self.poolSize {
                    pool[destination] = Self.mix(pool[destination], Self.hashmix(word, &hashConst))
                }
            }
        }
        mixed = pool
    }

    /// `generate_state(words, dtype=np.uint32)`: `words` 32-bit words stretched from the pool.
    public func generateState(words count: Int) -> [UInt32] {
        precondition(count >= 0, "generateState(words:) needs a non-negative count")
        var state: [UInt32] = []
        state.reserveCapacity(count)
        var hashConst = Self.initB
        for i in 0..<count {
            state.append(Self.stateWord(mixed[i % Self.poolSize], &hashConst))
        }
        return state
    }

    /// `generate_state(words, dtype=np.uint64)`: twice as many 32-bit words, paired little-endian
    /// (the first of each pair is the low half), which numpy does on every platform.
    public func generateState64(words count: Int) -> [UInt64] {
        precondition(count >= 0, "generateState64(words:) needs a non-negative count")
        let halves = generateState(words: 2 * count)
        return (0..<count).map { UInt64(halves[2 * $0]) | UInt64(halves[2 * $0 + 1]) << 32 }
    }

    /// The four 64-bit words `PCG64` seeds itself with (`generate_state(4, np.uint64)`), without allocating.
    func pcg64SeedWords() -> SIMD4<UInt64> {
        var hashConst = Self.initB
        var out = SIMD4<UInt64>()
        for i in 0..<4 {
            let low = Self.stateWord(mixed[(2 * i) % Self.poolSize], &hashConst)
            let high = Self.stateWord(mixed[(2 * i + 1) % Self.poolSize], &hashConst)
            out[i] = UInt64(low) | UInt64(high) << 32
        }
        return out
    }

    /// One step of `generate_state`'s loop; the multiplier evolves across calls through `hashConst`.
    @inline(__always)
    private static func stateWord(_ poolWord: UInt32, _ hashConst: inout UInt32) -> UInt32 {
        var value = poolWord ^ hashConst
        hashConst = hashConst &* multB
        value = value &* hashConst
        return value ^ (value >> xshift)
    }

    /// numpy's `hashmix`: the multiplier is input-output and changes with every call.
    @inline(__always)
    private static func hashmix(_ value: UInt32, _ hashConst: inout UInt32) -> UInt32 {
        var value = value ^ hashConst
        hashConst = hashConst &* multA
        value = value &* hashConst
        return value ^ (value >> xshift)
    }

    /// numpy's `mix`.
    @inline(__always)
    private static func mix(_ x: UInt32, _ y: UInt32) -> UInt32 {
        let result = mixMultL &* x &- mixMultR &* y
        return result ^ (result >> xshift)
    }
}
