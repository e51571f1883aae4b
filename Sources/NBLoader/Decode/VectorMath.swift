/// `exp` and `log` for four float32 lanes in plain SIMD arithmetic (Cephes' single-precision
/// polynomials), so the compiler emits vector instructions where libm (and libmvec's SSE variant)
/// calls a scalar routine per lane. Both stay within 2 ulp of the exact result, as numpy's own SIMD
/// `exp`/`log` do; lanes outside the polynomial's domain (non-positive, subnormal or non-finite for
/// `log`, |x| > 87 for `exp`) fall back to libm.
enum VectorMath {
    typealias Lanes = SIMD4<Float>

    /// Round to nearest integer by adding and subtracting 1.5 · 2^23 (exact for |x| < 2^22); the sum's
    /// low mantissa bits then hold the integer, which is how `exp` builds 2^n without a conversion.
    private static let roundingMagic: Float = 12_582_912

    @inline(__always)
    static func log(_ x: Lanes, scalar: (Float) -> Float) -> Lanes {
        let bits = unsafeBitCast(x, to: SIMD4<UInt32>.self)
        // Positive normal finite numbers only: bit patterns 0x0080_0000 ..< 0x7f80_0000 (one unsigned
        // comparison after the shift also rejects the sign bit).
        guard all((bits &- 0x0080_0000) .< 0x7f00_0000) else {
            return Lanes(scalar(x[0]), scalar(x[1]), scalar(x[2]), scalar(x[3]))
        }
        let exponentBits = bits &>> 23
        var e = Lanes(SIMD4<Int32>(truncatingIfNeeded: exponentBits) &- 127)
        var m = unsafeBitCast((bits & 0x007f_ffff) | 0x3f80_0000, to: Lanes.self)
        // Keep m in [√½, √2) so log(m) is small on both sides.
        let large = m .> 1.41421356237
        m.replace(with: m * 0.5, where: large)
        e.replace(with: e + 1, where: large)
        let f = m - 1
        let z = f * f
        var p: Lanes = Lanes(repeating: 7.0376836292e-2)
        p = p * f - 1.1514610310e-1
        p = p * f + 1.1676998740e-1
        p = p * f - 1.2420140846e-1
        p = p * f + 1.4249322787e-1
        p = p * f - 1.6668057665e-1
        p = p * f + 2.0000714765e-1
        p = p * f - 2.4999993993e-1
        p = p * f + 3.3333331174e-1
        var y = p * f * z
        y += e * -2.12194440e-4
        y += z * -0.5
        return f + y + e * 0.693359375
    }

    @inline(__always)
    static func exp(_ x: Lanes, scalar: (Float) -> Float) -> Lanes {
        guard all(magnitude(x) .< 87) else { return Lanes(scalar(x[0]), scalar(x[1]), scalar(x[2]), scalar(x[3])) }
        let scaled = x * 1.44269504088896341
        // n = floor(scaled + 0.5): round to nearest, then step down where that rounded up past it.
        var n = (scaled + 0.5 + roundingMagic) - roundingMagic
        n.replace(with: n - 1, where: n .> scaled + 0.5)
        let r = x - n * 0.693359375 - n * -2.12194440e-4
        let z = r * r
        var p: Lanes = Lanes(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = p * z + r + 1
        let integer = unsafeBitCast(n + roundingMagic, to: SIMD4<Int32>.self) &- 0x4b40_0000
        let power = unsafeBitCast((integer &+ 127) &<< 23, to: Lanes.self)
        return y * power
    }
}

@inline(__always)
private func magnitude(_ x: SIMD4<Float>) -> SIMD4<Float> {
    unsafeBitCast(unsafeBitCast(x, to: SIMD4<UInt32>.self) & 0x7fff_ffff, to: SIMD4<Float>.self)
}
