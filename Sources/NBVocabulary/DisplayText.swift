/// Text taken from files (array and entry names, paths, dtype strings) made safe to print to a terminal,
/// a log or a protocol message: a name in a hostile file must not be able to move the cursor, recolour a
/// terminal or hide text behind a bidirectional override.
///
/// Control characters (C0, DEL, C1), format characters (bidirectional overrides, zero-width characters)
/// and line/paragraph separators become `\xHH` or `\u{HHHH}`; everything else is kept. Backslashes are
/// kept as they are, so escaping is idempotent: text that was escaped once (a lower layer's error
/// message embedded in a higher one) is unchanged by escaping it again.
public func displayText(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: needsEscape) else { return text }
    var result = ""
    result.reserveCapacity(text.utf8.count + 8)
    for scalar in text.unicodeScalars {
        guard needsEscape(scalar) else {
            result.unicodeScalars.append(scalar)
            continue
        }
        let hex = String(scalar.value, radix: 16)
        if scalar.value < 0x100 {
            result += "\\x" + (hex.count < 2 ? "0" : "") + hex
        } else {
            result += "\\u{" + hex + "}"
        }
    }
    return result
}

private func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
    if scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) { return true }
    if scalar.isASCII { return false }
    switch scalar.properties.generalCategory {
    case .control, .format, .lineSeparator, .paragraphSeparator:
        return true
    default:
        return false
    }
}
