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
}
