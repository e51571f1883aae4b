import Foundation
import NBStorage

/// Produces one batch slot — one frame of one sequence, augmented — exactly as noisebase's
/// `TrainingSampleDataset.__getitem__` computes it, writing straight into a batch buffer laid out by
/// `BatchLayout`.
///
/// Only the requested buffers are read and computed, and only the stored samples `0..<samples`.
/// Not thread-safe: it owns reusable scratch planes, so a steady state allocates nothing. One per worker.
public final class FrameDecoder {
    public let config: LoaderConfig
    public let layout: BatchLayout
    private let crop: Int
    private let samples: Int
    private let wanted: Set<BufferName>
    private var files: [Int: SequenceFile] = [:]
    /// Region reads for chunkings that do not span whole crop windows; two, because position and motion
    /// are read together.
    private let rawA: UnsafeMutableRawBufferPointer
    private let rawB: UnsafeMutableRawBufferPointer

    public init(config: LoaderConfig, batchSize: Int) {
        self.config = config
        crop = config.source.crop
        samples = config.samples
        wanted = Set(config.buffers)
        layout = BatchLayout(buffers: config.buffers, batchSize: batchSize, crop: crop, samples: samples)
        // 4 channels of up to 4-byte items covers every per-pixel array (RGBE has 4 one-byte channels).
        rawA = .allocate(byteCount: 4 * crop * crop * samples * 4, alignment: 64)
        rawB = .allocate(byteCount: 4 * crop * crop * samples * 4, alignment: 64)
    }

    deinit {
        rawA.deallocate()
        rawB.deallocate()
    }

    /// The open sequence file of global sequence `index`.
    public func file(_ index: Int) throws(DecodeError) -> SequenceFile {
        if let file = files[index] { return file }
        let file = try SequenceFile(path: config.sequencePath(index), frames: config.source.framesPerSequence)
        files[index] = file
        return file
    }

    /// Writes `frame` of global sequence `sequence`, with flip/rotate `orientation`, into batch slot
    /// `slot` of `batch` (a buffer of `layout.byteCount` bytes).
    public func decode(sequence: Int, frame: Int, orientation: Int, into batch: UnsafeMutableRawBufferPointer, slot: Int) throws(DecodeError) {
        precondition(batch.count >= layout.byteCount && slot < layout.batchSize, "batch buffer does not match the layout")
        let file = try self.file(sequence)
        let source = config.source
        let flipRotate = FlipRotate(orientation: orientation, height: source.renderingHeight, width: source.renderingWidth, window: crop)
        let camera = file.camera(frame).applying(flipRotate)
        let previous = frame > 0 ? file.camera(frame - 1).applying(flipRotate) : camera
        write(camera, prefix: "", batch, slot)
        write(previous, prefix: "prev_camera.", batch, slot)
        if let spec = layout.tensor("frame_index") {
            (batch.baseAddress! + spec.offset).storeBytes(of: Int64(frame).littleEndian, as: Int64.self)
        }

        let all = 0..<samples
        let height = source.renderingHeight, width = source.renderingWidth
        if wanted.contains(.w_normal) || wanted.contains(.normal) {
            let array = try file.array("normal", channels: 3, crop: crop, samples: samples, types: ["<f4", "<f2"])
            let worldNormal = wanted.contains(.w_normal) ? plane(.w_normal, batch, slot) : nil
            let normal = wanted.contains(.normal) ? plane(.normal, batch, slot) : nil
            if array.dataType.itemSize == 2 {
                try withSlabs(array, frame: frame, channels: 3, samples: all, rawA, as: UInt16.self) { slab in
                    Fused.normal(slab, HalfToFloat.self, worldNormal: worldNormal, normal: normal, camera: camera, side: crop, flipRotate)
                }
            } else {
                try withSlabs(array, frame: frame, channels: 3, samples: all, rawA, as: Float.self) { slab in
                    Fused.normal(slab, Copy<Float>.self, worldNormal: worldNormal, normal: normal, camera: camera, side: crop, flipRotate)
                }
            }
        }

        let worldPosition = wanted.contains(.w_position) ? plane(.w_position, batch, slot) : nil
        let depth = wanted.contains(.depth) ? plane(.depth, batch, slot) : nil
        let worldMotion = wanted.contains(.w_motion) ? plane(.w_motion, batch, slot) : nil
        let screenMotion = wanted.contains(.motion) ? plane(.motion, batch, slot) : nil
        if frame == 0 {
            // Frame 0 has no previous frame: noisebase yields zeros for both motions.
            worldMotion?.base.initialize(repeating: 0, count: 3 * crop * crop * samples)
            screenMotion?.base.initialize(repeating: 0, count: 2 * crop * crop * samples)
        }
        let needsMotion = frame > 0 && (worldMotion != nil || screenMotion != nil)
        let needsPosition = worldPosition != nil || depth != nil || (frame > 0 && screenMotion != nil)
        if needsPosition {
            let positions = try file.array("position", channels: 3, crop: crop, samples: samples, types: ["<f4"])
            let motions = needsMotion ? try file.array("motion", channels: 3, crop: crop, samples: samples, types: ["<f4"]) : nil
            try withSlabs(positions, frame: frame, channels: 3, samples: all, rawA, as: Float.self) { position in
                guard let motions else {
                    Fused.positionMotion(
                        position: position, motion: nil, worldPosition: worldPosition, worldMotion: nil, depth: depth,
                        screenMotion: nil, camera: camera, previous: previous, height: height, width: width, side: crop, flipRotate)
                    return
                }
                let range = position.sampleOrigin..<(position.sampleOrigin + position.count)
                try withSlabs(motions, frame: frame, channels: 3, samples: range, rawB, as: Float.self) { motion in
                    Fused.positionMotion(
                        position: position.samples(from: motion.sampleOrigin, count: motion.count), motion: motion,
                        worldPosition: worldPosition, worldMotion: worldMotion, depth: depth, screenMotion: screenMotion,
                        camera: camera, previous: previous, height: height, width: width, side: crop, flipRotate)
                }
            }
        } else if needsMotion, let worldMotion {
            let motions = try file.array("motion", channels: 3, crop: crop, samples: samples, types: ["<f4"])
            try withSlabs(motions, frame: frame, channels: 3, samples: all, rawB, as: Float.self) { motion in
                Fused.copy(motion, Copy<Float>.self, channels: 3, into: worldMotion, side: crop, flipRotate)
            }
        }

        if wanted.contains(.color) {
            let exposure = try file.exposure(frame)
            let array = try file.array("color", channels: 4, crop: crop, samples: samples, types: ["|u1"])
            let color = plane(.color, batch, slot)
            try withSlabs(array, frame: frame, channels: 4, samples: all, rawA, as: UInt8.self) { slab in
                Fused.color(slab, exposure: exposure, into: color, side: crop, flipRotate)
            }
        }
        for (buffer, name, perSample) in [(BufferName.diffuse, "diffuse", true), (.reference, "reference", false)] where wanted.contains(buffer) {
            let array = try file.array(name, channels: 3, crop: crop, samples: perSample ? samples : nil, types: ["<f4", "<f2"])
            let target = plane(buffer, batch, slot, inner: perSample ? samples : 1)
            let range = perSample ? all : nil
            if array.dataType.itemSize == 2 {
                try withSlabs(array, frame: frame, channels: 3, samples: range, rawA, as: UInt16.self) { slab in
                    Fused.copy(slab, HalfToFloat.self, channels: 3, into: target, side: crop, flipRotate)
                }
            } else {
                try withSlabs(array, frame: frame, channels: 3, samples: range, rawA, as: Float.self) { slab in
                    Fused.copy(slab, Copy<Float>.self, channels: 3, into: target, side: crop, flipRotate)
                }
            }
        }
    }

    // MARK: - Pieces

    /// The batch slot of `buffer` as a channel-major plane with `inner` elements per pixel.
    private func plane(_ buffer: BufferName, _ batch: UnsafeMutableRawBufferPointer, _ slot: Int, inner: Int? = nil) -> Plane {
        let spec = layout.tensor(buffer.rawValue)!
        let base = (batch.baseAddress! + spec.offset + slot * spec.slotByteCount).assumingMemoryBound(to: Float.self)
        let perPixel = inner ?? samples
        return Plane(base: base, channelStride: crop * crop * perPixel, pixelStride: perPixel)
    }

    private func write(_ camera: Camera, prefix: String, _ batch: UnsafeMutableRawBufferPointer, _ slot: Int) {
        func store<T>(_ key: String, _ values: [T]) {
            let spec = layout.tensor(prefix + key)!
            let base = batch.baseAddress! + spec.offset + slot * spec.slotByteCount
            values.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        func vector(_ v: SIMD3<Float>) -> [Float] { [v.x, v.y, v.z] }
        store("view_proj_mat", camera.viewProjection)
        store("camera_position", vector(camera.position))
        store("camera_forward", vector(camera.forward))
        store("camera_up", vector(camera.up))
        store("camera_left", vector(camera.left))
        store("crop_offset", [camera.cropOffset.x, camera.cropOffset.y])
    }

    /// Calls `body` with slabs that together hold `[frame, 0..<channels, :, :, samples]` of `array`
    /// (no sample axis when `samples` is nil).
    ///
    /// When chunks span whole crop windows and all channels (Sample Training Format v1 chunks per frame
    /// and every 4 samples), each slab is a decoded chunk: the data is read once, from the chunk. Other
    /// chunkings read the region into `scratch` first.
    private func withSlabs<Element>(
        _ array: ZarrArray, frame: Int, channels: Int, samples: Range<Int>?, _ scratch: UnsafeMutableRawBufferPointer,
        as: Element.Type, _ body: (Slab<Element>) throws -> Void
    ) throws(DecodeError) {
        var region = [frame..<(frame + 1), 0..<channels, 0..<crop, 0..<crop]
        if let samples { region.append(samples) }
        let chunks = array.metadata.chunks
        let pixels = crop * crop
        do {
            guard chunks[1] >= channels, chunks[2] == crop, chunks[3] == crop else {
                let bytes = array.byteCount(of: region)
                try array.read(region, into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<bytes]))
                let count = samples?.count ?? 1
                try body(Slab(
                    base: UnsafePointer(scratch.baseAddress!.assumingMemoryBound(to: Element.self)),
                    channelStride: pixels * count, pixelStride: count, sampleOrigin: samples?.lowerBound ?? 0, count: count))
                return
            }
            let chunkInner = samples == nil ? 1 : chunks[4]
            try array.forEachChunk(intersecting: region) { origin, chunk in
                let framePlane = chunks[1] * pixels * chunkInner
                var base = chunk.baseAddress!.assumingMemoryBound(to: Element.self) + (frame - origin[0]) * framePlane
                var first = 0
                var count = 1
                if let samples {
                    first = max(origin[4], samples.lowerBound)
                    count = min(origin[4] + chunkInner, samples.upperBound) - first
                    base += first - origin[4]
                }
                try body(Slab(base: base, channelStride: pixels * chunkInner, pixelStride: chunkInner, sampleOrigin: first, count: count))
            }
        } catch let error as ZarrError {
            throw .storage(error)
        } catch let error as DecodeError {
            throw error
        } catch {
            throw .layout(file: array.file, array: array.name, reason: "\(error)")
        }
    }
}
