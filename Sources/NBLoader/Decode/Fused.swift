/// One decoded piece of one frame of a per-pixel array: channel-major, `pixelStride` elements per pixel,
/// of which `count` samples starting at `base` are valid; they are the frame's samples
/// `sampleOrigin ..< sampleOrigin + count`.
struct Slab<Element> {
    let base: UnsafePointer<Element>
    let channelStride: Int
    let pixelStride: Int
    let sampleOrigin: Int
    let count: Int

    /// The same slab restricted to samples `origin ..< origin + count` (within this slab's).
    func samples(from origin: Int, count: Int) -> Slab {
        Slab(base: base + (origin - sampleOrigin), channelStride: channelStride, pixelStride: pixelStride, sampleOrigin: origin, count: count)
    }
}

/// An output tensor slot `[channels, n, n, inner]` of float32.
struct Plane {
    let base: UnsafeMutablePointer<Float>
    let channelStride: Int
    let pixelStride: Int
}

/// Conversions that produce float32 lanes from four stored elements.
protocol FloatLanes: SampleConversion where Destination == Float {
    static func lanes(_ source: UnsafePointer<Source>) -> SIMD4<Float>
}

extension Copy: FloatLanes where Element == Float {
    @inline(__always) static func lanes(_ source: UnsafePointer<Float>) -> SIMD4<Float> {
        UnsafeRawPointer(source).loadUnaligned(as: SIMD4<Float>.self)
    }
}

extension HalfToFloat: FloatLanes {
    @inline(__always) static func lanes(_ source: UnsafePointer<UInt16>) -> SIMD4<Float> {
        let bits = UnsafeRawPointer(source).loadUnaligned(as: SIMD4<UInt16>.self)
        #if NB_SERVE_F16C
        // Built for CPUs with F16C: one vcvtph2ps.
        return SIMD4<Float>(unsafeBitCast(bits, to: SIMD4<Float16>.self))
        #else
        return widen(SIMD4<UInt32>(truncatingIfNeeded: bits))
        #endif
    }
}

/// Per-pixel decoding that reads each stored sample once and writes every output derived from it in
/// the same pass: the oriented copies (`w_normal`, `w_position`, `w_motion`) and the buffers computed
/// from them (`normal`, `depth`, `motion`, `color`). The arithmetic is `Kernels`', lane for lane.
enum Fused {
    typealias Lanes = SIMD4<Float>

    /// Visits every output pixel of the oriented `n × n` window with its source pixel index; tiles when
    /// transposing, where a row of output walks a column of source.
    @inline(__always)
    static func forEachPixel(side n: Int, _ flipRotate: FlipRotate, _ body: (_ source: Int, _ output: Int) -> Void) {
        guard flipRotate.transposes else {
            for i in 0..<n {
                let (start, step) = flipRotate.sourceRow(i)
                var source = start
                for j in 0..<n {
                    body(source, i * n + j)
                    source += step
                }
            }
            return
        }
        let tile = 16
        for tileRow in stride(from: 0, to: n, by: tile) {
            for tileColumn in stride(from: 0, to: n, by: tile) {
                for i in tileRow..<min(tileRow + tile, n) {
                    let (start, step) = flipRotate.sourceRow(i)
                    var source = start + tileColumn * step
                    for j in tileColumn..<min(tileColumn + tile, n) {
                        body(source, i * n + j)
                        source += step
                    }
                }
            }
        }
    }

    /// Visits the valid samples of a pixel four at a time: `body(offset, lanes)`, lanes < 4 at the end.
    @inline(__always)
    static func forEachGroup(_ count: Int, _ body: (_ offset: Int, _ lanes: Int) -> Void) {
        // Constant lane counts for the common chunkings let the partial-vector branches fold away.
        if count == 4 { return body(0, 4) }
        if count == 8 { body(0, 4); return body(4, 4) }
        var k = 0
        while k < count {
            body(k, min(4, count - k))
            k += 4
        }
    }

    @inline(__always)
    static func load<C: FloatLanes>(_ p: UnsafePointer<C.Source>, _ lanes: Int, _: C.Type) -> Lanes {
        if lanes == 4 { return C.lanes(p) }
        var value = Lanes()
        for k in 0..<lanes { value[k] = C.convert(p[k]) }
        return value
    }

    @inline(__always)
    static func store(_ value: Lanes, _ p: UnsafeMutablePointer<Float>, _ lanes: Int) {
        if lanes == 4 {
            UnsafeMutableRawPointer(p).storeBytes(of: value, as: Lanes.self)
        } else {
            for k in 0..<lanes { p[k] = value[k] }
        }
    }

    /// Three channels of one sample group, `channelStride` apart.
    @inline(__always)
    static func load3<C: FloatLanes>(_ p: UnsafePointer<C.Source>, _ channelStride: Int, _ lanes: Int, _: C.Type) -> (Lanes, Lanes, Lanes) {
        (load(p, lanes, C.self), load(p + channelStride, lanes, C.self), load(p + 2 * channelStride, lanes, C.self))
    }

    /// Stores three channels of one sample group into `plane` at output pixel `output`, sample `sample`.
    @inline(__always)
    static func store3(_ a: Lanes, _ b: Lanes, _ c: Lanes, _ plane: Plane, output: Int, sample: Int, _ lanes: Int) {
        let to = plane.base + output * plane.pixelStride + sample
        store(a, to, lanes)
        store(b, to + plane.channelStride, lanes)
        store(c, to + 2 * plane.channelStride, lanes)
    }

    /// `w_normal` (optional) and `screen_space_normal` (optional) from one normal slab.
    static func normal<C: FloatLanes>(
        _ slab: Slab<C.Source>, _: C.Type, worldNormal: Plane?, normal: Plane?, camera: Camera, side n: Int, _ flipRotate: FlipRotate
    ) {
        let (w, u, v) = (camera.forward, camera.left, camera.up)
        let cs = slab.channelStride
        forEachPixel(side: n, flipRotate) { source, output in
            let from = slab.base + source * slab.pixelStride
            forEachGroup(slab.count) { k, lanes in
                let (a, b, c) = load3(from + k, cs, lanes, C.self)
                let sample = slab.sampleOrigin + k
                if let plane = worldNormal { store3(a, b, c, plane, output: output, sample: sample, lanes) }
                if let plane = normal {
                    store3(w.x * a + w.y * b + w.z * c, u.x * a + u.y * b + u.z * c, v.x * a + v.y * b + v.z * c,
                           plane, output: output, sample: sample, lanes)
                }
            }
        }
    }

    /// From a position slab and (after frame 0) the motion slab of the same samples: `w_position`,
    /// `w_motion`, `log_depth` and `motion_vectors`, each where requested.
    static func positionMotion(
        position: Slab<Float>, motion: Slab<Float>?, worldPosition: Plane?, worldMotion: Plane?, depth: Plane?,
        screenMotion: Plane?, camera: Camera, previous: Camera, height: Int, width: Int, side n: Int, _ flipRotate: FlipRotate
    ) {
        let scale = SIMD2(Float(0.5 * Double(width)), Float(-0.5 * Double(height)))
        let center = SIMD2(Float(Double(width) / 2), Float(Double(height) / 2))
        let eye = camera.position
        camera.viewProjection.withUnsafeBufferPointer { now in
            previous.viewProjection.withUnsafeBufferPointer { before in
                let ps = position.channelStride
                forEachPixel(side: n, flipRotate) { source, output in
                    let from = position.base + source * position.pixelStride
                    forEachGroup(position.count) { k, lanes in
                        let (x, y, z) = load3(from + k, ps, lanes, Copy<Float>.self)
                        let sample = position.sampleOrigin + k
                        if let plane = worldPosition { store3(x, y, z, plane, output: output, sample: sample, lanes) }
                        if let plane = depth {
                            let dx = x - eye.x, dy = y - eye.y, dz = z - eye.z
                            let argument = 1 + 1 / Kernels.squareRoot(dx * dx + dy * dy + dz * dz)
                            store(Kernels.log(argument), plane.base + output * plane.pixelStride + sample, lanes)
                        }
                        guard let motion else { return }
                        let mfrom = motion.base + source * motion.pixelStride
                        let (mx, my, mz) = load3(mfrom + k, motion.channelStride, lanes, Copy<Float>.self)
                        if let plane = worldMotion { store3(mx, my, mz, plane, output: output, sample: sample, lanes) }
                        if let plane = screenMotion {
                            let here = Kernels.project(now.baseAddress!, x, y, z, scale: scale, center: center)
                            let there = Kernels.project(before.baseAddress!, x + mx, y + my, z + mz, scale: scale, center: center)
                            let to = plane.base + output * plane.pixelStride + sample
                            store(Kernels.clip(there.row - here.row), to, lanes)
                            store(Kernels.clip(there.column - here.column), to + plane.channelStride, lanes)
                        }
                    }
                }
            }
        }
    }

    /// `decompress_RGBE` from one RGBE slab.
    static func color(_ slab: Slab<UInt8>, exposure: SIMD2<Float>, into plane: Plane, side n: Int, _ flipRotate: FlipRotate) {
        let range = exposure.y - exposure.x
        let cs = slab.channelStride
        @inline(__always) func bytes(_ p: UnsafePointer<UInt8>, _ lanes: Int) -> Lanes {
            if lanes == 4 {
                // Bytes to floats exactly through the mantissa of 2^23 (vectorises; the generic
                // conversion initialiser converts lane by lane).
                let wide = SIMD4<UInt32>(truncatingIfNeeded: UnsafeRawPointer(p).loadUnaligned(as: SIMD4<UInt8>.self))
                return unsafeBitCast(wide | 0x4b00_0000, to: Lanes.self) - 8_388_608
            }
            var value = Lanes()
            for k in 0..<lanes { value[k] = Float(p[k]) }
            return value
        }
        forEachPixel(side: n, flipRotate) { source, output in
            let from = slab.base + source * slab.pixelStride
            forEachGroup(slab.count) { k, lanes in
                let exponent = Kernels.exp((bytes(from + 3 * cs + k, lanes) + 1) / 256 * range + exposure.x)
                store3(bytes(from + k, lanes) / 255 * exponent, bytes(from + cs + k, lanes) / 255 * exponent,
                       bytes(from + 2 * cs + k, lanes) / 255 * exponent, plane, output: output, sample: slab.sampleOrigin + k, lanes)
            }
        }
    }

    /// A plain oriented, converting copy of every channel (`diffuse`, `reference`, lone `w_*` buffers).
    static func copy<C: FloatLanes>(_ slab: Slab<C.Source>, _: C.Type, channels: Int, into plane: Plane, side n: Int, _ flipRotate: FlipRotate) {
        forEachPixel(side: n, flipRotate) { source, output in
            let from = slab.base + source * slab.pixelStride
            let to = plane.base + output * plane.pixelStride + slab.sampleOrigin
            for c in 0..<channels {
                forEachGroup(slab.count) { k, lanes in
                    store(load(from + c * slab.channelStride + k, lanes, C.self), to + c * plane.channelStride + k, lanes)
                }
            }
        }
    }
}
