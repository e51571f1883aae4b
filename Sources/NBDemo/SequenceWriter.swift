import CDemoKernels
import Foundation
import NBStorage
import NBVocabulary

/// Renders one sequence frame by frame and writes it as noisebase stores its data (the layout documented
/// at the top of Tests/fixtures/make_dataset.py): per-sample arrays chunked per frame and every 4 samples,
/// the per-sequence arrays in one chunk each, Blosc lz4hc level 9 with byte shuffle.
struct SequenceWriter {
    let scene: DemoScene
    var random: DemoRandom
    let geometry: DemoGeometry
    let zip: ZipWriter

    private static let compressor = BloscCompressor.noisebase

    mutating func write() throws(ZarrWriterError) {
        let g = geometry
        let (frames, crop, samples) = (g.frames, g.crop, g.samples)
        let group = min(DemoDataset.samplesPerChunk, samples)
        let groups = (samples + group - 1) / group
        let zarr = try ZarrWriter(zip: zip)
        func perSample(_ name: String, _ channels: Int, _ type: String) throws(ZarrWriterError) -> ZarrArrayWriter {
            try zarr.createArray(
                name, shape: [frames, channels, crop, crop, samples], chunks: [1, channels, crop, crop, group],
                dataType: DataType(typestr: type)!, compressor: Self.compressor)
        }
        // Created in the order make_dataset.py creates them, so the entries follow the same order.
        let colorArray = try perSample("color", 4, "|u1")
        let referenceArray = try zarr.createArray(
            "reference", shape: [frames, 3, crop, crop], chunks: [1, 3, crop, crop],
            dataType: DataType(typestr: "<f4")!, compressor: Self.compressor)
        let positionArray = try perSample("position", 3, "<f4")
        let motionArray = try perSample("motion", 3, "<f4")
        let normalArray = try perSample("normal", 3, "<f2")
        let diffuseArray = try perSample("diffuse", 3, "<f2")

        let pixels = crop * crop
        let plane = pixels * samples
        var position = [Float](repeating: 0, count: 3 * plane)
        var motion = [Float](repeating: 0, count: 3 * plane)
        var normal = [UInt16](repeating: 0, count: 3 * plane)
        var diffuse = [UInt16](repeating: 0, count: 3 * plane)
        var radiance = [Float](repeating: 0, count: 3 * plane)
        var color = [UInt8](repeating: 0, count: 4 * plane)
        var reference = [Float](repeating: 0, count: 3 * pixels)
        var grouped = [UInt8](repeating: 0, count: 4 * groups * group * pixels * 4)

        var exposure = [Float](), cameraPosition = [Float](), cameraTarget = [Float](), cameraUp = [Float]()
        var viewProjection = [Float](), projectionMatrices = [Float](), cropOffset = [Int32]()

        let projection = DemoCamera.projection(fovy: scene.fovy, height: g.height, width: g.width)
        var offset = SIMD2(random.integer(0...(g.height - crop)), random.integer(0...(g.width - crop)))
        if random.uniform() < 0.75 {
            // Mostly, start with a sphere in the middle of the crop.
            let first = camera(at: 0, projection)
            let inView = scene.sphereCentres.compactMap { first.project($0, height: g.height, width: g.width) }
                .filter { $0.x >= 0 && $0.x < Double(g.height) && $0.y >= 0 && $0.y < Double(g.width) }
            if !inView.isEmpty {
                let chosen = inView[random.integer(0...(inView.count - 1))]
                offset = clamp(SIMD2(roundEven(chosen.x - Double(crop) / 2), roundEven(chosen.y - Double(crop) / 2)))
            }
        }
        // The world point at the previous crop's centre and whether it was sky (which moves with the camera).
        var anchor: (point: SIMD3<Double>, isSky: Bool)?

        for f in 0..<frames {
            let t = Double(f)
            let cam = camera(at: t, projection)
            let now = scene.camera(at: t).position
            let previous = scene.camera(at: t - 1).position
            if let (point, isSky) = anchor {
                // The crop follows the point at its centre (as sampleset_v1's motion-compensated crops do),
                // with up to 2 pixels of jitter, clamped to the rendering.
                let moved = isSky ? point + now - previous : point
                if let ij = cam.project(moved, height: g.height, width: g.width) {
                    offset = SIMD2(roundEven(ij.x - Double(crop) / 2), roundEven(ij.y - Double(crop) / 2))
                }
                offset = clamp(offset &+ SIMD2(random.integer(-2...2), random.integer(-2...2)))
            }
            let skyMotion = previous - now
            var view = nbdemo_view()
            view.position = (Double(cam.position.x), Double(cam.position.y), Double(cam.position.z))
            view.right = (Double(cam.right.x), Double(cam.right.y), Double(cam.right.z))
            view.up = (Double(cam.trueUp.x), Double(cam.trueUp.y), Double(cam.trueUp.z))
            view.forward = (Double(cam.forward.x), Double(cam.forward.y), Double(cam.forward.z))
            view.proj00 = Double(projection[0])
            view.proj11 = Double(projection[5])
            view.height = Int32(g.height)
            view.width = Int32(g.width)
            view.offset_row = Int32(offset.x)
            view.offset_col = Int32(offset.y)
            view.crop = Int32(crop)
            view.sky_motion = (skyMotion.x, skyMotion.y, skyMotion.z)

            var centreObject: Int32 = -1
            var frameExposure: [Float] = [0, 0]
            withUnsafePointer(to: scene.geometry) { geometryPointer in
                nbdemo_render_samples(
                    geometryPointer, &view, Int32(samples), &random.state, &position, &motion, &normal, &diffuse,
                    &radiance, &centreObject)
                nbdemo_compress_rgbe(radiance, plane, &random.state, &color, &frameExposure)
                nbdemo_render_reference(geometryPointer, &view, Int32(g.referenceSamples), &random.state, &reference)
            }
            let centre = ((crop / 2) * crop + crop / 2) * samples
            anchor = (SIMD3(Double(position[centre]), Double(position[plane + centre]), Double(position[2 * plane + centre])),
                      centreObject < 0)

            try writeGrouped(colorArray, frame: f, channels: 4, color, &grouped, group: group, groups: groups)
            let failure: ZarrWriterError? = reference.withUnsafeBytes { bytes in
                do throws(ZarrWriterError) { try referenceArray.writeChunk([f, 0, 0, 0], bytes) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            try writeGrouped(positionArray, frame: f, channels: 3, position, &grouped, group: group, groups: groups)
            try writeGrouped(motionArray, frame: f, channels: 3, motion, &grouped, group: group, groups: groups)
            try writeGrouped(normalArray, frame: f, channels: 3, normal, &grouped, group: group, groups: groups)
            try writeGrouped(diffuseArray, frame: f, channels: 3, diffuse, &grouped, group: group, groups: groups)

            exposure += frameExposure
            cameraPosition += [cam.position.x, cam.position.y, cam.position.z]
            cameraTarget += [cam.target.x, cam.target.y, cam.target.z]
            cameraUp += [cam.up.x, cam.up.y, cam.up.z]
            viewProjection += cam.viewProjection
            projectionMatrices += projection
            cropOffset += [Int32(offset.x), Int32(offset.y)]
        }

        try small(zarr, "exposure", [frames, 2], "<f4", exposure)
        try small(zarr, "camera_position", [frames, 3], "<f4", cameraPosition)
        try small(zarr, "camera_target", [frames, 3], "<f4", cameraTarget)
        try small(zarr, "camera_up", [frames, 3], "<f4", cameraUp)
        try small(zarr, "view_proj_mat", [frames, 4, 4], "<f4", viewProjection)
        try small(zarr, "proj_mat", [frames, 4, 4], "<f4", projectionMatrices)
        try small(zarr, "crop_offset", [frames, 2], "<i4", cropOffset)
    }

    private func camera(at t: Double, _ projection: [Float]) -> DemoCamera {
        let (position, target, up) = scene.camera(at: t)
        return DemoCamera(position: position, target: target, up: up, projection: projection)
    }

    private func clamp(_ offset: SIMD2<Int>) -> SIMD2<Int> {
        SIMD2(min(max(offset.x, 0), geometry.height - geometry.crop), min(max(offset.y, 0), geometry.width - geometry.crop))
    }

    /// numpy's `np.round`: halves to even.
    private func roundEven(_ value: Double) -> Int { Int(value.rounded(.toNearestOrEven)) }

    /// Writes one frame of a per-sample array ([channels][crop][crop][samples] in `frame`) as its chunks
    /// of `group` samples each.
    private func writeGrouped<T>(
        _ array: ZarrArrayWriter, frame f: Int, channels: Int, _ frameData: [T], _ scratch: inout [UInt8], group: Int, groups: Int
    ) throws(ZarrWriterError) {
        let rows = channels * geometry.crop * geometry.crop
        let itemSize = MemoryLayout<T>.stride
        let chunkBytes = rows * group * itemSize
        frameData.withUnsafeBytes { source in
            scratch.withUnsafeMutableBytes { destination in
                nbdemo_group_samples(source.baseAddress, destination.baseAddress, rows, geometry.samples, group, itemSize)
            }
        }
        for g in 0..<groups {
            let failure: ZarrWriterError? = scratch.withUnsafeBytes { bytes in
                do throws(ZarrWriterError) {
                    try array.writeChunk([f, 0, 0, 0, g], UnsafeRawBufferPointer(rebasing: bytes[(g * chunkBytes)..<((g + 1) * chunkBytes)]))
                } catch { return error }
                return nil
            }
            if let failure { throw failure }
        }
    }

    /// A per-sequence array written whole, as one chunk.
    private func small<T>(_ zarr: ZarrWriter, _ name: String, _ shape: [Int], _ type: String, _ values: [T]) throws(ZarrWriterError) {
        let array = try zarr.createArray(name, shape: shape, chunks: shape, dataType: DataType(typestr: type)!, compressor: Self.compressor)
        let failure: ZarrWriterError? = values.withUnsafeBytes { bytes in
            do throws(ZarrWriterError) { try array.write(bytes) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }
}
