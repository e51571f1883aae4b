/// A Zarr v2 / NumPy scalar type nb-serve can decode: booleans, integers and IEEE floats of either byte order.
public struct DataType: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable {
        case bool, signed, unsigned, float
    }

    public let kind: Kind
    public let itemSize: Int
    /// Stored most-significant byte first (`>`); decoded values are always native little-endian.
    public let isBigEndian: Bool

    /// Parses a NumPy type string such as `<f4`, `|u1` or `>i8`; nil for anything not supported
    /// (complex, strings, structured, datetime).
    public init?(typestr: String) {
        let characters = Array(typestr)
        guard characters.count >= 3, let size = Int(String(characters[2...])) else { return nil }
        switch characters[0] {
        case "<", "|", "=": isBigEndian = false
        case ">": isBigEndian = size > 1
        default: return nil
        }
        switch (characters[1], size) {
        case ("b", 1): kind = .bool
        case ("i", 1), ("i", 2), ("i", 4), ("i", 8): kind = .signed
        case ("u", 1), ("u", 2), ("u", 4), ("u", 8): kind = .unsigned
        case ("f", 2), ("f", 4), ("f", 8): kind = .float
        default: return nil
        }
        itemSize = size
    }

    /// NumPy's name for the type: `bool`, `int8` … `uint64`, `float16` … `float64`.
    public var numpyName: String {
        switch kind {
        case .bool: return "bool"
        case .signed: return "int\(itemSize * 8)"
        case .unsigned: return "uint\(itemSize * 8)"
        case .float: return "float\(itemSize * 8)"
        }
    }

    /// The type string of the decoded (native little-endian) values, as in a `.npy` header.
    public var littleEndianTypestr: String {
        let code: Character = switch kind {
        case .bool: "b"
        case .signed: "i"
        case .unsigned: "u"
        case .float: "f"
        }
        return "\(itemSize == 1 ? "|" : "<")\(code)\(itemSize)"
    }

    public var description: String { numpyName }

    /// The little-endian bytes of one element holding `fill` (the `.zarray` `fill_value`), or nil when
    /// the value does not fit the type. `null` means "no fill value": zeros.
    func fillBytes(_ fill: JSONValue) -> [UInt8]? {
        func bytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
            withUnsafeBytes(of: value.littleEndian) { Array($0) }
        }
        if fill == .null { return [UInt8](repeating: 0, count: itemSize) }
        switch kind {
        case .bool:
            switch fill {
            case .bool(let value): return [value ? 1 : 0]
            case .int(let value) where value == 0 || value == 1: return [UInt8(value)]
            default: return nil
            }
        case .signed, .unsigned:
            let wide: Int128
            switch fill {
            case .int(let value): wide = Int128(value)
            case .uint(let value): wide = Int128(value)
            case .bool(let value): wide = value ? 1 : 0
            case .double(let value) where value.rounded() == value && abs(value) < 1e19: wide = Int128(value)
            default: return nil
            }
            switch (kind, itemSize) {
            case (.signed, 1): return Int8(exactly: wide).map { bytes($0) }
            case (.signed, 2): return Int16(exactly: wide).map { bytes($0) }
            case (.signed, 4): return Int32(exactly: wide).map { bytes($0) }
            case (.signed, _): return Int64(exactly: wide).map { bytes($0) }
            case (.unsigned, 1): return UInt8(exactly: wide).map { bytes($0) }
            case (.unsigned, 2): return UInt16(exactly: wide).map { bytes($0) }
            case (.unsigned, 4): return UInt32(exactly: wide).map { bytes($0) }
            default: return UInt64(exactly: wide).map { bytes($0) }
            }
        case .float:
            let value: Double
            switch fill {
            case .int(let number): value = Double(number)
            case .uint(let number): value = Double(number)
            case .double(let number): value = number
            case .bool(let flag): value = flag ? 1 : 0
            case .string("NaN"): value = .nan
            case .string("Infinity"): value = .infinity
            case .string("-Infinity"): value = -.infinity
            default: return nil
            }
            switch itemSize {
            case 2: return bytes(Float16(Float(value)).bitPattern)
            case 4: return bytes(Float(value).bitPattern)
            default: return bytes(value.bitPattern)
            }
        }
    }
}
