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
    /// Raw region reads, sized for the largest per-pixel array.
    private let raw: UnsafeMutableRawBufferPointer
    /// Oriented float32 planes `[3, crop, crop, samples]` for inputs that are not themselves outputs.
    private let normalPlane: UnsafeMutablePointer<Float>
    private let positionPlane: UnsafeMutablePointer<Float>
    private let motionPlane: UnsafeMutablePointer<Float>
    private let rgbePlane: UnsafeMutablePointer<UInt8>

    public init(config: LoaderConfig, batchSize: Int) {
        self.config = config
        crop = config.source.crop
        samples = config.samples
        wanted = Set(config.buffers)
        layout = BatchLayout(buffers: config.buffers, batchSize: batchSize, crop: crop, samples: samples)
        let plane = 3 * crop * crop * samples
        // 4 channels of up to 8-byte items covers every array read (RGBE has 4 one-byte channels).
        raw = .allocate(byteCount: 4 * crop * crop * samples * 8, alignment: 64)
        normalPlane = .allocate(capacity: plane)
        positionPlane = .allocate(capacity: plane)
        motionPlane = .allocate(capacity: plane)
        rgbePlane = .allocate(capacity: 4 * crop * crop * samples)
    }

    deinit {
        raw.deallocate()
        normalPlane.deallocate()
        positionPlane.deallocate()
        motionPlane.deallocate()
        rgbePlane.deallocate()
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

        let count = 3 * crop * crop * samples
        if wanted.contains(.w_normal) || wanted.contains(.normal) {
            let destination = wanted.contains(.w_normal) ? output(.w_normal, batch, slot) : normalPlane
            try gatherFloat(file, "normal", frame: frame, channels: 3, flipRotate, into: destination)
            if wanted.contains(.normal) {
                Kernels.screenSpaceNormal(destination, count: count / 3, camera: camera, into: output(.normal, batch, slot))
            }
        }
        let needsPosition = wanted.contains(.w_position) || wanted.contains(.depth) || (wanted.contains(.motion) && frame > 0)
        var position = positionPlane
        if needsPosition {
            if wanted.contains(.w_position) { position = output(.w_position, batch, slot) }
            try gatherFloat(file, "position", frame: frame, channels: 3, flipRotate, into: position)
        }
        if wanted.contains(.w_motion) || wanted.contains(.motion) {
            let worldMotion = wanted.contains(.w_motion) ? output(.w_motion, batch, slot) : motionPlane
            if frame > 0 {
                try gatherFloat(file, "motion", frame: frame, channels: 3, flipRotate, into: worldMotion)
                if wanted.contains(.motion) {
                    Kernels.motionVectors(
                        position: position, worldMotion: worldMotion, count: count / 3, current: camera.viewProjection,
                        previous: previous.viewProjection, height: source.renderingHeight, width: source.renderingWidth,
                        into: output(.motion, batch, slot))
                }
            } else {
                // Frame 0 has no previous frame: noisebase yields zeros for both.
                if wanted.contains(.w_motion) { worldMotion.initialize(repeating: 0, count: count) }
                if wanted.contains(.motion) { output(.motion, batch, slot).initialize(repeating: 0, count: count / 3 * 2) }
            }
        }
        if wanted.contains(.depth) {
            Kernels.logDepth(position, count: count / 3, camera: camera.position, into: output(.depth, batch, slot))
        }
        if wanted.contains(.color) {
            let exposure = try file.exposure(frame)
            let array = try file.array("color", channels: 4, crop: crop, samples: samples, types: ["|u1"])
            try gather(array, frame: frame, channels: 4, perSample: true, flipRotate, rgbePlane, Copy<UInt8>.self)
            Kernels.decompressRGBE(rgbePlane, count: count / 3, exposure: exposure, into: output(.color, batch, slot))
        }
        if wanted.contains(.diffuse) {
            try gatherFloat(file, "diffuse", frame: frame, channels: 3, flipRotate, into: output(.diffuse, batch, slot))
        }
        if wanted.contains(.reference) {
            try gatherFloat(file, "reference", frame: frame, channels: 3, flipRotate, into: output(.reference, batch, slot), perSample: false)
        }
    }

    // MARK: - Pieces

    private func output(_ buffer: BufferName, _ batch: UnsafeMutableRawBufferPointer, _ slot: Int) -> UnsafeMutablePointer<Float> {
        let spec = layout.tensor(buffer.rawValue)!
        return (batch.baseAddress! + spec.offset + slot * spec.slotByteCount).assumingMemoryBound(to: Float.self)
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

    /// Reads `[frame, 0..<channels, :, :, 0..<samples]` (or without the sample axis) of `array`, orients
    /// it and converts each element into `destination` (`[channels, crop, crop, samples]`).
    ///
    /// When chunks span whole crop windows (Sample Training Format v1 chunks per frame and every few
    /// samples), each chunk is gathered straight from its decoded buffer: one pass over the data. Any
    /// other chunking reads the region first.
    private func gather<Conversion: SampleConversion>(
        _ array: ZarrArray, frame: Int, channels: Int, perSample: Bool, _ flipRotate: FlipRotate,
        _ destination: UnsafeMutablePointer<Conversion.Destination>, _ conversion: Conversion.Type
    ) throws(DecodeError) {
        let inner = perSample ? samples : 1
        var region = [frame..<(frame + 1), 0..<channels, 0..<crop, 0..<crop]
        if perSample { region.append(0..<samples) }
        let chunks = array.metadata.chunks
        do {
            guard chunks[2] == crop, chunks[3] == crop else {
                let bytes = array.byteCount(of: region)
                try array.read(region, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<bytes]))
                Gather.oriented(
                    raw.baseAddress!.assumingMemoryBound(to: Conversion.Source.self), destination, channels: channels, side: crop,
                    inner: inner, flipRotate, convert: Conversion.convert)
                return
            }
            let chunkChannels = chunks[1]
            let chunkInner = perSample ? chunks[4] : 1
            try array.forEachChunk(intersecting: region) { origin, chunk in
                let framePlane = chunkChannels * crop * crop * chunkInner
                let source = chunk.baseAddress!.assumingMemoryBound(to: Conversion.Source.self) + (frame - origin[0]) * framePlane
                Gather.orientedChunk(
                    source, chunkChannels: min(chunkChannels, channels - origin[1]), chunkInner: chunkInner,
                    validInner: min(chunkInner, inner - (perSample ? origin[4] : 0)),
                    into: destination + origin[1] * crop * crop * inner + (perSample ? origin[4] : 0),
                    inner: inner, side: crop, flipRotate, Conversion.self)
            }
        } catch let error as ZarrError {
            throw .storage(error)
        } catch {
            throw .layout(file: array.file, array: array.name, reason: "\(error)")
        }
    }

    /// Reads a float16/float32 per-pixel array, orients it and converts it to float32 in `destination`.
    private func gatherFloat(
        _ file: SequenceFile, _ name: String, frame: Int, channels: Int, _ flipRotate: FlipRotate,
        into destination: UnsafeMutablePointer<Float>, perSample: Bool = true
    ) throws(DecodeError) {
        let array = try file.array(name, channels: channels, crop: crop, samples: perSample ? samples : nil, types: ["<f4", "<f2"])
        if array.dataType.itemSize == 4 {
            try gather(array, frame: frame, channels: channels, perSample: perSample, flipRotate, destination, Copy<Float>.self)
        } else {
            try gather(array, frame: frame, channels: channels, perSample: perSample, flipRotate, destination, HalfToFloat.self)
        }
    }
}
