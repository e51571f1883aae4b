import NBVocabulary

/// One Zarr v2 array of a group, read chunk by chunk from its store.
///
/// Not safe to use from two threads at once: it keeps one scratch chunk buffer that every read reuses,
/// so steady-state reads allocate nothing. Each worker opens its own arrays.
public final class ZarrArray {
    public let name: String
    public let metadata: ArrayMetadata
    public let codec: any ChunkCodec
    let store: any ZarrStore
    /// Checks CRC-32 of stored ZIP entries too (slower; `inspect --verify` turns it on).
    public var verifyChecksums = false
    private var scratch: UnsafeMutableRawBufferPointer?

    public var shape: [Int] { metadata.shape }
    public var dataType: DataType { metadata.dataType }
    public var file: String { store.path }

    /// The `.zarray` bytes `metadata` was parsed from, and the archive version they were read from: a
    /// ZIP file changed under the reader must still hold the same `.zarray`, or chunks would be decoded
    /// with a layout that is no longer the file's.
    private let metadataText: [UInt8]
    private var metadataVersion: Int

    init(name: String, metadata: ArrayMetadata, metadataText: [UInt8], store: any ZarrStore) throws(ZarrError) {
        self.name = name
        self.metadata = metadata
        self.metadataText = metadataText
        self.store = store
        self.metadataVersion = (store as? ZipArchive)?.reopenCount ?? 0
        self.codec = try CodecRegistry.codec(for: metadata.compressor, file: store.path, array: name)
    }

    /// After the archive was mapped again, its `.zarray` must be the one this array was opened with.
    private func checkMetadataUnchanged() throws(ZarrError) {
        guard let archive = store as? ZipArchive else { return }
        // Notice a change now, before the chunk is read with this metadata.
        do { try archive.reopenIfChanged() } catch { throw .store(file: file, reason: "\(error)") }
        guard archive.reopenCount != metadataVersion else { return }
        let key = name.isEmpty ? ".zarray" : name + "/.zarray"
        let current: [UInt8]?
        do {
            current = try archive.withContents(of: key, verifyChecksum: true) { Array($0) }
        } catch {
            throw .invalidMetadata(file: file, array: name, reason: "changed since the file was opened and cannot be read again: \(error)")
        }
        guard current == metadataText else {
            throw .invalidMetadata(file: file, array: name, reason: "changed since the file was opened (the file was rewritten under the reader); restart to read the new layout")
        }
        metadataVersion = archive.reopenCount
    }

    deinit { scratch?.deallocate() }

    /// The store key of the chunk at grid position `index`.
    public func chunkKey(_ index: [Int]) -> String {
        let joined = index.isEmpty ? "0" : index.map(String.init).joined(separator: metadata.dimensionSeparator)
        return name.isEmpty ? joined : name + "/" + joined
    }

    /// Bytes needed for `region` (one half-open range per dimension).
    public func byteCount(of region: [Range<Int>]) -> Int {
        region.reduce(dataType.itemSize) { $0 * $1.count }
    }

    /// Reads `region` (one half-open range per dimension) into `destination`, C order, native byte order.
    ///
    /// Only chunks intersecting the region are read, each decoded once. A chunk that covers a contiguous
    /// block of the output is decoded straight into it; others go through one reused scratch buffer.
    /// Missing chunks read as the fill value.
    public func read(_ region: [Range<Int>], into destination: UnsafeMutableRawBufferPointer) throws(ZarrError) {
        try check(region)
        guard destination.count == byteCount(of: region) else {
            throw .badRegion(file: file, array: name, reason: "destination holds \(destination.count) bytes, region needs \(byteCount(of: region))")
        }
        if region.contains(where: { $0.isEmpty }) { return }
        let rank = shape.count
        let chunks = metadata.chunks
        let itemSize = dataType.itemSize
        let regionShape = region.map(\.count)
        var lower = [Int](repeating: 0, count: rank)
        var extent = [Int](repeating: 0, count: rank)
        var chunkOrigin = [Int](repeating: 0, count: rank)
        var regionOrigin = [Int](repeating: 0, count: rank)
        try forEachChunkIndex(intersecting: region) { (index) throws(ZarrError) in
            for d in 0..<rank {
                let start = index[d] * chunks[d]
                lower[d] = max(region[d].lowerBound, start)
                extent[d] = min(region[d].upperBound, start + chunks[d]) - lower[d]
                chunkOrigin[d] = lower[d] - start
                regionOrigin[d] = lower[d] - region[d].lowerBound
            }
            let block = BlockCopy(
                itemSize: itemSize, extent: extent, sourceShape: chunks, sourceOrigin: chunkOrigin,
                destinationShape: regionShape, destinationOrigin: regionOrigin)
            try readChunk(index, block: block, into: destination)
        }
    }

    /// Visits the grid position of every chunk that intersects a checked, non-empty `region`, last
    /// dimension fastest (an odometer over the intersecting part of the chunk grid).
    private func forEachChunkIndex<Failure: Error>(intersecting region: [Range<Int>], _ body: ([Int]) throws(Failure) -> Void) throws(Failure) {
        let chunks = metadata.chunks
        let first = region.indices.map { region[$0].lowerBound / chunks[$0] }
        let last = region.indices.map { (region[$0].upperBound - 1) / chunks[$0] }
        var index = first
        while true {
            try body(index)
            var d = index.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] <= last[d] { break }
                index[d] = first[d]
                d -= 1
            }
            if d < 0 { return }
        }
    }

    /// Decodes the chunk at grid position `index` into `destination` (`metadata.chunkByteCount` bytes,
    /// native byte order); a missing chunk reads as the fill value. For callers that read chunks in place
    /// (one pass over the decoded data instead of a region read and a second pass), several at once.
    public func decodeChunk(at index: [Int], into destination: UnsafeMutableRawBufferPointer) throws(ZarrError) {
        let grid = metadata.chunkGrid
        guard index.count == grid.count, zip(index, grid).allSatisfy({ $0 >= 0 && $0 < $1 }) else {
            throw .badRegion(file: file, array: name, reason: "chunk \(index) is outside the chunk grid \(grid)")
        }
        guard destination.count == metadata.chunkByteCount else {
            throw .badRegion(file: file, array: name, reason: "destination holds \(destination.count) bytes, a chunk needs \(metadata.chunkByteCount)")
        }
        if try !decode(key: chunkKey(index), into: destination) { fillChunk(destination) }
    }

    /// Decodes every chunk that intersects `region` into the scratch buffer and nothing more: the
    /// decompression floor of a region read, for benchmarks. Returns the decoded byte count.
    public func decodeChunks(intersecting region: [Range<Int>]) throws(ZarrError) -> Int {
        try check(region)
        if region.contains(where: { $0.isEmpty }) { return 0 }
        let buffer = scratchBuffer()
        var decoded = 0
        try forEachChunkIndex(intersecting: region) { (index) throws(ZarrError) in
            if try decode(key: chunkKey(index), into: buffer) { decoded += buffer.count }
        }
        return decoded
    }

    /// Decodes every stored chunk and reports each one that fails, without stopping at the first.
    public func verify() throws(ZarrError) -> [ZarrError] {
        var failures: [ZarrError] = []
        let buffer = scratchBuffer()
        for key in try storedChunkKeys() {
            do {
                _ = try decode(key: key, into: buffer)
            } catch {
                failures.append(error)
            }
        }
        return failures
    }

    /// Keys of the chunks actually present in the store (missing chunks are fill value).
    public func storedChunkKeys() throws(ZarrError) -> [String] {
        let prefix = name.isEmpty ? "" : name + "/"
        let keys: [String]
        do { keys = try store.allKeys() } catch { throw .store(file: file, reason: "\(error)") }
        let grid = metadata.chunkGrid
        return keys.filter { key in
            guard key.hasPrefix(prefix) else { return false }
            let rest = key.dropFirst(prefix.count)
            if shape.isEmpty { return rest == "0" }
            let parts = rest.split(separator: Character(metadata.dimensionSeparator), omittingEmptySubsequences: false)
            guard parts.count == grid.count else { return false }
            for (part, count) in zip(parts, grid) {
                guard let value = Int(part), value >= 0, value < count, String(value) == part else { return false }
            }
            return true
        }
    }

    // MARK: - Chunks

    private func check(_ region: [Range<Int>]) throws(ZarrError) {
        guard region.count == shape.count else {
            throw .badRegion(file: file, array: name, reason: "region has \(region.count) dimensions, array has \(shape.count)")
        }
        for (d, range) in region.enumerated() where range.lowerBound < 0 || range.upperBound > shape[d] {
            throw .badRegion(file: file, array: name, reason: "region \(range.lowerBound)..<\(range.upperBound) is outside 0..<\(shape[d]) in dimension \(d)")
        }
    }

    /// Fills a whole chunk buffer with the fill value (a missing chunk).
    private func fillChunk(_ buffer: UnsafeMutableRawBufferPointer) {
        let chunks = metadata.chunks
        let whole = BlockCopy(
            itemSize: dataType.itemSize, extent: chunks, sourceShape: chunks, sourceOrigin: chunks.map { _ in 0 },
            destinationShape: chunks, destinationOrigin: chunks.map { _ in 0 })
        whole.fill(buffer, with: metadata.fillBytes)
    }

    private func scratchBuffer() -> UnsafeMutableRawBufferPointer {
        if let scratch { return scratch }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: metadata.chunkByteCount, alignment: 64)
        scratch = buffer
        return buffer
    }

    /// Decodes the chunk at `key` into `buffer` (exactly one chunk long); false when the chunk is absent.
    private func decode(key: String, into buffer: UnsafeMutableRawBufferPointer) throws(ZarrError) -> Bool {
        try checkMetadataUnchanged()
        do {
            let found: Void? = try store.withContents(of: key, verifyChecksum: verifyChecksums) { bytes in
                try codec.decode(bytes, into: buffer)
            }
            guard found != nil else { return false }
        } catch let failure as CodecFailure {
            throw .corruptChunk(file: file, array: name, key: key, reason: failure.message)
        } catch let zip as ZipError {
            throw .corruptChunk(file: file, array: name, key: key, reason: "\(zip)")
        } catch {
            throw .corruptChunk(file: file, array: name, key: key, reason: "\(error)")
        }
        if dataType.isBigEndian { ByteOrder.swapInPlace(buffer, itemSize: dataType.itemSize) }
        return true
    }

    private func readChunk(_ index: [Int], block: BlockCopy, into destination: UnsafeMutableRawBufferPointer) throws(ZarrError) {
        let key = chunkKey(index)
        if let contiguous = block.contiguousDestinationRange(), contiguous.count == metadata.chunkByteCount {
            let target = UnsafeMutableRawBufferPointer(rebasing: destination[contiguous])
            if try !decode(key: key, into: target) { block.fill(destination, with: metadata.fillBytes) }
            return
        }
        let buffer = scratchBuffer()
        if try decode(key: key, into: buffer) {
            block.copy(from: UnsafeRawBufferPointer(buffer), to: destination)
        } else {
            block.fill(destination, with: metadata.fillBytes)
        }
    }
}
