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

/// The per-sample arithmetic of noisebase's loader, in float32 as numpy evaluates it.
/// Planes are channel-major (`[channel][pixel·sample]`), `count` elements per channel.
enum Kernels {
    /// `screen_space_normal`: `einsum('ij, ihws -> jhws', stack([W, U, V], axis=1), w_normal)`.
    static func screenSpaceNormal(_ normal: UnsafePointer<Float>, count: Int, camera: Camera, into out: UnsafeMutablePointer<Float>) {
        let (w, u, v) = (camera.forward, camera.left, camera.up)
        let x = normal, y = normal + count, z = normal + 2 * count
        for p in 0..<count {
            out[p] = w.x * x[p] + w.y * y[p] + w.z * z[p]
            out[count + p] = u.x * x[p] + u.y * y[p] + u.z * z[p]
            out[2 * count + p] = v.x * x[p] + v.y * y[p] + v.z * z[p]
        }
    }

    /// `log_depth`: `log(1 + 1 / ‖position − camera‖)`.
    static func logDepth(_ position: UnsafePointer<Float>, count: Int, camera: SIMD3<Float>, into out: UnsafeMutablePointer<Float>) {
        let x = position, y = position + count, z = position + 2 * count
        for p in 0..<count {
            let dx = x[p] - camera.x, dy = y[p] - camera.y, dz = z[p] - camera.z
            let distance = (dx * dx + dy * dy + dz * dz).squareRoot()
            out[p] = Foundation.log(1 + 1 / distance)
        }
    }

    /// `motion_vectors` then `np.clip(…, -5e3, 5e3)`: where each sample was in the previous frame minus
    /// where it is now, in pixels, row then column.
    static func motionVectors(
        position: UnsafePointer<Float>, worldMotion: UnsafePointer<Float>, count: Int,
        current: [Float], previous: [Float], height: Int, width: Int, into out: UnsafeMutablePointer<Float>
    ) {
        let scaleX = Float(0.5 * Double(width)), scaleY = Float(-0.5 * Double(height))
        let centerX = Float(Double(width) / 2), centerY = Float(Double(height) / 2)
        /// `screen_space_position` for one point: row-vector projection, divide by w unless w is 0.
        @inline(__always)
        func project(_ m: UnsafePointer<Float>, _ x: Float, _ y: Float, _ z: Float) -> (row: Float, column: Float) {
            let px = m[0] * x + m[4] * y + m[8] * z + m[12]
            let py = m[1] * x + m[5] * y + m[9] * z + m[13]
            let pw = m[3] * x + m[7] * y + m[11] * z + m[15]
            let nx: Float = pw != 0 ? px / pw : 0
            let ny: Float = pw != 0 ? py / pw : 0
            return (ny * scaleY + centerY, nx * scaleX + centerX)
        }
        @inline(__always)
        func clip(_ value: Float) -> Float { value < -5e3 ? -5e3 : (value > 5e3 ? 5e3 : value) }
        let x = position, y = position + count, z = position + 2 * count
        let mx = worldMotion, my = worldMotion + count, mz = worldMotion + 2 * count
        current.withUnsafeBufferPointer { now in
            previous.withUnsafeBufferPointer { before in
                for p in 0..<count {
                    let here = project(now.baseAddress!, x[p], y[p], z[p])
                    let there = project(before.baseAddress!, x[p] + mx[p], y[p] + my[p], z[p] + mz[p])
                    out[p] = clip(there.row - here.row)
                    out[count + p] = clip(there.column - here.column)
                }
            }
        }
    }

    /// `decompress_RGBE`: `rgb / 255 · exp((e + 1) / 256 · (max − min) + min)`.
    static func decompressRGBE(_ rgbe: UnsafePointer<UInt8>, count: Int, exposure: SIMD2<Float>, into out: UnsafeMutablePointer<Float>) {
        let range = exposure.y - exposure.x
        let e = rgbe + 3 * count
        for p in 0..<count {
            let exponent = Foundation.exp((Float(e[p]) + 1) / 256 * range + exposure.x)
            out[p] = Float(rgbe[p]) / 255 * exponent
            out[count + p] = Float(rgbe[count + p]) / 255 * exponent
            out[2 * count + p] = Float(rgbe[2 * count + p]) / 255 * exponent
        }
    }
}
