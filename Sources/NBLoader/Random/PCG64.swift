// A bit-exact port of numpy's `PCG64` bit generator (numpy/random/_pcg64.pyx, src/pcg64/pcg64.h and
// pcg64.c): PCG XSL RR 128/64, a 128-bit LCG that advances and then outputs, plus numpy's 32-bit buffer.
// The 128-bit arithmetic uses pairs of UInt64 so that it does not depend on the OS availability of UInt128.

/// numpy's `PCG64` bit generator, including its `has_uint32` / `uinteger` buffer.
public struct PCG64: Sendable, Hashable {
    // PCG_DEFAULT_MULTIPLIER_128, as high and low halves.
    private static let multiplierHigh: UInt64 = 2_549_297_995_355_413_924
    private static let multiplierLow: UInt64 = 4_865_540_595_714_422_341

    /// High 64 bits of the LCG state (`state['state']['state'] >> 64` in numpy).
    public private(set) var stateHigh: UInt64
    /// Low 64 bits of the LCG state.
    public private(set) var stateLow: UInt64
    /// High 64 bits of the (odd) LCG increment (`state['state']['inc'] >> 64`).
    public private(set) var incrementHigh: UInt64
    /// Low 64 bits of the LCG increment.
    public private(set) var incrementLow: UInt64
    /// numpy's `has_uint32`: whether the high half of the last 64-bit draw is waiting to be handed out.
    public private(set) var hasUInt32: Bool
    /// numpy's `uinteger`: the buffered high half.
    public private(set) var bufferedUInt32: UInt32

    /// `PCG64(seed)` for a non-negative integer seed: `PCG64(SeedSequence(seed))`.
    public init(seed: UInt64) {
        self.init(seedSequence: SeedSequence(entropy: seed))
    }

    /// `PCG64(seed_sequence)`: seeds from `generate_state(4, np.uint64)` through `pcg64_set_seed`.
    ///
    /// Words 0 and 1 form the 128-bit initial state (high, low) and words 2 and 3 the stream selector,
    /// as `pcg64_set_seed` reads them.
    public init(seedSequence: SeedSequence) {
        let words = seedSequence.pcg64SeedWords()
        self.init(seedHigh: words[0], seedLow: words[1], sequenceHigh: words[2], sequenceLow: words[3])
    }

    /// `pcg_setseq_128_srandom_r(initstate, initseq)` (the native 128-bit variant numpy builds on 64-bit
    /// Linux): the increment is `initseq << 1 | 1`, then step, add `initstate`, step.
    public init(seedHigh: UInt64, seedLow: UInt64, sequenceHigh: UInt64, sequenceLow: UInt64) {
        stateHigh = 0
        stateLow = 0
        incrementHigh = (sequenceHigh << 1) | (sequenceLow >> 63)
        incrementLow = (sequenceLow << 1) | 1
        hasUInt32 = false
        bufferedUInt32 = 0
        step()
        let (low, carry) = stateLow.addingReportingOverflow(seedLow)
        stateLow = low
        stateHigh = stateHigh &+ seedHigh &+ (carry ? 1 : 0)
        step()
    }

    /// `pcg64_set_state`: restores a state exactly as numpy's `bit_generator.state` reports it.
    public init(
        stateHigh: UInt64, stateLow: UInt64, incrementHigh: UInt64, incrementLow: UInt64,
        hasUInt32: Bool = false, bufferedUInt32: UInt32 = 0
    ) {
        self.stateHigh = stateHigh
        self.stateLow = stateLow
        self.incrementHigh = incrementHigh
        self.incrementLow = incrementLow
        self.hasUInt32 = hasUInt32
        self.bufferedUInt32 = bufferedUInt32
    }

    /// `pcg64_next64`: advance the LCG, then output XSL RR of the new state.
    @inline(__always)
    public mutating func nextUInt64() -> UInt64 {
        step()
        return (stateHigh ^ stateLow).rotatedRight(by: stateHigh >> 58)
    }

    /// `pcg64_next32`: the low half of a fresh 64-bit draw, then its high half on the next call.
    @inline(__always)
    public mutating func nextUInt32() -> UInt32 {
        if hasUInt32 {
            hasUInt32 = false
            return bufferedUInt32
        }
        let next = nextUInt64()
        hasUInt32 = true
        bufferedUInt32 = UInt32(truncatingIfNeeded: next >> 32)
        return UInt32(truncatingIfNeeded: next)
    }

    /// `pcg_setseq_128_step_r`: state = state * multiplier + increment (mod 2^128).
    @inline(__always)
    private mutating func step() {
        let product = stateLow.multipliedFullWidth(by: Self.multiplierLow)
        let high = product.high &+ stateHigh &* Self.multiplierLow &+ stateLow &* Self.multiplierHigh
        let (low, carry) = product.low.addingReportingOverflow(incrementLow)
        stateLow = low
        stateHigh = high &+ incrementHigh &+ (carry ? 1 : 0)
    }
}

extension UInt64 {
    /// `pcg_rotr_64`. Masking shifts take the amount mod 64, so a rotation of 0 ORs the value with itself.
    @inline(__always)
    fileprivate func rotatedRight(by rotation: UInt64) -> UInt64 {
        (self &>> rotation) | (self &<< (64 &- rotation))
    }
}
