import CSIMDMath

/// How one stored element becomes one output element.
protocol SampleConversion {
    associatedtype Source
    associatedtype Destination
    static func convert(_ value: Source) -> Destination
}

/// Same type in and out.
enum Copy<Element: SIMDScalar>: SampleConversion {
    @inline(__always) static func convert(_ value: Element) -> Element { value }
}

/// IEEE half (as its bit pattern) to float, exactly, in integer SIMD: x86-64 without F16C has no
/// conversion instruction, and the runtime's software conversion is a call per element.
enum HalfToFloat: SampleConversion {
    @inline(__always) static func convert(_ value: UInt16) -> Float {
        widen(SIMD4(repeating: UInt32(value)))[0]
    }

    /// Moves exponent and mantissa into float position and rebiases; infinities and NaNs get the
    /// maximal exponent, subnormals are renormalised by a float subtraction (exact).
    @inline(__always) static func widen(_ h: SIMD4<UInt32>) -> SIMD4<Float> {
        let shiftedExponent: UInt32 = 0x7c00 << 13
        var bits = (h & 0x7fff) &<< 13
        let exponent = bits & shiftedExponent
        bits &+= (127 - 15) << 23
        bits.replace(with: bits &+ ((128 - 16) << 23), where: exponent .== shiftedExponent)
        let subnormal = unsafeBitCast(bits &+ (1 << 23), to: SIMD4<Float>.self) - SIMD4(repeating: Float(bitPattern: 113 << 23))
        var value = unsafeBitCast(bits, to: SIMD4<Float>.self)
        value.replace(with: subnormal, where: exponent .== 0)
        return unsafeBitCast(unsafeBitCast(value, to: SIMD4<UInt32>.self) | ((h & 0x8000) &<< 16), to: SIMD4<Float>.self)
    }
}

/// The per-sample arithmetic of noisebase's loader, in float32 as numpy evaluates it: the same
/// operations in the same order, four lanes at a time (lane-wise SIMD arithmetic rounds exactly as
/// scalar arithmetic does).
enum Kernels {
    typealias Lanes = SIMD4<Float>

    /// `screen_space_position` for four points: row-vector projection, divide by w unless w is 0, then
    /// pixel coordinates (row, column).
    @inline(__always)
    static func project(_ m: UnsafePointer<Float>, _ x: Lanes, _ y: Lanes, _ z: Lanes, scale: SIMD2<Float>, center: SIMD2<Float>) -> (row: Lanes, column: Lanes) {
        let px = m[0] * x + m[4] * y + m[8] * z + m[12]
        let py = m[1] * x + m[5] * y + m[9] * z + m[13]
        let pw = m[3] * x + m[7] * y + m[11] * z + m[15]
        let degenerate = pw .== 0
        var nx = px / pw, ny = py / pw
        nx.replace(with: 0, where: degenerate)
        ny.replace(with: 0, where: degenerate)
        return (ny * scale.y + center.y, nx * scale.x + center.x)
    }

    /// `np.clip(x, -5e3, 5e3)`, NaN passing through as numpy lets it.
    @inline(__always) static func clip(_ value: Lanes) -> Lanes {
        var result = value
        result.replace(with: -5e3, where: value .< -5e3)
        result.replace(with: 5e3, where: value .> 5e3)
        return result
    }

    /// IEEE square root of each lane (exact, like numpy's).
    @inline(__always) static func squareRoot(_ x: Lanes) -> Lanes { nb_sqrt4(x) }

    /// Natural logarithm of each lane, within 2 ulp (numpy's own SIMD `log` is not exact either).
    @inline(__always) static func log(_ x: Lanes) -> Lanes { nb_log4(x) }

    /// Exponential of each lane, within 2 ulp.
    @inline(__always) static func exp(_ x: Lanes) -> Lanes { nb_exp4(x) }
}
