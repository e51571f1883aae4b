import NBSystem

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
    /// Writes `region` of the array to a `.npy` file in bounded memory, whatever the array's shape.
    ///
    /// Before anything is written, the output's file system must have room for the whole file (statvfs),
    /// so a shape that claims more than the disk holds is an error instead of a disk filled with fill
    /// values. The region is then read in blocks of at most `budget` bytes (or one chunk, if a chunk is
    /// larger), each aligned to chunk boundaries so that every chunk is decoded once, and each block's
    /// contiguous runs are written at their place in the file. Returns the exported shape.
    public func exportNpy(_ region: Region, to path: String, budget: Int = 64 << 20) throws -> [Int] {
        guard let (ranges, resultShape) = region.resolve(in: shape) else {
            throw ZarrError.badRegion(file: file, array: name, reason: "region \(region.axes) does not fit shape \(shape)")
        }
        let header = NpyWriter.header(typestr: dataType.littleEndianTypestr, shape: resultShape)
        let dataBytes = byteCount(of: ranges)
        try NpyWriter.checkSpace(for: path, bytes: header.count + dataBytes)
        let writer = try NpyWriter(path: path, typestr: dataType.littleEndianTypestr, shape: resultShape)
        if dataBytes > 0 {
            let plan = ExportPlan(ranges: ranges, chunks: metadata.chunks, itemSize: dataType.itemSize, budget: budget)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: plan.maximumBlockBytes, alignment: 64)
            defer { buffer.deallocate() }
            try plan.forEachBlock { block in
                let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<byteCount(of: block)])
                try read(block, into: bytes)
                try plan.forEachRun(of: block) { (source, destination, count) throws(SystemCallError) in
                    try writer.write(UnsafeRawBufferPointer(rebasing: bytes[source..<(source + count)]), atDataOffset: destination)
                }
            }
        }
        try writer.close()
        return resultShape
    }
}

/// How an export walks a region: blocks that are whole chunks along the leading axes up to a split axis,
/// a run of whole chunks along the split axis, and the full region along the axes after it. The split axis
/// is the first one at which such a block fits the budget, so blocks are as large as the budget allows and
/// each block is a few long contiguous runs of the output.
struct ExportPlan {
    let ranges: [Range<Int>]
    let chunks: [Int]
    let itemSize: Int
    /// The split axis.
    let axis: Int
    /// How many positions along the split axis one block spans (a multiple of its chunk extent).
    let span: Int
    let maximumBlockBytes: Int
    /// Output strides in bytes, C order.
    let strides: [Int]

    init(ranges: [Range<Int>], chunks: [Int], itemSize: Int, budget: Int) {
        self.ranges = ranges
        self.chunks = chunks
        self.itemSize = itemSize
        let rank = ranges.count
        var strides = [Int](repeating: itemSize, count: rank)
        for d in stride(from: rank - 2, through: 0, by: -1) { strides[d] = strides[d + 1] * ranges[d + 1].count }
        self.strides = strides
        guard rank > 0 else {
            axis = 0
            span = 1
            maximumBlockBytes = itemSize
            return
        }
        // Bytes of one position along axis k, with whole chunks before it and the full region after it.
        func rowBytes(_ k: Int) -> Int {
            (0..<k).reduce(strides[k]) { $0 * min(chunks[$1], ranges[$1].count) }
        }
        var chosen = rank - 1
        for k in 0..<rank where rowBytes(k) * min(chunks[k], ranges[k].count) <= budget {
            chosen = k
            break
        }
        axis = chosen
        let chunk = chunks[chosen]
        let fitting = max(1, budget / max(rowBytes(chosen) * chunk, 1)) * chunk
        // A block along the split axis ends on a chunk boundary, so it never spans more than `span`.
        span = min(fitting, ranges[chosen].count + chunk)
        maximumBlockBytes = rowBytes(chosen) * min(span, ranges[chosen].count)
    }

    /// Visits every block, in output order; blocks partition the region and never split a chunk along
    /// the axes up to the split axis.
    func forEachBlock<Failure: Error>(_ body: ([Range<Int>]) throws(Failure) -> Void) throws(Failure) {
        guard !ranges.isEmpty else {
            try body([])
            return
        }
        var block = ranges
        func segment(_ d: Int, from start: Int) -> Range<Int> {
            let width = d == axis ? span : chunks[d]
            let end = min(ranges[d].upperBound, (start / chunks[d]) * chunks[d] + width)
            return start..<end
        }
        for d in 0...axis { block[d] = segment(d, from: ranges[d].lowerBound) }
        while true {
            try body(block)
            var d = axis
            while d >= 0 {
                if block[d].upperBound < ranges[d].upperBound {
                    block[d] = segment(d, from: block[d].upperBound)
                    break
                }
                block[d] = segment(d, from: ranges[d].lowerBound)
                d -= 1
            }
            if d < 0 { return }
        }
    }

    /// The contiguous runs of `block` in the output: (byte offset in the block buffer, byte offset in
    /// the output's data, byte count). One run per position of the axes before the split axis.
    func forEachRun<Failure: Error>(of block: [Range<Int>], _ body: (Int, Int, Int) throws(Failure) -> Void) throws(Failure) {
        guard !block.isEmpty else {
            try body(0, 0, itemSize)
            return
        }
        let runBytes = block[axis].count * strides[axis]
        var index = (0..<axis).map { block[$0].lowerBound }
        var source = 0
        while true {
            var destination = (block[axis].lowerBound - ranges[axis].lowerBound) * strides[axis]
            for d in 0..<axis { destination += (index[d] - ranges[d].lowerBound) * strides[d] }
            try body(source, destination, runBytes)
            source += runBytes
            var d = axis - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < block[d].upperBound { break }
                index[d] = block[d].lowerBound
                d -= 1
            }
            if d < 0 { return }
        }
    }
}
