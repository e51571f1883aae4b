import Foundation
import CDecodeKernels
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
    /// Decoded chunks (or region reads) of the slabs one kernel call reads: up to two per array, and
    /// position and motion are read together. Grown on demand, reused for every frame.
    private var scratch: [UnsafeMutableRawBufferPointer] = []

    public init(config: LoaderConfig, batchSize: Int) {
        self.config = config
        crop = config.source.crop
        samples = config.samples
        wanted = Set(config.buffers)
        layout = BatchLayout(buffers: config.buffers, batchSize: batchSize, crop: crop, samples: samples)
    }

    deinit {
        for buffer in scratch { buffer.deallocate() }
    }

    /// The open sequence file of global sequence `index`.
    public func file(_ index: Int) throws(DecodeError) -> SequenceFile {
        if let file = files[index] { return file }
        let file = try SequenceFile(path: config.sequencePath(index), frames: config.source.framesPerSequence)
        files[index] = file
        return file
    }

    /// A per-pixel array of Sample Training Format v1 that decoding reads.
    public enum StoredArray: String, CaseIterable, Sendable {
        case normal, position, motion, color, diffuse, reference

        public var channels: Int { self == .color ? 4 : 3 }
        /// Whether it has a sample axis (all but `reference`).
        public var perSample: Bool { self != .reference }
        /// The dtypes the loader accepts for it.
        var types: [String] {
            switch self {
            case .position, .motion: ["<f4"]
            case .color: ["|u1"]
            case .normal, .diffuse, .reference: ["<f4", "<f2"]
            }
        }
    }

    /// The stored arrays that decoding `frame` reads for the requested buffers, in decoding order: frame 0
    /// reads no motion (noisebase yields zeros), and position only where a buffer needs it.
    public func storedArrays(frame: Int) -> [StoredArray] {
        let motion = frame > 0 && (wanted.contains(.w_motion) || wanted.contains(.motion))
        let position = wanted.contains(.w_position) || wanted.contains(.depth) || (frame > 0 && wanted.contains(.motion))
        let reads: [StoredArray: Bool] = [
            .normal: wanted.contains(.w_normal) || wanted.contains(.normal), .position: position, .motion: motion,
            .color: wanted.contains(.color), .diffuse: wanted.contains(.diffuse), .reference: wanted.contains(.reference),
        ]
        return StoredArray.allCases.filter { reads[$0]! }
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

        let walk = nb_walk(flipRotate)
        let reads = Set(storedArrays(frame: frame))
        func open(_ stored: StoredArray) throws(DecodeError) -> ZarrArray {
            try file.array(stored.rawValue, channels: stored.channels, crop: crop, samples: stored.perSample ? samples : nil, types: stored.types)
        }
        if reads.contains(.normal) {
            let array = try open(.normal)
            let world = wanted.contains(.w_normal) ? plane(.w_normal, batch, slot) : .absent
            let screen = wanted.contains(.normal) ? plane(.normal, batch, slot) : .absent
            let forward = [camera.forward.x, camera.forward.y, camera.forward.z]
            let left = [camera.left.x, camera.left.y, camera.left.z]
            let up = [camera.up.x, camera.up.y, camera.up.z]
            for group in sampleGroups(array, channels: 3) {
                let slabs = try self.slabs(array, frame: frame, channels: 3, group, scratchFrom: 0)
                nb_normal(slabs, slabs.count, array.element, world, screen, forward, left, up, walk)
            }
        }

        let worldPosition = wanted.contains(.w_position) ? plane(.w_position, batch, slot) : .absent
        let depth = wanted.contains(.depth) ? plane(.depth, batch, slot) : .absent
        let worldMotion = wanted.contains(.w_motion) ? plane(.w_motion, batch, slot) : .absent
        let screenMotion = wanted.contains(.motion) ? plane(.motion, batch, slot) : .absent
        if frame == 0 {
            // Frame 0 has no previous frame: noisebase yields zeros for both motions.
            worldMotion.base?.initialize(repeating: 0, count: 3 * crop * crop * samples)
            screenMotion.base?.initialize(repeating: 0, count: 2 * crop * crop * samples)
        }
        let motions = reads.contains(.motion) ? try open(.motion) : nil
        if reads.contains(.position) {
            var projection = nb_projection(camera: camera, previous: previous, height: source.renderingHeight, width: source.renderingWidth)
            let positions = try open(.position)
            for group in sampleGroups(positions, channels: 3) {
                let positionSlabs = try slabs(positions, frame: frame, channels: 3, group, scratchFrom: 0)
                if let motions {
                    // Motion slabs over exactly the position slabs' samples: the kernel pairs them.
                    let motionSlabs = try slabs(motions, frame: frame, channels: 3, group, scratchFrom: 2)
                    nb_position_motion(
                        positionSlabs, motionSlabs, group.count, worldPosition, worldMotion, depth, screenMotion, &projection, walk)
                } else {
                    nb_position_motion(positionSlabs, nil, group.count, worldPosition, .absent, depth, .absent, &projection, walk)
                }
            }
        } else if let motions {
            // Only `w_motion`: a plain copy.
            for group in sampleGroups(motions, channels: 3) {
                let slabs = try self.slabs(motions, frame: frame, channels: 3, group, scratchFrom: 0)
                nb_copy(slabs, slabs.count, NB_ELEMENT_F32, 3, worldMotion, walk)
            }
        }

        if reads.contains(.color) {
            let exposure = try file.exposure(frame)
            let array = try open(.color)
            let color = plane(.color, batch, slot)
            for group in sampleGroups(array, channels: 4) {
                let slabs = try self.slabs(array, frame: frame, channels: 4, group, scratchFrom: 0)
                nb_color(slabs, slabs.count, exposure.x, exposure.y, color, walk)
            }
        }
        for stored in [StoredArray.diffuse, .reference] where reads.contains(stored) {
            let array = try open(stored)
            let target = plane(BufferName(rawValue: stored.rawValue)!, batch, slot, inner: stored.perSample ? samples : 1)
            for group in stored.perSample ? sampleGroups(array, channels: 3) : [[nil]] {
                let slabs = try self.slabs(array, frame: frame, channels: 3, group, scratchFrom: 0)
                nb_copy(slabs, slabs.count, array.element, 3, target, walk)
            }
        }
    }

    // MARK: - Pieces

    /// The batch slot of `buffer` as a channel-major plane with `inner` elements per pixel.
    private func plane(_ buffer: BufferName, _ batch: UnsafeMutableRawBufferPointer, _ slot: Int, inner: Int? = nil) -> nb_plane {
        let spec = layout.tensor(buffer.rawValue)!
        let base = (batch.baseAddress! + spec.offset + slot * spec.slotByteCount).assumingMemoryBound(to: Float.self)
        let perPixel = inner ?? samples
        return nb_plane(base: base, channel_stride: crop * crop * perPixel, pixel_stride: perPixel)
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

    /// Whether `array`'s chunks span whole crop windows and the first `channels` channels, as Sample
    /// Training Format v1 chunks them (per frame and every 4 samples): then slabs are decoded chunks, read
    /// in place; other chunkings go through region reads.
    private func chunksSpanWindows(_ array: ZarrArray, channels: Int) -> Bool {
        let chunks = array.metadata.chunks
        return chunks[1] >= channels && chunks[2] == crop && chunks[3] == crop
    }

    /// The sample ranges of `0..<samples` that one kernel call reads together: the array's sample chunks
    /// two at a time, so the kernels fill eight consecutive samples of a pixel per pass (whole cache lines
    /// of the output) while only two chunks are held at once; one range when chunks do not span windows.
    private func sampleGroups(_ array: ZarrArray, channels: Int) -> [[Range<Int>?]] {
        guard chunksSpanWindows(array, channels: channels) else { return [[0..<samples]] }
        let perChunk = array.metadata.chunks[4]
        let ranges = stride(from: 0, to: samples, by: perChunk).map { $0..<min($0 + perChunk, samples) }
        return stride(from: 0, to: ranges.count, by: 2).map { Array(ranges[$0..<min($0 + 2, ranges.count)]) }
    }

    /// One slab per range of `[frame, 0..<channels, :, :, range]` of `array` (no sample axis for a nil
    /// range), in scratch buffers `scratchFrom...`. A range inside one chunk of a chunking that spans
    /// windows is that decoded chunk, read in place; any other range is read as a region.
    private func slabs(_ array: ZarrArray, frame: Int, channels: Int, _ ranges: [Range<Int>?], scratchFrom first: Int) throws(DecodeError) -> [nb_slab] {
        let chunks = array.metadata.chunks
        let itemSize = array.dataType.itemSize
        let pixels = crop * crop
        let inPlace = chunksSpanWindows(array, channels: channels)
        var slabs: [nb_slab] = []
        do {
            for (g, samples) in ranges.enumerated() {
                let perChunk = samples == nil ? 1 : chunks[4]
                let chunkIndex = samples.map { $0.lowerBound / perChunk } ?? 0
                if inPlace, samples.map({ ($0.upperBound - 1) / perChunk == chunkIndex }) ?? true {
                    let bytes = array.metadata.chunkByteCount
                    let buffer = scratch(first + g, bytes: bytes)
                    var index = [frame / chunks[0], 0, 0, 0]
                    if samples != nil { index.append(chunkIndex) }
                    try array.decodeChunk(at: index, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes]))
                    let start = (frame % chunks[0]) * chunks[1] * pixels * perChunk + ((samples?.lowerBound ?? 0) - chunkIndex * perChunk)
                    slabs.append(nb_slab(
                        base: UnsafeRawPointer(buffer.baseAddress! + start * itemSize), channel_stride: pixels * perChunk,
                        pixel_stride: perChunk, sample_origin: samples?.lowerBound ?? 0, count: samples?.count ?? 1))
                } else {
                    var region = [frame..<(frame + 1), 0..<channels, 0..<crop, 0..<crop]
                    if let samples { region.append(samples) }
                    let bytes = array.byteCount(of: region)
                    let buffer = scratch(first + g, bytes: bytes)
                    try array.read(region, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes]))
                    let count = samples?.count ?? 1
                    slabs.append(nb_slab(
                        base: UnsafeRawPointer(buffer.baseAddress!), channel_stride: pixels * count, pixel_stride: count,
                        sample_origin: samples?.lowerBound ?? 0, count: count))
                }
            }
        } catch {
            throw .storage(error)
        }
        return slabs
    }

    /// Scratch buffer `index`, at least `bytes` long.
    ///
    /// Each buffer starts `index × 1088` bytes past a page boundary: the kernels read the same offsets of
    /// several buffers at once, and buffers a multiple of 4 KiB apart would compete for the same L1 sets
    /// (the skew made decoding ~10% faster).
    private func scratch(_ index: Int, bytes: Int) -> UnsafeMutableRawBufferPointer {
        while scratch.count <= index { scratch.append(.allocate(byteCount: 0, alignment: 64)) }
        let skew = index * 1088
        if scratch[index].count < bytes + skew {
            scratch[index].deallocate()
            scratch[index] = .allocate(byteCount: bytes + skew, alignment: 4096)
        }
        return UnsafeMutableRawBufferPointer(rebasing: scratch[index][skew...])
    }
}
