/// What `inspect` reports about one array: its metadata plus what it occupies in the store.
public struct ArraySummary: Sendable {
    public let name: String
    public let metadata: ArrayMetadata
    public let codec: String
    /// Sum of the stored sizes of the chunks present.
    public let storedBytes: Int
    /// Decoded size of the whole array.
    public let byteCount: Int
    public let storedChunks: Int
    public let totalChunks: Int

    /// Uncompressed over stored bytes; nil when nothing is stored.
    public var ratio: Double? { storedBytes > 0 ? Double(byteCount) / Double(storedBytes) : nil }

    public init(_ array: ZarrArray) throws(ZarrError) {
        name = array.name
        metadata = array.metadata
        codec = array.codec.summary
        let keys = try array.storedChunkKeys()
        storedChunks = keys.count
        storedBytes = keys.reduce(0) { $0 + (array.store.storedSize(of: $1) ?? 0) }
        byteCount = metadata.byteCount
        totalChunks = metadata.chunkGrid.reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 }
    }
}

extension ZarrArray {
    /// Writes `region` of the array to a `.npy` file, decoding at most about `budget` bytes at a time
    /// (whole chunk rows along the first axis), so arrays larger than memory can be exported.
    public func exportNpy(_ region: Region, to path: String, budget: Int = 256 << 20) throws -> [Int] {
        guard let (ranges, resultShape) = region.resolve(in: shape) else {
            throw ZarrError.badRegion(file: file, array: name, reason: "region \(region.axes) does not fit shape \(shape)")
        }
        let writer = try NpyWriter(path: path, typestr: dataType.littleEndianTypestr, shape: resultShape)
        guard let firstAxis = ranges.first else {
            try withTemporaryBuffer(byteCount(of: ranges)) { buffer in
                try read(ranges, into: buffer)
                try writer.write(UnsafeRawBufferPointer(buffer))
            }
            try writer.close()
            return resultShape
        }
        let rowBytes = byteCount(of: ranges) / max(firstAxis.count, 1)
        let chunkRows = metadata.chunks[0]
        // Slabs end on chunk boundaries so that every chunk is decoded exactly once.
        let rowsPerSlab = max(chunkRows, (budget / max(rowBytes, 1)) / chunkRows * chunkRows)
        var start = firstAxis.lowerBound
        while start < firstAxis.upperBound {
            let boundary = (start / chunkRows) * chunkRows + rowsPerSlab
            let end = min(firstAxis.upperBound, boundary)
            var slab = ranges
            slab[0] = start..<end
            try withTemporaryBuffer(byteCount(of: slab)) { buffer in
                try read(slab, into: buffer)
                try writer.write(UnsafeRawBufferPointer(buffer))
            }
            start = end
        }
        try writer.close()
        return resultShape
    }

    private func withTemporaryBuffer(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        defer { buffer.deallocate() }
        try body(buffer)
    }
}
