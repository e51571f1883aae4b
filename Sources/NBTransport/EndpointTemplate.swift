/// `serve.endpoint` with its rank placeholders filled: `{rank}` and `{BASE+rank}` (e.g.
/// `tcp://127.0.0.1:{5560+rank}` → `tcp://127.0.0.1:5561` for rank 1).
public enum EndpointTemplate {
    public static func render(_ template: String, rank: Int) -> String? {
        var out = ""
        var rest = template[...]
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else { return nil }
            let field = rest[rest.index(after: open)..<close].filter { $0 != " " }
            if field == "rank" {
                out += String(rank)
            } else if field.hasSuffix("+rank"), let base = Int(field.dropLast(5)) {
                out += String(base + rank)
            } else {
                return nil
            }
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }
}
