import Foundation

/// One frame's camera as stored (float32) and as noisebase derives its matrices from it.
///
/// Conventions (noisebase's `projective.py`; documented at the top of Tests/fixtures/make_dataset.py):
/// forward `W = normalize(target - position)`, right `U = normalize(cross(W, up))`, up `V = cross(U, W)`;
/// `proj_mat` maps camera space (x = U, y = V, z = W) to clip space with w = z; `view_proj_mat` is the
/// row-vector matrix `FlipRotate(7).apply_camera` computes; screen column `(x_ndc + 1) * width / 2`,
/// row `(1 - y_ndc) * height / 2`.
struct DemoCamera {
    static let near = 0.1
    static let far = 1000.0

    let position: SIMD3<Float>
    let target: SIMD3<Float>
    let up: SIMD3<Float>
    /// Row-major 4x4.
    let projection: [Float]
    let viewProjection: [Float]
    let forward: SIMD3<Float>
    let right: SIMD3<Float>
    let trueUp: SIMD3<Float>

    init(position: SIMD3<Double>, target: SIMD3<Double>, up: SIMD3<Double>, projection: [Float]) {
        self.position = SIMD3<Float>(position)
        self.target = SIMD3<Float>(target)
        self.up = SIMD3<Float>(up)
        self.projection = projection
        // The basis in float32, as numpy computes it from the stored float32 vectors.
        forward = (self.target - self.position).normalized
        right = forward.cross(self.up).normalized
        trueUp = right.cross(forward).normalized
        // apply_camera: v = view_basis @ view_translate (float64, from the float32 basis); pv = v.T @ p.T.
        let basis = [right, trueUp, forward]
        let origin = self.position
        var view = [Double](repeating: 0, count: 16)
        for r in 0..<3 {
            for c in 0..<3 { view[4 * r + c] = Double(basis[r][c]) }
            view[4 * r + 3] = -(0..<3).reduce(0.0) { $0 + Double(basis[r][$1]) * Double(origin[$1]) }
        }
        view[15] = 1
        var pv = [Float](repeating: 0, count: 16)
        for i in 0..<4 {
            for j in 0..<4 {
                // (v.T @ p.T)[i][j] = sum_k v[k][i] * p[j][k]
                pv[4 * i + j] = Float((0..<4).reduce(0.0) { $0 + view[4 * $1 + i] * Double(projection[4 * j + $1]) })
            }
        }
        viewProjection = pv
    }

    /// DirectX-style perspective matrix for column vectors with w = z (see apply_camera's docstring).
    static func projection(fovy: Double, height: Int, width: Int) -> [Float] {
        let f = 1 / tan(fovy / 2)
        return [
            f * Double(height) / Double(width), 0, 0, 0,
            0, f, 0, 0,
            0, 0, far / (far - near), -near * far / (far - near),
            0, 0, 1, 0,
        ].map { Float($0) }
    }

    /// Full-frame (row, column) of a world point, like noisebase's screen_space_position; nil behind the camera.
    func project(_ point: SIMD3<Double>, height: Int, width: Int) -> SIMD2<Double>? {
        let p = [point.x, point.y, point.z, 1]
        var hom = [Double](repeating: 0, count: 4)
        for j in 0..<4 { hom[j] = (0..<4).reduce(0.0) { $0 + p[$1] * Double(viewProjection[4 * $1 + j]) } }
        guard hom[3] > 0 else { return nil }
        let column = hom[0] / hom[3] * 0.5 * Double(width) + Double(width) / 2
        let row = -hom[1] / hom[3] * 0.5 * Double(height) + Double(height) / 2
        return SIMD2(row, column)
    }
}
