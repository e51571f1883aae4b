import CDecodeKernels
import NBStorage

// Swift-side construction of the C decode kernels' arguments (`decode_kernels.h`).

extension nb_walk {
    /// The oriented window of `flipRotate` as the kernels walk it.
    init(_ flipRotate: FlipRotate) {
        let walk = flipRotate.walk
        self.init(
            side: flipRotate.window, start: walk.start, row_step: walk.rowStep, column_step: walk.columnStep,
            transposes: flipRotate.transposes ? 1 : 0)
    }
}

extension nb_plane {
    /// A buffer that was not requested: the kernels skip it.
    static var absent: nb_plane { nb_plane(base: nil, channel_stride: 0, pixel_stride: 0) }
}

extension nb_slab {
    /// The same float32 slab restricted to samples `origin ..< origin + count` (within its own).
    func samples(from origin: Int, count: Int) -> nb_slab {
        nb_slab(
            base: base + (origin - sample_origin) * MemoryLayout<Float>.size, channel_stride: channel_stride,
            pixel_stride: pixel_stride, sample_origin: origin, count: count)
    }
}

extension nb_projection {
    /// The constants of `screen_space_position` for this frame's camera and the previous frame's, for a
    /// `height × width` rendering.
    init(camera: Camera, previous: Camera, height: Int, width: Int) {
        self.init()
        eye = (camera.position.x, camera.position.y, camera.position.z)
        precondition(camera.viewProjection.count == 16 && previous.viewProjection.count == 16, "view-projection matrices are 4×4")
        withUnsafeMutableBytes(of: &now) { $0.copyBytes(from: camera.viewProjection.withUnsafeBytes { Array($0) }) }
        withUnsafeMutableBytes(of: &before) { $0.copyBytes(from: previous.viewProjection.withUnsafeBytes { Array($0) }) }
        // noisebase's "directx pixel coordinate fluff": ndc · [0.5 w, -0.5 h] + [w / 2, h / 2] in float32,
        // then (row, column) = (y, x).
        scale_row = Float(-0.5 * Double(height))
        scale_column = Float(0.5 * Double(width))
        center_row = Float(Double(height) / 2)
        center_column = Float(Double(width) / 2)
    }
}

extension ZarrArray {
    /// The kernels' element type for a float32 or float16 array.
    var element: nb_element { dataType.itemSize == 2 ? NB_ELEMENT_F16 : NB_ELEMENT_F32 }
}
