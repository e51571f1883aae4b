import Foundation

/// `FlipRotate.apply_array` as one strided gather: every output row is read from its source pixels in
/// a single pass, converting the element type on the way.
enum Gather {
    @inline(__always)
    static func oriented<Source, Destination>(
        _ source: UnsafePointer<Source>, _ destination: UnsafeMutablePointer<Destination>,
        channels: Int, side n: Int, inner: Int, _ flipRotate: FlipRotate, convert: (Source) -> Destination
    ) {
        let plane = n * n * inner
        for c in 0..<channels {
            let from = source + c * plane
            var to = destination + c * plane
            for i in 0..<n {
                let (start, step) = flipRotate.sourceRow(i)
                var pixel = start
                for _ in 0..<n {
                    let item = from + pixel * inner
                    for k in 0..<inner { to[k] = convert(item[k]) }
                    to += inner
                    pixel += step
                }
            }
        }
    }
}

/// How one stored element becomes one output element; `convert4` handles four at once (unaligned),
/// so the per-pixel copy of Sample Training Format v1's 4-sample chunks is a handful of vector ops.
protocol SampleConversion {
    associatedtype Source
    associatedtype Destination
    static func convert(_ value: Source) -> Destination
    static func convert4(_ source: UnsafePointer<Source>, _ destination: UnsafeMutablePointer<Destination>)
}

/// Same type in and out.
enum Copy<Element: SIMDScalar>: SampleConversion {
    @inline(__always) static func convert(_ value: Element) -> Element { value }
    @inline(__always) static func convert4(_ source: UnsafePointer<Element>, _ destination: UnsafeMutablePointer<Element>) {
        UnsafeMutableRawPointer(destination).storeBytes(
            of: UnsafeRawPointer(source).loadUnaligned(as: SIMD4<Element>.self), as: SIMD4<Element>.self)
    }
}

/// IEEE half (as its bit pattern) to float, exactly, in integer SIMD: x86-64 without F16C has no
/// conversion instruction, and the runtime's software conversion is a call per element.
enum HalfToFloat: SampleConversion {
    @inline(__always) static func convert(_ value: UInt16) -> Float {
        widen(SIMD4(repeating: UInt32(value)))[0]
    }

    @inline(__always) static func convert4(_ source: UnsafePointer<UInt16>, _ destination: UnsafeMutablePointer<Float>) {
        let halves = UnsafeRawPointer(source).loadUnaligned(as: SIMD4<UInt16>.self)
        UnsafeMutableRawPointer(destination).storeBytes(of: widen(SIMD4<UInt32>(truncatingIfNeeded: halves)), as: SIMD4<Float>.self)
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

extension Gather {
    /// One decoded chunk `[channels, n, n, chunkInner]` (one frame, full crop window) gathered into the
    /// oriented output, whose rows hold `inner` elements per pixel; the chunk fills the first
    /// `validInner` of them at `destination` (already offset to the chunk's channel and sample origin).
    @inline(__always)
    static func orientedChunk<Conversion: SampleConversion>(
        _ source: UnsafePointer<Conversion.Source>, chunkChannels: Int, chunkInner: Int, validInner: Int,
        into destination: UnsafeMutablePointer<Conversion.Destination>, inner: Int, side n: Int, _ flipRotate: FlipRotate,
        _ conversion: Conversion.Type
    ) {
        let sourcePlane = n * n * chunkInner
        let destinationPlane = n * n * inner
        for c in 0..<chunkChannels {
            let from = source + c * sourcePlane
            let to = destination + c * destinationPlane
            // 4 samples per chunk is Sample Training Format v1's chunking: one vector op per pixel.
            switch validInner {
            case 4: rows(from, to, chunkInner: chunkInner, inner: inner, side: n, flipRotate) { item, out in
                Conversion.convert4(item, out)
            }
            case 8: rows(from, to, chunkInner: chunkInner, inner: inner, side: n, flipRotate) { item, out in
                Conversion.convert4(item, out)
                Conversion.convert4(item + 4, out + 4)
            }
            default: rows(from, to, chunkInner: chunkInner, inner: inner, side: n, flipRotate) { item, out in
                for k in 0..<validInner { out[k] = Conversion.convert(item[k]) }
            }
            }
        }
    }

    /// Walks the oriented output pixels of one channel plane, handing each source pixel's samples and
    /// its output slot to `pixel`.
    @inline(__always)
    static func rows<Source, Destination>(
        _ from: UnsafePointer<Source>, _ to: UnsafeMutablePointer<Destination>, chunkInner: Int, inner: Int, side n: Int,
        _ flipRotate: FlipRotate, pixel: (UnsafePointer<Source>, UnsafeMutablePointer<Destination>) -> Void
    ) {
        guard flipRotate.transposes else {
            var out = to
            for i in 0..<n {
                let (start, step) = flipRotate.sourceRow(i)
                var item = from + start * chunkInner
                let itemStep = step * chunkInner
                for _ in 0..<n {
                    pixel(item, out)
                    out += inner
                    item += itemStep
                }
            }
            return
        }
        // A transposed output row walks a source column, one cache line and often one page per pixel;
        // square tiles keep both sides' lines in cache.
        let tile = 16
        for tileRow in stride(from: 0, to: n, by: tile) {
            for tileColumn in stride(from: 0, to: n, by: tile) {
                let columns = min(tile, n - tileColumn)
                for i in tileRow..<min(tileRow + tile, n) {
                    let (start, step) = flipRotate.sourceRow(i)
                    var item = from + (start + tileColumn * step) * chunkInner
                    let itemStep = step * chunkInner
                    var out = to + (i * n + tileColumn) * inner
                    for _ in 0..<columns {
                        pixel(item, out)
                        out += inner
                        item += itemStep
                    }
                }
            }
        }
    }
}

/// The per-sample arithmetic of noisebase's loader, in float32 as numpy evaluates it: the same
/// operations in the same order, four lanes at a time (lane-wise SIMD arithmetic rounds exactly as
/// scalar arithmetic does). Planes are channel-major (`[channel][pixel·sample]`), `count` per channel.
enum Kernels {
    typealias Lanes = SIMD4<Float>

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> Lanes {
        UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
    }

    @inline(__always) static func store(_ value: Lanes, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: value, as: Lanes.self)
    }

    /// Runs `vector` on each aligned group of four elements and `scalar` on the tail.
    @inline(__always) static func forEach(_ count: Int, vector: (Int) -> Void, scalar: (Int) -> Void) {
        var p = 0
        while p + 4 <= count {
            vector(p)
            p += 4
        }
        while p < count {
            scalar(p)
            p += 1
        }
    }

    /// `screen_space_normal`: `einsum('ij, ihws -> jhws', stack([W, U, V], axis=1), w_normal)`.
    static func screenSpaceNormal(_ normal: UnsafePointer<Float>, count: Int, camera: Camera, into out: UnsafeMutablePointer<Float>) {
        let (w, u, v) = (camera.forward, camera.left, camera.up)
        let x = normal, y = normal + count, z = normal + 2 * count
        forEach(count, vector: { p in
            let a = load(x + p), b = load(y + p), c = load(z + p)
            store(w.x * a + w.y * b + w.z * c, out + p)
            store(u.x * a + u.y * b + u.z * c, out + count + p)
            store(v.x * a + v.y * b + v.z * c, out + 2 * count + p)
        }, scalar: { p in
            out[p] = w.x * x[p] + w.y * y[p] + w.z * z[p]
            out[count + p] = u.x * x[p] + u.y * y[p] + u.z * z[p]
            out[2 * count + p] = v.x * x[p] + v.y * y[p] + v.z * z[p]
        })
    }

    /// `log_depth`: `log(1 + 1 / ‖position − camera‖)`.
    static func logDepth(_ position: UnsafePointer<Float>, count: Int, camera: SIMD3<Float>, into out: UnsafeMutablePointer<Float>) {
        let x = position, y = position + count, z = position + 2 * count
        forEach(count, vector: { p in
            let dx = load(x + p) - camera.x, dy = load(y + p) - camera.y, dz = load(z + p) - camera.z
            let inverse = 1 / (dx * dx + dy * dy + dz * dz).squareRoot()
            let argument = 1 + inverse
            store(Lanes(Foundation.log(argument[0]), Foundation.log(argument[1]), Foundation.log(argument[2]), Foundation.log(argument[3])), out + p)
        }, scalar: { p in
            let dx = x[p] - camera.x, dy = y[p] - camera.y, dz = z[p] - camera.z
            out[p] = Foundation.log(1 + 1 / (dx * dx + dy * dy + dz * dz).squareRoot())
        })
    }

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

    /// `motion_vectors` then `np.clip(…, -5e3, 5e3)`: where each sample was in the previous frame minus
    /// where it is now, in pixels, row then column.
    static func motionVectors(
        position: UnsafePointer<Float>, worldMotion: UnsafePointer<Float>, count: Int,
        current: [Float], previous: [Float], height: Int, width: Int, into out: UnsafeMutablePointer<Float>
    ) {
        let scale = SIMD2(Float(0.5 * Double(width)), Float(-0.5 * Double(height)))
        let center = SIMD2(Float(Double(width) / 2), Float(Double(height) / 2))
        let x = position, y = position + count, z = position + 2 * count
        let mx = worldMotion, my = worldMotion + count, mz = worldMotion + 2 * count
        current.withUnsafeBufferPointer { now in
            previous.withUnsafeBufferPointer { before in
                let m = now.baseAddress!, b = before.baseAddress!
                forEach(count, vector: { p in
                    let px = load(x + p), py = load(y + p), pz = load(z + p)
                    let here = project(m, px, py, pz, scale: scale, center: center)
                    let there = project(b, px + load(mx + p), py + load(my + p), pz + load(mz + p), scale: scale, center: center)
                    store(clip(there.row - here.row), out + p)
                    store(clip(there.column - here.column), out + count + p)
                }, scalar: { p in
                    let px = Lanes(repeating: x[p]), py = Lanes(repeating: y[p]), pz = Lanes(repeating: z[p])
                    let here = project(m, px, py, pz, scale: scale, center: center)
                    let there = project(
                        b, px + Lanes(repeating: mx[p]), py + Lanes(repeating: my[p]), pz + Lanes(repeating: mz[p]),
                        scale: scale, center: center)
                    out[p] = clip(there.row - here.row)[0]
                    out[count + p] = clip(there.column - here.column)[0]
                })
            }
        }
    }

    /// `decompress_RGBE`: `rgb / 255 · exp((e + 1) / 256 · (max − min) + min)`.
    static func decompressRGBE(_ rgbe: UnsafePointer<UInt8>, count: Int, exposure: SIMD2<Float>, into out: UnsafeMutablePointer<Float>) {
        let range = exposure.y - exposure.x
        let e = rgbe + 3 * count
        @inline(__always) func bytes(_ p: UnsafePointer<UInt8>) -> Lanes {
            Lanes(UnsafeRawPointer(p).loadUnaligned(as: SIMD4<UInt8>.self))
        }
        forEach(count, vector: { p in
            let argument = (bytes(e + p) + 1) / 256 * range + exposure.x
            let exponent = Lanes(Foundation.exp(argument[0]), Foundation.exp(argument[1]), Foundation.exp(argument[2]), Foundation.exp(argument[3]))
            store(bytes(rgbe + p) / 255 * exponent, out + p)
            store(bytes(rgbe + count + p) / 255 * exponent, out + count + p)
            store(bytes(rgbe + 2 * count + p) / 255 * exponent, out + 2 * count + p)
        }, scalar: { p in
            let exponent = Foundation.exp((Float(e[p]) + 1) / 256 * range + exposure.x)
            out[p] = Float(rgbe[p]) / 255 * exponent
            out[count + p] = Float(rgbe[count + p]) / 255 * exponent
            out[2 * count + p] = Float(rgbe[2 * count + p]) / 255 * exponent
        })
    }
}
