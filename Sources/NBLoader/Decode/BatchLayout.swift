import NBStorage
import NBVocabulary

/// One tensor of a batch: its key (`prev_camera.` prefix for the previous camera), element type and
/// shape including the batch dimension (none for `frame_index`).
public struct TensorSpec: Sendable, Equatable {
    public let key: String
    public let dataType: DataType
    public let shape: [Int]
    /// Byte offset inside the batch's contiguous buffer (64-byte aligned).
    public let offset: Int

    public var byteCount: Int { shape.reduce(dataType.itemSize, *) }
    /// Bytes of one batch slot (one sequence).
    public var slotByteCount: Int { shape.isEmpty ? byteCount : byteCount / shape[0] }

    /// The tensor as it is sent for a batch of `sequences` sequences: a short last batch (without
    /// `drop_last`) has fewer rows, as noisebase's collation gives it. Returns the shape and byte range.
    public func filled(_ sequences: Int) -> (shape: [Int], bytes: Range<Int>) {
        guard let first = shape.first else { return (shape, offset..<(offset + byteCount)) }
        let rows = min(sequences, first)
        return ([rows] + shape.dropFirst(), offset..<(offset + rows * slotByteCount))
    }
}

/// The tensors of every batch of a loader, laid out back to back in one buffer, so a batch is a single
/// allocation that workers fill slot by slot and transports send tensor by tensor without copying.
public struct BatchLayout: Sendable, Equatable {
    public let tensors: [TensorSpec]
    public let byteCount: Int
    public let batchSize: Int

    /// Camera keys, in noisebase's dict order.
    public static let cameraKeys = ["view_proj_mat", "camera_position", "camera_forward", "camera_up", "camera_left", "crop_offset"]

    /// The layout noisebase's loader yields for these buffers: float32 everywhere except `crop_offset`
    /// (int32) and `frame_index` (a 0-d int64, shared by the lockstep batch).
    public init(buffers: [BufferName], batchSize: Int, crop: Int, samples: Int) {
        let float32 = DataType(typestr: "<f4")!
        var specs: [(String, DataType, [Int])] = []
        for prefix in ["", "prev_camera."] {
            for key in Self.cameraKeys {
                let shape: [Int] = switch key {
                case "view_proj_mat": [batchSize, 4, 4]
                case "crop_offset": [batchSize, 2]
                default: [batchSize, 3]
                }
                specs.append((prefix + key, key == "crop_offset" ? DataType(typestr: "<i4")! : float32, shape))
            }
        }
        specs.append(("frame_index", DataType(typestr: "<i8")!, []))
        // Buffers in the order noisebase's __getitem__ adds them.
        let order: [BufferName] = [.w_normal, .normal, .w_position, .w_motion, .motion, .depth, .color, .diffuse, .reference]
        for buffer in order where buffers.contains(buffer) {
            let channels = switch buffer {
            case .motion: 2
            case .depth: 1
            default: 3
            }
            let shape = buffer == .reference
                ? [batchSize, channels, crop, crop]
                : [batchSize, channels, crop, crop, samples]
            specs.append((buffer.rawValue, float32, shape))
        }
        var offset = 0
        var tensors: [TensorSpec] = []
        for (key, dataType, shape) in specs {
            let spec = TensorSpec(key: key, dataType: dataType, shape: shape, offset: offset)
            tensors.append(spec)
            offset += (spec.byteCount + 63) / 64 * 64
        }
        self.tensors = tensors
        self.byteCount = offset
        self.batchSize = batchSize
    }

    public func tensor(_ key: String) -> TensorSpec? { tensors.first { $0.key == key } }

    /// Tensor bytes of a batch of `sequences` sequences, as sent (`TensorSpec.filled`; no alignment padding).
    public func filledByteCount(_ sequences: Int) -> Int {
        tensors.reduce(0) { $0 + $1.filled(sequences).bytes.count }
    }
}
