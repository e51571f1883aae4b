import NBLoader
import XCTest

@testable import NBDaemon

final class ControlRequestTests: XCTestCase {
    private func decode(_ json: String) throws(ControlError) -> ControlRequest {
        try ControlRequest.decode([Array(json.utf8)])
    }

    private func assertRefused(_ json: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            let request = try decode(json)
            XCTFail("accepted \(json) as \(request)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.description, expected, file: file, line: line)
        }
    }

    func testWellFormedRequestsDecode() throws {
        XCTAssertEqual(
            try decode(#"{"cmd":"epoch","rank":1,"stage":"validation","epoch":3,"state":{"start_epoch_idx":3,"start_sequence_idx":8},"continue":true}"#),
            .epoch(EpochRequest(rank: 1, stage: .val, epoch: 3, state: ResumeState(startEpoch: 3, startSequence: 8), continues: true)))
        XCTAssertEqual(
            try decode(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"state":{}}"#),
            .epoch(EpochRequest(rank: 0, stage: .train, epoch: 0, state: nil, continues: false)))
        XCTAssertEqual(
            try decode(#"{"cmd":"ack","rank":0,"stage":"train","epoch":2,"batches":5,"stream":1796186412000001}"#),
            .ack(AckRequest(rank: 0, stage: .train, epoch: 2, batches: 5, stream: 1_796_186_412_000_001)))
        XCTAssertEqual(
            try decode(#"{"cmd":"ack","rank":0,"stage":"val","epoch":0,"batches":0,"wait_s":[0.25,0,1e-3],"busy_s":2}"#),
            .ack(AckRequest(rank: 0, stage: .val, epoch: 0, batches: 0, waits: [0.25, 0, 0.001], busy: 2)))
        XCTAssertEqual(try decode(#"{"cmd":"length"}"#), .length(stage: .train, rank: 0, epoch: 0))
        XCTAssertEqual(
            try decode(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":1,"transport":"shm"}"#),
            .epoch(EpochRequest(rank: 0, stage: .train, epoch: 1, state: nil, continues: false, transport: .shm)))
        XCTAssertEqual(try decode(#"{"cmd":"status"}"#), .status)
        XCTAssertEqual(try decode(#"{"cmd":"checkpoint"}"#), .checkpoint)
        XCTAssertEqual(try decode(#"{"cmd":"stop"}"#), .stop)
    }

    func testIntegersAreJSONIntegersInRange() {
        assertRefused(#"{"cmd":"epoch","rank":false,"stage":"train","epoch":0}"#, #""rank" must be a JSON integer, not a bool"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":true}"#, #""epoch" must be a JSON integer, not a bool"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":1.5}"#, #""epoch" must be a JSON integer, not a number with a fraction or exponent"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":"1"}"#, #""epoch" must be a JSON integer, not a string"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":-1}"#, #""epoch" -1 is out of range (0 to 2147483647)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":9223372036854775807}"#,
                      #""epoch" 9223372036854775807 is out of range (0 to 2147483647)"#)
        assertRefused(#"{"cmd":"epoch","rank":18446744073709551616,"stage":"train","epoch":0}"#,
                      #""rank" 18446744073709551616 is out of range (0 to 2147483647)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":1.0}"#, #""epoch" must be a JSON integer, not a number with a fraction or exponent"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":1e2}"#, #""epoch" must be a JSON integer, not a number with a fraction or exponent"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"state":{"start_epoch_idx":0,"start_sequence_idx":-1}}"#,
                      #""start_sequence_idx" -1 is out of range (0 to 2147483647)"#)
        assertRefused(#"{"cmd":"ack","rank":0,"stage":"train","epoch":0,"batches":1,"stream":0.5}"#,
                      #""stream" must be a JSON integer, not a number with a fraction or exponent"#)
    }

    func testTrainerTimingIsSecondsInRange() {
        let ack = #"{"cmd":"ack","rank":0,"stage":"train","epoch":0,"batches":1,"#
        assertRefused(ack + #""wait_s":[0.1,true]}"#, #""wait_s"[1] must be a number of seconds, not a bool"#)
        assertRefused(ack + #""wait_s":[-0.5]}"#, #""wait_s"[0] -0.5 is out of range (0 to 86400 seconds)"#)
        assertRefused(ack + #""wait_s":0.5}"#, #""wait_s" must be an array of seconds, not a number with a fraction or exponent"#)
        assertRefused(ack + #""busy_s":"1"}"#, #""busy_s" must be a number of seconds, not a string"#)
        assertRefused(ack + #""busy_s":1e9}"#, #""busy_s" 1000000000.0 is out of range (0 to 86400 seconds)"#)
        assertRefused(ack + #""busy_s":null}"#, #""busy_s" must be a number of seconds, not null"#)
    }

    func testUnknownKeysAndCommandsAreNamed() {
        assertRefused(#"{"cmd":"checkpoint","dir":"/etc"}"#, #"unknown key "dir" in a "checkpoint" request (it takes no other keys)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"contine":true}"#,
                      #"unknown key "contine" in a "epoch" request (it takes only continue, epoch, rank, stage, state, transport)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"state":{"start_epoch":0}}"#,
                      #"unknown key "start_epoch" in "state" (it takes start_epoch_idx and start_sequence_idx)"#)
        assertRefused(#"{"cmd":"reboot"}"#, #"unknown command "reboot" (commands: epoch, ack, length, status, checkpoint, stop)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"test","epoch":0}"#, #""stage" "test" is not train, val or validation"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":1,"epoch":0}"#, #""stage" must be a string, not an integer"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"epoch":0}"#, #"the request needs a string "stage" (train or val)"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"continue":1}"#, #""continue" must be true or false, not an integer"#)
        assertRefused(#"{"cmd":"epoch","rank":0,"stage":"train","epoch":0,"transport":"tcp"}"#, #""transport" must be "zmq" or "shm", not "tcp""#)
        assertRefused(#"{"cmd":1}"#, #""cmd" must be a string, not an integer"#)
        assertRefused(#"{"rank":1}"#, #"the request has no "cmd" (one of epoch, ack, length, status, checkpoint, stop)"#)
    }

    func testMalformedAndOversizedRequestsAreRefusedWithoutEcho() {
        assertRefused("not json", "the request is not valid JSON (8 bytes)")
        assertRefused("[1]", #"a request is a JSON object with a string "cmd"; this one is an array"#)
        let huge = #"{"cmd":"status","pad":""# + String(repeating: "x", count: ControlRequest.maximumByteCount) + #""}"#
        assertRefused(huge, "the request is \(huge.utf8.count) bytes; requests are at most 65536 bytes")
        XCTAssertThrowsError(try ControlRequest.decode([Array(#"{"cmd":"status"}"#.utf8), []])) { error in
            XCTAssertEqual("\(error)", "a request is one message frame holding one JSON object; this one has 2 frames")
        }
        // A long unknown key is shortened in the reply, never echoed whole.
        let key = String(repeating: "k", count: 1000)
        assertRefused("{\"cmd\":\"stop\",\"\(key)\":1}", "unknown key \"\(key.prefix(64))\" in a \"stop\" request (it takes no other keys)")
    }
}
