import NBVocabulary

extension WireProtocol {
    /// Checks every rule of protocol v1 that the header and its frame lengths must obey; the encoder and the
    /// decoder both run it, so neither side can produce what the other would reject.
    static func validate(_ header: Header, payloadByteCounts: [Int]) throws(WireProtocolError) {
        guard header.stream >= 1 else {
            throw .invalidField(type: header.typeName, field: "stream", reason: "\(header.stream) is not at least 1")
        }
        switch header {
        case .batch(let batch):
            try validate(batch, payloadByteCounts: payloadByteCounts)
        case .lease(let lease):
            // The batch fields obey the batch rules; the tensors' bytes lie in shared memory, not in frames.
            try validate(lease.batch, payloadByteCounts: lease.batch.tensors.map { $0.byteCount ?? -1 }, type: "lease")
            guard lease.lease >= 1 else { throw .invalidField(type: "lease", field: "lease", reason: "\(lease.lease) is not at least 1") }
            for (index, tensor) in lease.tensors.enumerated() where tensor.offset < 0 {
                throw .invalidField(type: "lease", field: "tensors[\(index)].offset", reason: "\(tensor.offset) is negative")
            }
            try requireNoPayloads(payloadByteCounts, type: "lease")
        case .end(let end):
            try requireNonNegative(end.epoch, "epoch", in: "end")
            try requireNonNegative(end.batches, "batches", in: "end")
            try requireNoPayloads(payloadByteCounts, type: "end")
        case .error(let error):
            try requireNonNegative(error.epoch, "epoch", in: "error")
            try requireNonNegative(error.batch, "batch", in: "error")
            try requireNoPayloads(payloadByteCounts, type: "error")
        }
    }

    private static func validate(_ batch: BatchHeader, payloadByteCounts: [Int], type: String = "batch") throws(WireProtocolError) {
        try requireNonNegative(batch.epoch, "epoch", in: type)
        try requireNonNegative(batch.batch, "batch", in: type)
        try requireNonNegative(batch.frameIndex, "frame_index", in: type)
        guard batch.worldSize >= 1 else {
            throw .invalidField(type: type, field: "world_size", reason: "\(batch.worldSize) is not at least 1")
        }
        guard (0..<batch.worldSize).contains(batch.rank) else {
            throw .invalidField(type: type, field: "rank", reason: "\(batch.rank) is not in 0..<\(batch.worldSize)")
        }
        guard batch.sequences.count == batch.orientations.count else {
            throw .invalidField(
                type: type, field: "orientations",
                reason: "\(batch.orientations.count) orientations for \(batch.sequences.count) sequences")
        }
        if let bad = batch.sequences.first(where: { $0 < 0 }) {
            throw .invalidField(type: type, field: "sequences", reason: "\(bad) is negative")
        }
        if let bad = batch.orientations.first(where: { !(0...7).contains($0) }) {
            throw .invalidField(type: type, field: "orientations", reason: "\(bad) is not in 0...7")
        }

        var names = Set<String>()
        for (index, tensor) in batch.tensors.enumerated() {
            let field = "tensors[\(index)]"
            guard !tensor.name.isEmpty else { throw .invalidField(type: type, field: field, reason: "empty name") }
            guard names.insert(tensor.name).inserted else {
                throw .invalidField(type: type, field: field, reason: "duplicate name '\(tensor.name)'")
            }
            guard !tensor.dataType.isBigEndian else {
                throw .invalidField(type: type, field: field, reason: "'\(tensor.name)' is big-endian; v1 is little-endian only")
            }
            guard tensor.byteCount != nil else {
                throw .invalidField(
                    type: type, field: field, reason: "'\(tensor.name)' has an invalid shape \(tensor.shape)")
            }
        }

        guard payloadByteCounts.count == batch.tensors.count else {
            throw .frameCountMismatch(type: type, expected: 1 + batch.tensors.count, found: 1 + payloadByteCounts.count)
        }
        for (tensor, found) in zip(batch.tensors, payloadByteCounts) {
            let expected = tensor.byteCount ?? -1
            guard found == expected else {
                throw .tensorSizeMismatch(
                    tensor: tensor.name, dtype: tensor.dataType.littleEndianTypestr, shape: tensor.shape,
                    expectedBytes: expected, foundBytes: found)
            }
        }
    }

    private static func requireNonNegative(_ value: Int, _ field: String, in type: String) throws(WireProtocolError) {
        guard value >= 0 else { throw .invalidField(type: type, field: field, reason: "\(value) is negative") }
    }

    private static func requireNoPayloads(_ counts: [Int], type: String) throws(WireProtocolError) {
        guard counts.isEmpty else { throw .frameCountMismatch(type: type, expected: 1, found: 1 + counts.count) }
    }
}
