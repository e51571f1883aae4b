import NBVocabulary

extension DataType {
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
