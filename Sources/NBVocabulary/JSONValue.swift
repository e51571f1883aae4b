import Foundation

/// Any JSON value, as found in `.zarray` fields whose shape depends on the codec or dtype.
public enum JSONValue: Codable, Sendable, Equatable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) {
            // "-0.0" also decodes as the integer 0; keep its sign (a float fill value of -0.0).
            if value == 0, let number = try? container.decode(Double.self), number.sign == .minus {
                self = .double(number)
            } else {
                self = .int(value)
            }
        }
        else if let value = try? container.decode(UInt64.self) { self = .uint(value) }
        else if let value = try? container.decode(Double.self) { self = .double(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .uint(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The value as an integer, when it is one exactly.
    public var intValue: Int? {
        switch self {
        case .int(let value): return Int(exactly: value)
        case .uint(let value): return Int(exactly: value)
        case .double(let value): return Int(exactly: value)
        default: return nil
        }
    }

    /// Compact JSON text with sorted keys (for messages and `inspect`).
    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .int(let value): return String(value)
        case .uint(let value): return String(value)
        case .double(let value):
            if value.isNaN { return "\"NaN\"" }
            if value.isInfinite { return value > 0 ? "\"Infinity\"" : "\"-Infinity\"" }
            return String(value)
        case .string(let value): return JSONValue.quote(value)
        case .array(let values): return "[" + values.map(\.description).joined(separator: ", ") + "]"
        case .object(let members):
            return "{" + members.keys.sorted().map { "\(JSONValue.quote($0)): \(members[$0]!.description)" }
                .joined(separator: ", ") + "}"
        }
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

private extension String {
    /// `\u00XX` for a control character.
    init(format value: UInt32) {
        let hex = String(value, radix: 16)
        self = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}

extension JSONValue {
    /// Parses JSON text keeping what `Codable` decoding loses: whether a number was written as an integer.
    /// `1.0` and `1e2` become `.double`, never `.int`, so strict readers can refuse them where integers belong;
    /// integers beyond 64 bits become `.double` too. Throws `JSONValue.ParseError` on anything that is not JSON.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            throw ParseError()
        }
        return try JSONValue(serialized: object)
    }

    /// Not valid JSON (deliberately without Foundation's wording, which names internals).
    public struct ParseError: Error {}

    private init(serialized object: Any) throws {
        switch object {
        case is NSNull:
            self = .null
        case let number as NSNumber:
            // Foundation keeps how the number was written in its type encoding: "c" a bool, "d"/"f" a number
            // with a fraction or exponent (or one too large for 64 bits), anything else an integer.
            switch String(cString: number.objCType) {
            case "c", "B": self = .bool(number.boolValue)
            case "d", "f": self = .double(number.doubleValue)
            case "Q", "L", "I", "S", "C": self = .uint(number.uint64Value)
            default: self = .int(number.int64Value)
            }
        case let text as String:
            self = .string(text)
        case let array as [Any]:
            self = .array(try array.map { try JSONValue(serialized: $0) })
        case let dictionary as [String: Any]:
            var members: [String: JSONValue] = [:]
            for (key, value) in dictionary { members[key] = try JSONValue(serialized: value) }
            self = .object(members)
        default:
            throw ParseError()
        }
    }
}

/// A `Codable` decoding failure as one sentence: the key path at fault and what was wrong, without
/// Foundation's wrapping (for errors that name a file: `.zarray`, resume states).
public func describeDecodingFailure(_ error: any Error) -> String {
    switch error {
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context),
         DecodingError.keyNotFound(_, let context), DecodingError.dataCorrupted(let context):
        let path = context.codingPath.map(\.stringValue).joined(separator: ".")
        return path.isEmpty ? context.debugDescription : "\(path): \(context.debugDescription)"
    default:
        return String(describing: error)
    }
}
