import Foundation
import NBVocabulary

/// A validated Zarr v2 `.zarray`.
public struct ArrayMetadata: Sendable {
    public let shape: [Int]
    public let chunks: [Int]
    public let dataType: DataType
    /// The `compressor` object exactly as stored (nil for `null`).
    public let compressor: JSONValue?
    public let fillValue: JSONValue
    /// `.` or `/`, joining chunk indices into a key.
    public let dimensionSeparator: String
    /// One element holding the fill value, little-endian.
    let fillBytes: [UInt8]

    /// Chunks larger than this are refused: blosc cannot hold more than 2 GiB either, and a larger
    /// claim in a damaged `.zarray` must not size an allocation.
    public static let maximumChunkBytes = 1 << 31

    public var chunkByteCount: Int { chunks.reduce(dataType.itemSize, *) }
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dataType.itemSize }

    /// Number of chunks along each dimension.
    public var chunkGrid: [Int] { zip(shape, chunks).map { ($0 + $1 - 1) / $1 } }

    private struct Raw: Decodable {
        let zarr_format: Int?
        let shape: [Int]?
        let chunks: [Int]?
        let dtype: JSONValue?
        let compressor: JSONValue?
        let fill_value: JSONValue?
        let order: String?
        let filters: JSONValue?
        let dimension_separator: String?
    }

    /// Parses and checks `.zarray` text; `file` and `array` only name the source in errors.
    public init(json: UnsafeRawBufferPointer, file: String, array: String) throws(ZarrError) {
        func invalid(_ reason: String) -> ZarrError { .invalidMetadata(file: file, array: array, reason: reason) }
        func unsupported(_ feature: String) -> ZarrError { .unsupported(file: file, array: array, feature: feature) }

        let raw: Raw
        do {
            raw = try JSONDecoder().decode(Raw.self, from: Data(json))
        } catch {
            throw invalid("not valid JSON of the expected form (\(describeDecodingFailure(error)))")
        }
        guard raw.zarr_format == 2 else {
            throw unsupported("zarr_format \(raw.zarr_format.map(String.init) ?? "missing") (only Zarr v2 is read)")
        }
        guard let shape = raw.shape, let chunks = raw.chunks else { throw invalid("missing shape or chunks") }
        guard shape.count == chunks.count else {
            throw invalid("shape \(shape) and chunks \(chunks) have different lengths")
        }
        guard shape.allSatisfy({ $0 >= 0 }), chunks.allSatisfy({ $0 >= 1 }) else {
            throw invalid("shape \(shape) must be ≥ 0 and chunks \(chunks) ≥ 1")
        }
        guard case .string(let typestr) = raw.dtype else {
            throw unsupported("dtype \(raw.dtype?.description ?? "missing") (structured or absent)")
        }
        guard let dataType = DataType(typestr: typestr) else { throw unsupported("dtype '\(typestr)'") }
        if let order = raw.order, order != "C" { throw unsupported("order '\(order)' (only C order)") }
        switch raw.filters {
        case nil, .null?: break
        case .array(let list)? where list.isEmpty: break
        case let filters?: throw unsupported("filters \(filters) (only null)")
        }
        let separator = raw.dimension_separator ?? "."
        guard separator == "." || separator == "/" else {
            throw invalid("dimension_separator '\(separator)' is neither '.' nor '/'")
        }
        // Products are checked for overflow before anything is sized from them.
        var chunkBytes = dataType.itemSize
        for extent in chunks {
            let (product, overflow) = chunkBytes.multipliedReportingOverflow(by: extent)
            guard !overflow, product <= Self.maximumChunkBytes else {
                throw unsupported("chunk size: chunks \(chunks) of \(dataType.itemSize)-byte items exceed 2 GiB")
            }
            chunkBytes = product
        }
        var total = dataType.itemSize
        for extent in shape {
            let (product, overflow) = total.multipliedReportingOverflow(by: extent)
            guard !overflow else { throw invalid("shape \(shape) overflows a 64-bit byte count") }
            total = product
        }
        let fill = raw.fill_value ?? .null
        guard let fillBytes = dataType.fillBytes(fill) else {
            throw invalid("fill_value \(fill) does not fit dtype \(typestr)")
        }
        self.shape = shape
        self.chunks = chunks
        self.dataType = dataType
        self.compressor = raw.compressor == .null ? nil : raw.compressor
        self.fillValue = fill
        self.dimensionSeparator = separator
        self.fillBytes = fillBytes
    }
}
