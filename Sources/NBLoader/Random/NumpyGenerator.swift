// A bit-exact port of the parts of numpy's `numpy.random.Generator` (numpy/random/_generator.pyx,
// _bounded_integers.pyx.in, src/distributions/distributions.c) that noisebase calls: scalar `integers`
// with the default int64 dtype, and `shuffle` of a one-dimensional array.

/// numpy's `Generator` over a ``PCG64``, as `numpy.random.default_rng(seed)` builds it.
public struct NumpyGenerator: Sendable, Hashable {
    /// The underlying bit generator (numpy's `Generator.bit_generator`).
    public var bitGenerator: PCG64

    /// `Generator(bit_generator)`.
    public init(bitGenerator: PCG64) {
        self.bitGenerator = bitGenerator
    }

    /// `numpy.random.default_rng(seed)` for a non-negative integer seed.
    public init(seed: UInt64) {
        self.init(bitGenerator: PCG64(seed: seed))
    }

    /// `numpy.random.default_rng(seed_sequence)`.
    public init(seedSequence: SeedSequence) {
        self.init(bitGenerator: PCG64(seedSequence: seedSequence))
    }

    /// `integers(high)`: one int64 drawn uniformly from `[0, high)`.
    ///
    /// - Precondition: `high > 0`; numpy raises `ValueError("high <= 0")` otherwise.
    public mutating func integers(_ high: Int64) -> Int64 {
        integers(0, high)
    }

    /// `integers(low, high, endpoint=endpoint)`: one int64 drawn uniformly from `[low, high)`, or from
    /// `[low, high]` when `endpoint` is true.
    ///
    /// numpy's scalar path (`_rand_int64` with `size=None`) reduces this to `random_bounded_uint64_fill`
    /// over the closed range `[0, high - low]` with Lemire's method (`Generator.integers` passes
    /// `use_masked=False`), then adds `low` with uint64 wrap-around.
    ///
    /// - Precondition: `low < high` (`low <= high` with `endpoint`); numpy raises
    ///   `ValueError("low >= high")` otherwise.
    public mutating func integers(_ low: Int64, _ high: Int64, endpoint: Bool = false) -> Int64 {
        precondition(endpoint ? low <= high : low < high, "integers: low >= high")
        // Inclusive upper bound; cannot overflow because high > low when the interval is open.
        let closedHigh = endpoint ? high : high - 1
        let range = UInt64(bitPattern: closedHigh) &- UInt64(bitPattern: low)
        return Int64(bitPattern: UInt64(bitPattern: low) &+ boundedUInt64(range))
    }

    /// `shuffle(x)` for a one-dimensional, non-empty `ndarray`: Fisher-Yates from the last element down,
    /// swapping element `i` with element `random_interval(i)` for `i = n-1, …, 1` (numpy's `_shuffle_raw`).
    ///
    /// The draws depend only on the length, so this matches numpy for any element type. Empty and
    /// one-element arrays draw nothing, as in numpy.
    public mutating func shuffle<C: MutableCollection & RandomAccessCollection>(_ x: inout C) {
        guard x.count > 1 else { return }
        // Arrays and other contiguous storage swap through a buffer, skipping per-swap uniqueness checks.
        let swapped: Void? = x.withContiguousMutableStorageIfAvailable { buffer in
            for i in stride(from: buffer.count - 1, through: 1, by: -1) {
                buffer.swapAt(i, Int(randomInterval(UInt64(i))))
            }
        }
        if swapped != nil { return }
        for i in stride(from: x.count - 1, through: 1, by: -1) {
            let j = Int(randomInterval(UInt64(i)))
            x.swapAt(x.index(x.startIndex, offsetBy: i), x.index(x.startIndex, offsetBy: j))
        }
    }

    /// `random_interval(bitgen, max)`: a value in `[0, max]` by masked rejection; 32-bit draws (through
    /// the bit generator's buffer) when `max` fits in 32 bits, 64-bit draws otherwise.
    public mutating func randomInterval(_ max: UInt64) -> UInt64 {
        if max == 0 { return 0 }
        let mask = Self.smallestMask(covering: max)
        var value: UInt64
        if max <= 0xFFFF_FFFF {
            repeat { value = UInt64(bitGenerator.nextUInt32()) & mask } while value > max
        } else {
            repeat { value = bitGenerator.nextUInt64() & mask } while value > max
        }
        return value
    }

    /// `random_bounded_uint64_fill(off=0, rng=range, cnt=1, use_masked=False)`: a value in `[0, range]`.
    ///
    /// A range that fits in 32 bits uses the 32-bit Lemire method on buffered 32-bit draws, except the full
    /// 32-bit range, which takes one buffered 32-bit draw as is (numpy's fix for gh-16066, where Lemire's
    /// `range + 1` would wrap to zero). The full 64-bit range takes one 64-bit draw as is; other ranges use
    /// the 64-bit Lemire method.
    public mutating func boundedUInt64(_ range: UInt64) -> UInt64 {
        if range == 0 {
            return 0
        } else if range == 0xFFFF_FFFF {
            return UInt64(bitGenerator.nextUInt32())
        } else if range < 0xFFFF_FFFF {
            return UInt64(lemireUInt32(UInt32(range)))
        } else if range == UInt64.max {
            return bitGenerator.nextUInt64()
        } else {
            return lemireUInt64(range)
        }
    }

    /// `buffered_bounded_lemire_uint32`: Lemire's nearly divisionless method on 32-bit draws.
    /// `range` must be below `UInt32.max`.
    private mutating func lemireUInt32(_ range: UInt32) -> UInt32 {
        let exclusive = range + 1
        var product = UInt64(bitGenerator.nextUInt32()) * UInt64(exclusive)
        var leftover = UInt32(truncatingIfNeeded: product)
        if leftover < exclusive {
            // `exclusive` bounds the threshold, so the division is only paid for near-rejections.
            let threshold = (UInt32.max - range) % exclusive
            while leftover < threshold {
                product = UInt64(bitGenerator.nextUInt32()) * UInt64(exclusive)
                leftover = UInt32(truncatingIfNeeded: product)
            }
        }
        return UInt32(truncatingIfNeeded: product >> 32)
    }

    /// `bounded_lemire_uint64`: Lemire's nearly divisionless method on 64-bit draws.
    /// `range` must be below `UInt64.max`.
    private mutating func lemireUInt64(_ range: UInt64) -> UInt64 {
        let exclusive = range + 1
        var product = bitGenerator.nextUInt64().multipliedFullWidth(by: exclusive)
        if product.low < exclusive {
            let threshold = (UInt64.max - range) % exclusive
            while product.low < threshold {
                product = bitGenerator.nextUInt64().multipliedFullWidth(by: exclusive)
            }
        }
        return product.high
    }

    /// numpy's `gen_mask`: the smallest all-ones bit mask that covers `max`.
    @inline(__always)
    private static func smallestMask(covering max: UInt64) -> UInt64 {
        var mask = max
        mask |= mask >> 1
        mask |= mask >> 2
        mask |= mask >> 4
        mask |= mask >> 8
        mask |= mask >> 16
        mask |= mask >> 32
        return mask
    }
}
