/// noisebase's flip/rotate augmentation (`noisebase.projective.FlipRotate`): one of 8 axis-aligned
/// orientations applied to a camera and to every per-pixel array of a frame.
///
/// Orientation bits, as in noisebase's code (its docstring calls 0 the identity; it is 7):
/// `o % 2 < 1` flips columns, `o % 4 < 2` flips rows, `o % 8 < 4` transposes (then flips both).
public struct FlipRotate: Sendable, Equatable {
    /// Number of orientations (`0..<count`).
    public static let count = 8

    public let orientation: Int
    public let height: Int
    public let width: Int
    /// Side of the square crop window.
    public let window: Int

    public init(orientation: Int, height: Int, width: Int, window: Int) {
        self.orientation = orientation
        self.height = height
        self.width = width
        self.window = window
    }

    public var flipsColumns: Bool { orientation % 2 < 1 }
    public var flipsRows: Bool { orientation % 4 < 2 }
    public var transposes: Bool { orientation % 8 < 4 }

    /// `apply_camera`'s offset rule: mirrored against `width - window` / `height - window` by the flips,
    /// swapped and reflected by the transpose (so it can become negative).
    public func cropOffset(_ offset: (Int, Int)) -> (Int, Int) {
        var (row, column) = offset
        if flipsColumns { column = width - column - window }
        if flipsRows { row = height - row - window }
        if transposes {
            let center = (height + width) / 2 - window
            (row, column) = (center - column, center - row)
        }
        return (row, column)
    }

    /// Where output pixel `(i, j)` of an oriented `window × window` image comes from, as a start pixel and
    /// a step per output column, both in source pixels (`row * window + column`): `apply_array` without
    /// the copies numpy makes.
    public func sourceRow(_ i: Int) -> (start: Int, step: Int) {
        let n = window
        // Unflipped source coordinate → flipped one.
        func row(_ r: Int) -> Int { flipsRows ? n - 1 - r : r }
        func column(_ c: Int) -> Int { flipsColumns ? n - 1 - c : c }
        if transposes {
            // out[i, j] = flipped[n-1-j, n-1-i]: j walks the source rows backwards.
            let fixedColumn = column(n - 1 - i)
            let firstRow = row(n - 1)
            let rowStep = flipsRows ? 1 : -1
            return (firstRow * n + fixedColumn, rowStep * n)
        }
        return (row(i) * n + column(0), flipsColumns ? -1 : 1)
    }

    /// The whole window as one affine walk: output pixel `(i, j)` reads source pixel
    /// `start + i * rowStep + j * columnStep` (`sourceRow` is affine in `i`).
    public var walk: (start: Int, rowStep: Int, columnStep: Int) {
        let (start, columnStep) = sourceRow(0)
        let rowStep = window > 1 ? sourceRow(1).start - start : 0
        return (start, rowStep, columnStep)
    }
}
