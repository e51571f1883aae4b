import CDemoKernels
import Dispatch
import Foundation
import NBStorage

/// The shape of a demo dataset: what the `src:` section of its config says.
public struct DemoGeometry: Sendable, Equatable {
    public var frames: Int
    public var crop: Int
    public var samples: Int
    public var height: Int
    public var width: Int
    /// Samples per pixel averaged into `reference`.
    public var referenceSamples: Int

    public init(frames: Int, crop: Int, samples: Int, height: Int, width: Int, referenceSamples: Int = 8) {
        self.frames = frames
        self.crop = crop
        self.samples = samples
        self.height = height
        self.width = width
        self.referenceSamples = referenceSamples
    }
}

/// Why the demo dataset could not be written.
public enum DemoError: Error, CustomStringConvertible, Sendable {
    /// Geometry that no sequence can have (non-positive sizes, a crop larger than the rendering).
    case invalidGeometry(String)
    /// Writing a sequence's file failed.
    case write(file: String, ZarrWriterError)

    public var description: String {
        switch self {
        case .invalidGeometry(let reason): return "invalid demo dataset geometry: \(reason)"
        case .write(_, let error): return error.description
        }
    }
}

/// Writes nb-serve's demo dataset natively: Noisebase Sample Training Format v1 sequences (one Zarr v2
/// group per ZIP file, zarr-python-readable) of a small ray-cast scene.
///
/// Sequence `i` draws everything from its own random stream of `seed`, so the same seed and geometry give
/// byte-identical files however many sequences are written at once.
public enum DemoDataset {
    /// Chunks of the per-sample arrays: "chunked for every frame and every 4 samples" (noisebase's docs).
    static let samplesPerChunk = 4

    /// Writes sequence `i` to `paths[i]`, several at once. Each file appears complete or not at all.
    public static func write(paths: [String], geometry: DemoGeometry, seed: UInt64) throws(DemoError) {
        try validate(geometry)
        let failures = FailureList()
        DispatchQueue.concurrentPerform(iterations: paths.count) { index in
            do throws(DemoError) {
                try writeSequence(path: paths[index], index: index, geometry: geometry, seed: seed)
            } catch {
                failures.append(index, error)
            }
        }
        if let first = failures.first { throw first }
    }

    /// Writes one sequence.
    public static func writeSequence(path: String, index: Int, geometry: DemoGeometry, seed: UInt64) throws(DemoError) {
        try validate(geometry)
        do throws(ZarrWriterError) {
            var random = DemoRandom(seed: seed, stream: UInt64(index))
            let scene = DemoScene(random: &random)
            let zip: ZipWriter
            do throws(ZipWriterError) { zip = try ZipWriter(path: path) } catch { throw .zip(error) }
            var writer = SequenceWriter(scene: scene, random: random, geometry: geometry, zip: zip)
            try writer.write()
            do throws(ZipWriterError) { try zip.finish() } catch { throw .zip(error) }
        } catch {
            throw .write(file: path, error)
        }
    }

    static func validate(_ g: DemoGeometry) throws(DemoError) {
        guard g.frames >= 1, g.crop >= 1, g.samples >= 1, g.referenceSamples >= 1 else {
            throw .invalidGeometry("frames, crop, samples and reference samples must be positive")
        }
        guard g.crop <= g.height, g.crop <= g.width else {
            throw .invalidGeometry("crop \(g.crop) does not fit the \(g.height)×\(g.width) rendering")
        }
    }
}

/// Errors from concurrently written sequences, reported in sequence order.
private final class FailureList: @unchecked Sendable {
    private let lock = NSLock()
    private var failures: [(Int, DemoError)] = []

    func append(_ index: Int, _ error: DemoError) {
        lock.lock()
        failures.append((index, error))
        lock.unlock()
    }

    var first: DemoError? {
        lock.lock()
        defer { lock.unlock() }
        return failures.min { $0.0 < $1.0 }?.1
    }
}
