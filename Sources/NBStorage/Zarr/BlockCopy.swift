/// Copies (or fills) an N-dimensional box between two C-ordered buffers of different shapes.
///
/// Trailing dimensions that are whole in both buffers are merged first, so the inner loop is one
/// `memcpy` per contiguous run, as long as possible.
struct BlockCopy {
    let itemSize: Int
    /// Box size in elements per dimension.
    let extent: [Int]
    let sourceShape: [Int]
    let sourceOrigin: [Int]
    let destinationShape: [Int]
    let destinationOrigin: [Int]

    /// C-order byte strides of a shape.
    static func strides(_ shape: [Int], itemSize: Int) -> [Int] {
        var strides = [Int](repeating: itemSize, count: shape.count)
        var step = itemSize
        for d in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[d] = step
            step *= shape[d]
        }
        return strides
    }

    /// When the box is one contiguous byte range of the destination, that range.
    func contiguousDestinationRange() -> Range<Int>? {
        let strides = Self.strides(destinationShape, itemSize: itemSize)
        // Contiguous iff, after the first dimension longer than 1, every dimension is whole.
        guard let firstWide = extent.firstIndex(where: { $0 > 1 }) else {
            let start = offset(destinationOrigin, strides)
            return start..<(start + itemSize)
        }
        for d in (firstWide + 1)..<extent.count where extent[d] != destinationShape[d] { return nil }
        let start = offset(destinationOrigin, strides)
        return start..<(start + extent.reduce(itemSize, *))
    }

    private func offset(_ origin: [Int], _ strides: [Int]) -> Int {
        zip(origin, strides).reduce(0) { $0 + $1.0 * $1.1 }
    }

    /// Runs: (run length in bytes, source byte offsets, destination byte offsets) via `body` per run.
    private func forEachRun(_ body: (_ source: Int, _ destination: Int, _ length: Int) -> Void) {
        var rank = extent.count
        if rank == 0 { body(0, 0, itemSize); return }
        var runElements = extent[rank - 1]
        // Merge trailing dimensions that are whole in the box and in both buffers.
        while rank > 1 && extent[rank - 1] == sourceShape[rank - 1] && extent[rank - 1] == destinationShape[rank - 1] {
            rank -= 1
            runElements *= extent[rank - 1]
        }
        let sourceStrides = Self.strides(sourceShape, itemSize: itemSize)
        let destinationStrides = Self.strides(destinationShape, itemSize: itemSize)
        let runBytes = runElements * itemSize
        let outer = rank - 1
        var sourceBase = offset(sourceOrigin, sourceStrides)
        var destinationBase = offset(destinationOrigin, destinationStrides)
        if outer == 0 { body(sourceBase, destinationBase, runBytes); return }
        var counter = [Int](repeating: 0, count: outer)
        while true {
            body(sourceBase, destinationBase, runBytes)
            var d = outer - 1
            while d >= 0 {
                counter[d] += 1
                sourceBase += sourceStrides[d]
                destinationBase += destinationStrides[d]
                if counter[d] < extent[d] { break }
                sourceBase -= sourceStrides[d] * extent[d]
                destinationBase -= destinationStrides[d] * extent[d]
                counter[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }

    func copy(from source: UnsafeRawBufferPointer, to destination: UnsafeMutableRawBufferPointer) {
        guard let from = source.baseAddress, let to = destination.baseAddress else { return }
        forEachRun { s, d, length in
            assert(s + length <= source.count && d + length <= destination.count, "block copy out of bounds")
            (to + d).copyMemory(from: from + s, byteCount: length)
        }
    }

    /// Fills the box in `destination` with copies of one element's bytes.
    func fill(_ destination: UnsafeMutableRawBufferPointer, with element: [UInt8]) {
        guard let to = destination.baseAddress else { return }
        let allZero = element.allSatisfy { $0 == 0 }
        forEachRun { _, d, length in
            assert(d + length <= destination.count, "block fill out of bounds")
            let run = to + d
            if allZero { run.initializeMemory(as: UInt8.self, repeating: 0, count: length); return }
            element.withUnsafeBytes { run.copyMemory(from: $0.baseAddress!, byteCount: element.count) }
            // Double the filled prefix until the run is full: log2(n) memcpys instead of n stores.
            var filled = element.count
            while filled < length {
                let step = min(filled, length - filled)
                (run + filled).copyMemory(from: run, byteCount: step)
                filled += step
            }
        }
    }
}

/// Byte-order conversion of decoded big-endian data.
enum ByteOrder {
    static func swapInPlace(_ buffer: UnsafeMutableRawBufferPointer, itemSize: Int) {
        guard let base = buffer.baseAddress else { return }
        let count = buffer.count / itemSize
        switch itemSize {
        case 2:
            let items = base.bindMemory(to: UInt16.self, capacity: count)
            for i in 0..<count { items[i] = items[i].byteSwapped }
        case 4:
            let items = base.bindMemory(to: UInt32.self, capacity: count)
            for i in 0..<count { items[i] = items[i].byteSwapped }
        case 8:
            let items = base.bindMemory(to: UInt64.self, capacity: count)
            for i in 0..<count { items[i] = items[i].byteSwapped }
        default:
            break
        }
    }
}
