import NBVocabulary

/// nb-serve's wire protocol, version 1: how one batch (or the end of an epoch, or a failed batch) travels as a
/// ZeroMQ multipart message. `docs/protocol.md` is the specification; this is its Swift side.
///
/// Frame 0 is a UTF-8 JSON object, the header: `{"v": 1, "type": "batch" | "end" | "error", …}`. A `batch`
/// header lists its tensors (name, NumPy typestr, shape) and frames 1…n carry their bytes, one frame per
/// tensor in that order, C order, little-endian, so a reader wraps each frame without copying. `end` and
/// `error` messages are the header alone.
public enum WireProtocol {
    /// The protocol version this module writes and reads (`"v"` in every header).
    public static let version = 1

    /// Which stage a message belongs to (the vocabulary's `Stage`: one definition for every layer).
    public typealias Stage = NBVocabulary.Stage

    /// One tensor of a batch: its key, element type and shape.
    public struct TensorSpec: Sendable, Equatable {
        /// The key the trainer sees, e.g. `color`, `prev_camera.crop_offset` or `frame_index`.
        public var name: String
        /// The element type; sent as its little-endian NumPy typestr (`<f4`, `|u1`, `|b1`, …).
        public var dataType: DataType
        /// The shape; `[]` is a 0-d scalar (one element).
        public var shape: [Int]

        public init(name: String, dataType: DataType, shape: [Int]) {
            self.name = name
            self.dataType = dataType
            self.shape = shape
        }

        /// `prod(shape) * itemsize`: the exact length of this tensor's frame; nil when a dimension is negative
        /// or the product overflows.
        public var byteCount: Int? {
            var count = dataType.itemSize
            for dimension in shape {
                guard dimension >= 0 else { return nil }
                let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
                if overflow { return nil }
                count = product
            }
            return count
        }
    }

    /// The header of a `batch` message.
    public struct BatchHeader: Sendable, Equatable {
        /// The stream (one `epoch` request) this message belongs to; see docs/protocol.md section 6.
        public var stream: Int
        public var stage: Stage
        public var epoch: Int
        /// The batch's index in this rank's stream of the epoch, from 0.
        public var batch: Int
        /// The frame of the sequences this batch holds (all sequences of a batch advance in lockstep).
        public var frameIndex: Int
        /// Global sequence numbers, one per sample of the batch (this rank's share).
        public var sequences: [Int]
        /// The flip/rotate augmentation (0…7, 7 the identity) of each sequence, in the same order.
        public var orientations: [Int]
        public var rank: Int
        public var worldSize: Int
        /// The tensors, in the order of frames 1…n.
        public var tensors: [TensorSpec]

        public init(
            stream: Int, stage: Stage, epoch: Int, batch: Int, frameIndex: Int, sequences: [Int], orientations: [Int],
            rank: Int, worldSize: Int, tensors: [TensorSpec]
        ) {
            self.stream = stream
            self.stage = stage
            self.epoch = epoch
            self.batch = batch
            self.frameIndex = frameIndex
            self.sequences = sequences
            self.orientations = orientations
            self.rank = rank
            self.worldSize = worldSize
            self.tensors = tensors
        }
    }

    /// A tensor of a `lease` message: where its bytes lie in the shared batch memory.
    public struct SharedTensor: Sendable, Equatable {
        public var spec: TensorSpec
        /// Byte offset in the shared memory; the tensor is `spec.byteCount` bytes from there.
        public var offset: Int

        public init(spec: TensorSpec, offset: Int) {
            self.spec = spec
            self.offset = offset
        }
    }

    /// The header of a `lease` message (shared-memory transport, docs/protocol.md section 7): a batch whose
    /// tensors the trainer reads in the daemon's shared memory, until it releases `lease`.
    public struct LeaseHeader: Sendable, Equatable {
        public var batch: BatchHeader
        /// The lease to release (on the shared-memory session) once no tensor of the batch is in use.
        public var lease: Int
        public var tensors: [SharedTensor]

        /// `batch.tensors` are ignored: a lease's tensors carry their places.
        public init(batch: BatchHeader, lease: Int, tensors: [SharedTensor]) {
            var header = batch
            header.tensors = tensors.map(\.spec)
            self.batch = header
            self.lease = lease
            self.tensors = tensors
        }
    }

    /// The header of an `end` message: the epoch's stream for this rank is complete.
    public struct EndHeader: Sendable, Equatable {
        public var stream: Int
        public var stage: Stage
        public var epoch: Int
        /// How many `batch` messages this rank's stream of the epoch carried (`error` messages not counted).
        public var batches: Int

        public init(stream: Int, stage: Stage, epoch: Int, batches: Int) {
            self.stream = stream
            self.stage = stage
            self.epoch = epoch
            self.batches = batches
        }
    }

    /// The header of an `error` message: batch `batch` could not be produced, and why.
    public struct ErrorHeader: Sendable, Equatable {
        public var stream: Int
        public var stage: Stage
        public var epoch: Int
        public var batch: Int
        /// The data file involved, when known (`null` on the wire otherwise); likewise `array` and `chunk`.
        public var file: String?
        public var array: String?
        public var chunk: String?
        /// What went wrong, for a human.
        public var reason: String

        public init(stream: Int, stage: Stage, epoch: Int, batch: Int, file: String?, array: String?, chunk: String?, reason: String) {
            self.stream = stream
            self.stage = stage
            self.epoch = epoch
            self.batch = batch
            self.file = file
            self.array = array
            self.chunk = chunk
            self.reason = reason
        }
    }

    /// Any header (frame 0).
    public enum Header: Sendable, Equatable {
        case batch(BatchHeader)
        case lease(LeaseHeader)
        case end(EndHeader)
        case error(ErrorHeader)

        /// The stream this message belongs to.
        public var stream: Int {
            switch self {
            case .batch(let header): header.stream
            case .lease(let header): header.batch.stream
            case .end(let header): header.stream
            case .error(let header): header.stream
            }
        }

        /// The `"type"` string of the header.
        public var typeName: String {
            switch self {
            case .batch: "batch"
            case .lease: "lease"
            case .end: "end"
            case .error: "error"
            }
        }
    }

    /// A whole message with owned bytes, as the decoder returns it (and `encode` takes it).
    public struct Message: Sendable, Equatable {
        public var header: Header
        /// One byte array per tensor of a `batch` header; empty for `end` and `error`.
        public var payloads: [[UInt8]]

        public init(header: Header, payloads: [[UInt8]] = []) {
            self.header = header
            self.payloads = payloads
        }
    }
}
