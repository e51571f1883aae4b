/// One frame's camera after augmentation, as noisebase's loader yields it.
public struct Camera: Sendable, Equatable {
    /// `camera_forward` (W), `camera_up` (V), `camera_left` (U, as noisebase names it), `camera_position`.
    public var forward: SIMD3<Float>
    public var up: SIMD3<Float>
    public var left: SIMD3<Float>
    public var position: SIMD3<Float>
    /// `view_proj_mat`, row-vector convention (DirectX), row-major.
    public var viewProjection: [Float]
    /// `crop_offset` (row, column); may be negative after a transpose.
    public var cropOffset: SIMD2<Int32>
}

/// The stored camera of one frame (`camera_target`, `camera_up`, `camera_position`, `proj_mat`,
/// `crop_offset`), in float32 as Sample Training Format v1 stores it.
public struct StoredCamera: Sendable {
    public var target: SIMD3<Float>
    public var up: SIMD3<Float>
    public var position: SIMD3<Float>
    /// Row-major 4×4.
    public var projection: [Float]
    public var cropOffset: SIMD2<Int32>

    /// `FlipRotate.apply_camera`, with numpy's arithmetic: the basis in float32 (cross products and
    /// normalisation as numpy evaluates them, no fused multiply-add), the view matrix and product in
    /// float64, the result rounded to float32.
    public func applying(_ flipRotate: FlipRotate) -> Camera {
        let w = normalize(target - position)
        var u = normalize(cross(w, up))
        var v = normalize(cross(u, w))
        if flipRotate.flipsColumns { u = -u }
        if flipRotate.flipsRows { v = -v }
        if flipRotate.transposes { swap(&u, &v) }
        let offset = flipRotate.cropOffset((Int(cropOffset.x), Int(cropOffset.y)))

        // view = [U; V; W; e4] · translate(-pos), in float64 as numpy promotes it.
        let basis: [[Double]] = [
            [Double(u.x), Double(u.y), Double(u.z), 0],
            [Double(v.x), Double(v.y), Double(v.z), 0],
            [Double(w.x), Double(w.y), Double(w.z), 0],
            [0, 0, 0, 1],
        ]
        let p = (Double(-position.x), Double(-position.y), Double(-position.z))
        var view = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        for r in 0..<4 {
            view[r][0] = basis[r][0]
            view[r][1] = basis[r][1]
            view[r][2] = basis[r][2]
            view[r][3] = basis[r][0] * p.0 + basis[r][1] * p.1 + basis[r][2] * p.2 + basis[r][3]
        }
        // pv = v.T @ p.T, i.e. pv[i][j] = Σk view[k][i] · proj[j][k].
        var viewProjection = [Float](repeating: 0, count: 16)
        for i in 0..<4 {
            for j in 0..<4 {
                var sum = 0.0
                for k in 0..<4 { sum += view[k][i] * Double(projection[j * 4 + k]) }
                viewProjection[i * 4 + j] = Float(sum)
            }
        }
        return Camera(
            forward: w, up: v, left: u, position: position, viewProjection: viewProjection,
            cropOffset: SIMD2(Int32(truncatingIfNeeded: offset.0), Int32(truncatingIfNeeded: offset.1)))
    }
}

/// `np.cross` in float32: each component is one product minus another, rounded separately.
@inline(__always)
func cross(_ a: SIMD3<Float>, _ b: SIMD3<Float>) -> SIMD3<Float> {
    let x = a.y * b.z
    let y = a.z * b.x
    let z = a.x * b.y
    return SIMD3(x - a.z * b.y, y - a.x * b.z, z - a.y * b.x)
}

/// `v / np.linalg.norm(v)` in float32: squares summed left to right, then sqrt, then divide.
@inline(__always)
func normalize(_ v: SIMD3<Float>) -> SIMD3<Float> {
    let squares = v * v
    let norm = (squares.x + squares.y + squares.z).squareRoot()
    return v / norm
}
