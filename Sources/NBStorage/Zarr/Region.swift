/// A NumPy-style selection of an array: per dimension a range (`a:b`, `:`, `a:`, `:b`) or one index (`i`),
/// which selects a single position and, as in NumPy, drops that dimension from the result's shape.
public struct Region: Sendable, Equatable {
    public enum Axis: Sendable, Equatable {
        case range(lower: Int?, upper: Int?)
        case index(Int)
    }

    public let axes: [Axis]

    /// The whole array.
    public static let all = Region(axes: [])

    public init(axes: [Axis]) {
        self.axes = axes
    }

    /// Parses `"0,:,2:5"`; returns nil with malformed text. Fewer axes than the array has select all of
    /// the remaining ones.
    public init?(parsing text: String) {
        var axes: [Axis] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = part.trimmingCharacters(in: " ")
            let bounds = item.split(separator: ":", omittingEmptySubsequences: false)
            switch bounds.count {
            case 1:
                guard let index = Int(bounds[0]) else { return nil }
                axes.append(.index(index))
            case 2:
                let lower = bounds[0].isEmpty ? nil : Int(bounds[0])
                let upper = bounds[1].isEmpty ? nil : Int(bounds[1])
                if (!bounds[0].isEmpty && lower == nil) || (!bounds[1].isEmpty && upper == nil) { return nil }
                axes.append(.range(lower: lower, upper: upper))
            default:
                return nil
            }
        }
        self.axes = axes
    }

    /// The selection resolved against `shape`: one range per dimension, and the result's shape
    /// (index axes dropped). Nil when out of bounds.
    public func resolve(in shape: [Int]) -> (ranges: [Range<Int>], shape: [Int])? {
        guard axes.count <= shape.count else { return nil }
        var ranges: [Range<Int>] = []
        var resultShape: [Int] = []
        for (d, extent) in shape.enumerated() {
            let axis = d < axes.count ? axes[d] : .range(lower: nil, upper: nil)
            switch axis {
            case .index(let i):
                guard i >= 0, i < extent else { return nil }
                ranges.append(i..<(i + 1))
            case .range(let lower, let upper):
                let low = lower ?? 0
                let high = upper ?? extent
                guard low >= 0, high <= extent, low <= high else { return nil }
                ranges.append(low..<high)
                resultShape.append(high - low)
            }
        }
        return (ranges, resultShape)
    }
}

private extension Substring {
    func trimmingCharacters(in character: Character) -> Substring {
        var text = self
        while text.first == character { text = text.dropFirst() }
        while text.last == character { text = text.dropLast() }
        return text
    }
}
