// noisebase's `Shuffler` (noisebase/torch/misc.py, noisebase 1.1.1): every random decision of the training
// loader (validation split, per-epoch order, augmentation orientation) comes from a fresh
// `numpy.random.default_rng(self.seed + k)`, so it is reproducible from the configured seed alone.
//
// Where Python raises (a negative derived seed, an empty `integers` range, a NaN split), these methods
// throw ``NumpyRandomError`` instead.

/// noisebase's `Shuffler`: numpy-generator conveniences keyed by an offset added to one derived seed.
public struct Shuffler: Sendable, Hashable {
    /// `self.seed`: the seed drawn in `__init__`, in `[0, 2**31)`.
    public let seed: Int64

    /// Mirrors:
    /// ```python
    /// def __init__(self, seed):
    ///     rng = np.random.default_rng(seed = seed)
    ///     self.seed = rng.integers(2**31)
    /// ```
    /// - Throws: ``NumpyRandomError/negativeSeed(_:)`` for a negative `seed`.
    public init(seed: Int64) throws(NumpyRandomError) {
        var rng = try Self.defaultRNG(seed)
        self.seed = rng.integers(1 << 31)
    }

    /// Restores a `Shuffler` whose `self.seed` is already known, without drawing it again.
    public init(derivedSeed: Int64) {
        seed = derivedSeed
    }

    /// Mirrors:
    /// ```python
    /// def shuffle(self, seed, sequence):
    ///     rng = np.random.default_rng(seed = self.seed + seed)
    ///     rng.shuffle(sequence)
    /// ```
    /// `sequence` stands for a one-dimensional numpy array, shuffled in place.
    public func shuffle<C: MutableCollection & RandomAccessCollection>(
        _ seed: Int64, _ sequence: inout C
    ) throws(NumpyRandomError) {
        var rng = try generator(seed)
        rng.shuffle(&sequence)
    }

    /// Mirrors:
    /// ```python
    /// def split(self, seed, sequence, split, shuffled = True, smallest = 0):
    ///     if shuffled:
    ///         self.shuffle(seed, sequence)
    ///     idx = max(round(len(sequence) * split), smallest)
    ///     return sequence[:idx], sequence[idx:]
    /// ```
    /// `round` is Python's: halves go to the even neighbour. The cut follows Python slicing: a negative
    /// index counts from the end and the index is clamped to the sequence. Like the numpy array in Python,
    /// `sequence` is left shuffled.
    ///
    /// - Returns: `(sequence[:idx], sequence[idx:])`.
    public func split<T>(
        _ seed: Int64, _ sequence: inout [T], _ split: Double, shuffled: Bool = true, smallest: Int = 0
    ) throws(NumpyRandomError) -> ([T], [T]) {
        if shuffled {
            try shuffle(seed, &sequence)
        }
        // Python shuffles before it rounds, so a bad split raises only after the sequence is shuffled.
        let product = Double(sequence.count) * split
        guard product.isFinite else { throw .invalidSplit(split) }
        let rounded = Self.roundHalfEven(product)
        // Any value beyond the sequence slices the same as the sequence length, so clamping is exact.
        let bound = Double(sequence.count)
        let roundedIndex = rounded >= bound ? sequence.count : (rounded <= -bound ? -sequence.count : Int(rounded))
        var cut = max(roundedIndex, smallest)
        if cut < 0 { cut += sequence.count }
        cut = min(max(cut, 0), sequence.count)
        return (Array(sequence[..<cut]), Array(sequence[cut...]))
    }

    /// Mirrors `integers(self, seed, *args)` called with one argument:
    /// ```python
    /// def integers(self, seed, *args):
    ///     rng = np.random.default_rng(seed = self.seed + seed)
    ///     return rng.integers(*args)
    /// ```
    /// - Returns: `default_rng(self.seed + seed).integers(high)`, in `[0, high)`.
    public func integers(_ seed: Int64, _ high: Int64) throws(NumpyRandomError) -> Int64 {
        try integers(seed, 0, high)
    }

    /// Mirrors `integers(self, seed, *args)` called with two arguments (noisebase draws the orientation
    /// as `derive(epoch).integers(sequence_idx, 0, 8)`).
    ///
    /// - Returns: `default_rng(self.seed + seed).integers(low, high)`, in `[low, high)`.
    public func integers(_ seed: Int64, _ low: Int64, _ high: Int64) throws(NumpyRandomError) -> Int64 {
        // numpy validates the range before drawing, but after the generator exists; both raise.
        var rng = try generator(seed)
        guard low < high else { throw .emptyRange(low: low, high: high) }
        return rng.integers(low, high)
    }

    /// Mirrors:
    /// ```python
    /// def derive(self, seed):
    ///     return Shuffler(self.seed + seed)
    /// ```
    public func derive(_ seed: Int64) throws(NumpyRandomError) -> Shuffler {
        try Shuffler(seed: try Self.offsetSeed(self.seed, seed))
    }

    /// `np.random.default_rng(seed = self.seed + seed)`.
    public func generator(_ seed: Int64) throws(NumpyRandomError) -> NumpyGenerator {
        try Self.defaultRNG(try Self.offsetSeed(self.seed, seed))
    }

    /// Python's `round(x)` for a finite float: the nearest integer, halves to the even one.
    ///
    /// Adding and removing 2^52 leaves no fraction bits, so IEEE round-to-nearest-even does the work; this
    /// avoids `rounded(.toNearestOrEven)`, which lowers to libm's `rint` and needs libm linked explicitly.
    static func roundHalfEven(_ x: Double) -> Double {
        // From 2^52 up every double is an integer already.
        guard x.magnitude < 0x1p52 else { return x }
        let shift: Double = x < 0 ? -0x1p52 : 0x1p52
        return (x + shift) - shift
    }

    /// `self.seed + seed` with numpy's int64 scalar arithmetic, which wraps on overflow (with a warning).
    /// Since `self.seed` is non-negative, a wrapped sum is negative, and numpy then rejects it as a seed.
    private static func offsetSeed(_ base: Int64, _ offset: Int64) throws(NumpyRandomError) -> Int64 {
        let sum = base &+ offset
        guard sum >= 0 else { throw .negativeSeed(String(sum)) }
        return sum
    }

    /// `np.random.default_rng(seed)` for a Python int seed.
    private static func defaultRNG(_ seed: Int64) throws(NumpyRandomError) -> NumpyGenerator {
        guard seed >= 0 else { throw .negativeSeed(String(seed)) }
        return NumpyGenerator(seed: UInt64(seed))
    }
}
