import NBStorage

/// Why a frame could not be produced: the file, array and chunk at fault come from the storage error.
public enum DecodeError: Error, CustomStringConvertible, Sendable {
    case storage(ZarrError)
    /// The file's arrays do not have the shape or type Sample Training Format v1 prescribes.
    case layout(file: String, array: String, reason: String)

    public var description: String {
        switch self {
        case .storage(let error): return "\(error)"
        case .layout(let file, let array, let reason): return "\(file): array '\(array)': \(reason)"
        }
    }

    /// File, array, chunk key (empty where they do not apply) and reason, for protocol error messages.
    public var location: (file: String, array: String, chunk: String, reason: String) {
        switch self {
        case .storage(let error): return error.location
        case .layout(let file, let array, let reason): return (file, array, "", reason)
        }
    }
}

/// One sequence file (a Zarr group in a ZIP), opened once and kept: its camera track is read once and
/// cached, per-pixel arrays are opened on first use. noisebase reopens the ZIP and re-reads the camera
/// arrays for every frame.
public final class SequenceFile {
    public let path: String
    public let frames: Int
    let group: ZarrGroup
    private let cameras: [StoredCamera]
    private let exposures: [SIMD2<Float>]?
    private var arrays: [String: ZarrArray] = [:]

    public init(path: String, frames: Int) throws(DecodeError) {
        self.path = path
        self.frames = frames
        do {
            group = try ZarrGroup(path: path)
            let targets = try Self.vectors(group, "camera_target", frames: frames, width: 3)
            let ups = try Self.vectors(group, "camera_up", frames: frames, width: 3)
            let positions = try Self.vectors(group, "camera_position", frames: frames, width: 3)
            let projections = try Self.vectors(group, "proj_mat", frames: frames, width: 16)
            let offsets = try Self.integers(group, "crop_offset", frames: frames)
            cameras = (0..<frames).map { f in
                StoredCamera(
                    target: SIMD3(targets[f * 3], targets[f * 3 + 1], targets[f * 3 + 2]),
                    up: SIMD3(ups[f * 3], ups[f * 3 + 1], ups[f * 3 + 2]),
                    position: SIMD3(positions[f * 3], positions[f * 3 + 1], positions[f * 3 + 2]),
                    projection: Array(projections[(f * 16)..<(f * 16 + 16)]),
                    cropOffset: SIMD2(offsets[f * 2], offsets[f * 2 + 1]))
            }
            if group.arrayNames.contains("exposure") {
                let values = try Self.vectors(group, "exposure", frames: frames, width: 2)
                exposures = (0..<frames).map { SIMD2(values[$0 * 2], values[$0 * 2 + 1]) }
            } else {
                exposures = nil
            }
        } catch let error as ZarrError {
            throw .storage(error)
        } catch let error as DecodeError {
            throw error
        } catch {
            throw .layout(file: path, array: "", reason: "\(error)")
        }
    }

    /// The stored camera of `frame`.
    public func camera(_ frame: Int) -> StoredCamera { cameras[frame] }

    /// `exposure[frame]`: the RGBE exponent range.
    func exposure(_ frame: Int) throws(DecodeError) -> SIMD2<Float> {
        guard let exposures else { throw .layout(file: path, array: "exposure", reason: "missing (needed for color)") }
        return exposures[frame]
    }

    /// A per-pixel array `[frames, channels, crop, crop, samples…]`, checked and cached.
    func array(_ name: String, channels: Int, crop: Int, samples: Int?, types: [String]) throws(DecodeError) -> ZarrArray {
        if let array = arrays[name] { return array }
        let array: ZarrArray
        do { array = try group.array(name) } catch { throw .storage(error) }
        let shape = array.shape
        let expectedRank = samples == nil ? 4 : 5
        guard shape.count == expectedRank, shape[0] >= frames, shape[1] == channels, shape[2] == crop, shape[3] == crop,
              samples.map({ shape[4] >= $0 }) ?? true
        else {
            let expected = "[≥\(frames), \(channels), \(crop), \(crop)\(samples.map { ", ≥\($0)" } ?? "")]"
            throw .layout(file: path, array: name, reason: "shape \(shape), expected \(expected)")
        }
        guard types.contains(array.dataType.littleEndianTypestr) else {
            throw .layout(file: path, array: name, reason: "dtype \(array.dataType), expected one of \(types.joined(separator: ", "))")
        }
        arrays[name] = array
        return array
    }

    private static func vectors(_ group: ZarrGroup, _ name: String, frames: Int, width: Int) throws -> [Float] {
        let array = try group.array(name)
        let trailing = array.shape.dropFirst().reduce(1, *)
        guard array.shape.first.map({ $0 >= frames }) ?? false, trailing == width else {
            throw DecodeError.layout(file: group.path, array: name, reason: "shape \(array.shape), expected [\(frames), \(width)] or equivalent")
        }
        var region = array.shape.map { 0..<$0 }
        region[0] = 0..<frames
        switch array.dataType.littleEndianTypestr {
        case "<f4":
            var values = [Float](repeating: 0, count: frames * width)
            try values.withUnsafeMutableBytes { try array.read(region, into: $0) }
            return values
        case "<f8":
            var values = [Double](repeating: 0, count: frames * width)
            try values.withUnsafeMutableBytes { try array.read(region, into: $0) }
            return values.map(Float.init)
        default:
            throw DecodeError.layout(file: group.path, array: name, reason: "dtype \(array.dataType), expected float32")
        }
    }

    private static func integers(_ group: ZarrGroup, _ name: String, frames: Int) throws -> [Int32] {
        let array = try group.array(name)
        guard array.shape.count == 2, array.shape[0] >= frames, array.shape[1] == 2 else {
            throw DecodeError.layout(file: group.path, array: name, reason: "shape \(array.shape), expected [\(frames), 2]")
        }
        let region = [0..<frames, 0..<2]
        switch array.dataType.littleEndianTypestr {
        case "<i4":
            var values = [Int32](repeating: 0, count: frames * 2)
            try values.withUnsafeMutableBytes { try array.read(region, into: $0) }
            return values
        case "<i8":
            var values = [Int64](repeating: 0, count: frames * 2)
            try values.withUnsafeMutableBytes { try array.read(region, into: $0) }
            return values.map { Int32(truncatingIfNeeded: $0) }
        default:
            throw DecodeError.layout(file: group.path, array: name, reason: "dtype \(array.dataType), expected int32")
        }
    }
}
