/// The small part of Python's `str.format` that noisebase's `src.files` templates use:
/// `{index}`, `{index:d}`, `{index:04d}`, `{index:4}`, and `{{`/`}}` for literal braces.
public struct FileNameTemplate: Sendable, Equatable {
    private enum Piece: Sendable, Equatable {
        case literal(String)
        case index(width: Int, zeroPadded: Bool)
    }

    public let text: String
    private let pieces: [Piece]

    /// Parses `template`; the error text says what is wrong with it.
    public init(_ template: String) throws(TemplateError) {
        text = template
        var pieces: [Piece] = []
        var literal = ""
        var characters = template[...]
        while let character = characters.first {
            characters = characters.dropFirst()
            if character == "}" {
                guard characters.first == "}" else { throw TemplateError(reason: "single '}' (write '}}' for a brace)") }
                characters = characters.dropFirst()
                literal.append("}")
            } else if character == "{" {
                if characters.first == "{" {
                    characters = characters.dropFirst()
                    literal.append("{")
                    continue
                }
                guard let close = characters.firstIndex(of: "}") else { throw TemplateError(reason: "unclosed '{'") }
                let field = characters[..<close]
                characters = characters[characters.index(after: close)...]
                let parts = field.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts[0] == "index" else {
                    throw TemplateError(reason: "unknown field '{\(field)}' (only {index} is defined)")
                }
                var spec = parts.count > 1 ? String(parts[1]) : ""
                if spec.hasSuffix("d") { spec.removeLast() }
                let zeroPadded = spec.hasPrefix("0")
                guard spec.isEmpty || (Int(spec).map { $0 >= 0 } ?? false) else {
                    throw TemplateError(reason: "unsupported format spec in '{\(field)}'")
                }
                if !literal.isEmpty { pieces.append(.literal(literal)); literal = "" }
                pieces.append(.index(width: Int(spec) ?? 0, zeroPadded: zeroPadded))
            } else {
                literal.append(character)
            }
        }
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        self.pieces = pieces
    }

    /// The file name of sequence `index`, as `template.format(index=index)` gives it.
    public func name(index: Int) -> String {
        var out = ""
        for piece in pieces {
            switch piece {
            case .literal(let text):
                out += text
            case .index(let width, let zeroPadded):
                let digits = String(index.magnitude)
                let sign = index < 0 ? "-" : ""
                let padding = max(0, width - digits.count - sign.count)
                out += zeroPadded
                    ? sign + String(repeating: "0", count: padding) + digits
                    : String(repeating: " ", count: padding) + sign + digits
            }
        }
        return out
    }
}

public struct TemplateError: Error, Sendable {
    public let reason: String
}
