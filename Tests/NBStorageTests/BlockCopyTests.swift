import XCTest
@testable import NBStorage

/// The strided copy behind region reads, against an element-by-element reference written here.
final class BlockCopyTests: XCTestCase {
    private func flatIndex(_ index: [Int], _ shape: [Int]) -> Int {
        zip(index, shape).reduce(0) { $0 * $1.1 + $1.0 }
    }

    func testRandomBoxesMatchElementwiseCopy() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let rank = Int.random(in: 1...5, using: &generator)
            let itemSize = [1, 2, 4, 8].randomElement(using: &generator)!
            let source = (0..<rank).map { _ in Int.random(in: 1...6, using: &generator) }
            let destination = (0..<rank).map { _ in Int.random(in: 1...6, using: &generator) }
            let extent = (0..<rank).map { Int.random(in: 1...min(source[$0], destination[$0]), using: &generator) }
            let sourceOrigin = (0..<rank).map { Int.random(in: 0...(source[$0] - extent[$0]), using: &generator) }
            let destinationOrigin = (0..<rank).map { Int.random(in: 0...(destination[$0] - extent[$0]), using: &generator) }
            let sourceBytes = (0..<(source.reduce(1, *) * itemSize)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            var actual = [UInt8](repeating: 0xAA, count: destination.reduce(1, *) * itemSize)
            var expected = actual

            let block = BlockCopy(
                itemSize: itemSize, extent: extent, sourceShape: source, sourceOrigin: sourceOrigin,
                destinationShape: destination, destinationOrigin: destinationOrigin)
            sourceBytes.withUnsafeBytes { from in actual.withUnsafeMutableBytes { block.copy(from: from, to: $0) } }

            var index = [Int](repeating: 0, count: rank)
            outer: while true {
                let s = flatIndex(zip(index, sourceOrigin).map(+), source) * itemSize
                let d = flatIndex(zip(index, destinationOrigin).map(+), destination) * itemSize
                for byte in 0..<itemSize { expected[d + byte] = sourceBytes[s + byte] }
                var dim = rank - 1
                while dim >= 0 {
                    index[dim] += 1
                    if index[dim] < extent[dim] { continue outer }
                    index[dim] = 0
                    dim -= 1
                }
                break
            }
            XCTAssertEqual(actual, expected, "source \(source) destination \(destination) extent \(extent)")
        }
    }

    func testFillRepeatsTheElement() {
        let block = BlockCopy(
            itemSize: 4, extent: [2, 3], sourceShape: [2, 3], sourceOrigin: [0, 0],
            destinationShape: [3, 5], destinationOrigin: [1, 1])
        var buffer = [UInt8](repeating: 0, count: 3 * 5 * 4)
        buffer.withUnsafeMutableBytes { block.fill($0, with: [1, 2, 3, 4]) }
        for row in 0..<3 {
            for column in 0..<5 {
                let inside = row >= 1 && column >= 1 && column <= 3
                let element = Array(buffer[((row * 5 + column) * 4)..<((row * 5 + column) * 4 + 4)])
                XCTAssertEqual(element, inside ? [1, 2, 3, 4] : [0, 0, 0, 0], "(\(row), \(column))")
            }
        }
    }

    func testContiguousRangeOnlyWhenTrailingAxesAreWhole() {
        func block(_ extent: [Int], _ origin: [Int], in shape: [Int]) -> BlockCopy {
            BlockCopy(itemSize: 2, extent: extent, sourceShape: extent, sourceOrigin: extent.map { _ in 0 },
                      destinationShape: shape, destinationOrigin: origin)
        }
        XCTAssertEqual(block([1, 2, 4], [3, 1, 0], in: [5, 3, 4]).contiguousDestinationRange(), ((3 * 12 + 4) * 2)..<((3 * 12 + 12) * 2))
        XCTAssertNil(block([1, 2, 3], [0, 0, 0], in: [5, 3, 4]).contiguousDestinationRange())
        XCTAssertNil(block([2, 2, 4], [0, 0, 0], in: [5, 3, 4]).contiguousDestinationRange())
    }
}
