import XCTest
@testable import NBStorage

final class RegionTests: XCTestCase {
    func testParsesRangesAndIndices() throws {
        let region = try XCTUnwrap(Region(parsing: "3, :, 2:5,:7,4:"))
        XCTAssertEqual(region.axes, [
            .index(3), .range(lower: nil, upper: nil), .range(lower: 2, upper: 5),
            .range(lower: nil, upper: 7), .range(lower: 4, upper: nil),
        ])
        let resolved = try XCTUnwrap(region.resolve(in: [10, 4, 6, 8, 9]))
        XCTAssertEqual(resolved.ranges, [3..<4, 0..<4, 2..<5, 0..<7, 4..<9])
        XCTAssertEqual(resolved.shape, [4, 3, 7, 5])
    }

    func testMissingTrailingAxesSelectEverything() throws {
        let resolved = try XCTUnwrap(Region(parsing: "1")?.resolve(in: [2, 3, 4]))
        XCTAssertEqual(resolved.ranges, [1..<2, 0..<3, 0..<4])
        XCTAssertEqual(resolved.shape, [3, 4])
    }

    func testRejectsMalformedAndOutOfBounds() {
        XCTAssertNil(Region(parsing: "1:2:3"))
        XCTAssertNil(Region(parsing: "a"))
        XCTAssertNil(Region(parsing: "1,,2"))
        XCTAssertNil(Region(parsing: "0:5")?.resolve(in: [4]))
        XCTAssertNil(Region(parsing: "4")?.resolve(in: [4]))
        XCTAssertNil(Region(parsing: "3:2")?.resolve(in: [4]))
        XCTAssertNil(Region(parsing: "0,0")?.resolve(in: [4]))
    }
}
