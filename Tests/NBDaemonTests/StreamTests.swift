import XCTest

@testable import NBDaemon
@testable import NBLoader

final class BufferPoolTests: XCTestCase {
    func testABufferIsFreeOnlyWhenRetiredAndUnused() {
        var pool = BufferPool(indices: [4, 5])
        let first = pool.take()
        XCTAssertEqual(first, 4)
        pool.retain(4, count: 2)  // two tasks decode into it
        pool.retire(4)            // its batch is abandoned while they run
        XCTAssertEqual(pool.free, [5], "a buffer a worker may still write is never handed out")
        XCTAssertEqual(pool.draining, 1)
        pool.release(4)
        XCTAssertEqual(pool.free, [5])
        pool.release(4)
        XCTAssertEqual(pool.free.sorted(), [4, 5])
        XCTAssertEqual(pool.draining, 0)
    }

    func testReleasingAnOwnedBufferKeepsItOwned() {
        var pool = BufferPool(indices: [0])
        XCTAssertEqual(pool.take(), 0)
        pool.retain(0)
        pool.release(0)
        XCTAssertNil(pool.take(), "owned by its batch until retired")
        pool.retire(0)
        XCTAssertEqual(pool.take(), 0)
        // Releases beyond what was retained are ignored rather than freeing twice.
        pool.release(0)
        pool.retire(0)
        pool.retire(0)
        XCTAssertEqual(pool.free, [0])
    }
}

final class StageStreamTests: XCTestCase {
    private func plans(_ count: Int, sequences: [Int] = [3, 9]) -> [BatchPlan] {
        (0..<count).map { BatchPlan(epoch: 2, batch: $0, frameIndex: $0 % 4, positions: sequences, sequences: sequences, orientations: sequences.map { _ in 7 }) }
    }

    /// Decodes `batch` completely (every task of it answered).
    private func complete(_ stream: StageStream, _ scheduled: (id: Int, batch: Int, plan: BatchPlan, buffer: Int), failure: ErrorReport? = nil) {
        for _ in scheduled.plan.sequences { stream.taskFinished(id: scheduled.id, batch: scheduled.batch, buffer: scheduled.buffer, failure: failure) }
    }

    func testAStreamGoesOutInOrderAndEndsOnce() throws {
        let stream = StageStream(rank: 0, stage: .train, buffers: [0, 1])
        XCTAssertEqual(stream.phase, .idle)
        XCTAssertNil(stream.next)
        stream.start(id: 10, epoch: 2, resume: nil, plans: plans(3))
        let a = try XCTUnwrap(stream.scheduleNext())
        let b = try XCTUnwrap(stream.scheduleNext())
        XCTAssertNil(stream.scheduleNext(), "only two buffers")
        complete(stream, b)
        XCTAssertNil(stream.next, "batch 1 is ready but batch 0 goes first")
        complete(stream, a)
        XCTAssertEqual(stream.next, .batch(batch: 0, plan: a.plan, buffer: a.buffer))
        stream.framesQueued(buffer: a.buffer, count: 3)
        stream.sent(stream.next!)
        XCTAssertNil(stream.scheduleNext(), "buffer 0's frames are still with libzmq")
        for _ in 0..<3 { stream.frameReleased(buffer: a.buffer) }
        let c = try XCTUnwrap(stream.scheduleNext())
        XCTAssertEqual(c.buffer, a.buffer)
        stream.sent(stream.next!)
        complete(stream, c, failure: ErrorReport(file: "f.zip", array: "color", chunk: "color/0", reason: "bad"))
        guard case .failure(2, let report) = stream.next else { return XCTFail("\(String(describing: stream.next))") }
        XCTAssertEqual(report.file, "f.zip")
        stream.sent(stream.next!)
        XCTAssertEqual(stream.phase, .ending)
        XCTAssertEqual(stream.next, .end(batches: 2), "the end message counts batches, not errors")
        stream.sent(stream.next!)
        XCTAssertEqual(stream.phase, .ended)
        XCTAssertNil(stream.next)
        XCTAssertFalse(stream.hasMoreToSend)
    }

    func testAcknowledgementsCannotRunAheadOfWhatWasSent() throws {
        let stream = StageStream(rank: 1, stage: .val, buffers: [0, 1, 2])
        stream.start(id: 5, epoch: 2, resume: nil, plans: plans(4))
        let first = try XCTUnwrap(stream.scheduleNext())
        complete(stream, first)
        stream.sent(stream.next!)
        XCTAssertThrowsError(try stream.acknowledge(2)) { error in
            XCTAssertEqual("\(error)", "ack of 2 batches of rank 1's val epoch 2, but only 1 were sent")
        }
        try stream.acknowledge(1)
        try stream.acknowledge(0)
        XCTAssertEqual(stream.consumed, 1, "acknowledgements never go backwards")
    }

    func testTrainerTimingIsPerEpochAndSurvivesAReconnect() {
        let stream = StageStream(rank: 0, stage: .train, buffers: [0, 1])
        stream.start(id: 1, epoch: 0, resume: nil, plans: plans(4))
        XCTAssertNil(stream.timing.stall, "no report, no stall figure")
        stream.timing.add(waits: [0.25, 0.5], busy: 1.0)
        stream.timing.add(waits: [0.25], busy: 1.25)
        XCTAssertEqual(stream.timing.waits, 3)
        XCTAssertEqual(stream.timing.stall, 1.0 / 3.25)
        stream.resumeAtConsumed(id: 2)
        XCTAssertEqual(stream.timing.waits, 3, "a reconnecting trainer continues the same epoch")
        stream.start(id: 3, epoch: 1, resume: nil, plans: plans(4))
        XCTAssertEqual(stream.timing, TrainerTiming(), "a new epoch starts its own figures")
    }

    func testResumingAtConsumedStartsANewStreamAndOrphansOldTasks() throws {
        let stream = StageStream(rank: 0, stage: .train, buffers: [0, 1])
        stream.start(id: 1, epoch: 2, resume: nil, plans: plans(4))
        let a = try XCTUnwrap(stream.scheduleNext())
        complete(stream, a)
        stream.sent(stream.next!)
        try stream.acknowledge(1)
        let b = try XCTUnwrap(stream.scheduleNext())  // a worker is decoding batch 1 into buffer b
        stream.resumeAtConsumed(id: 2)
        XCTAssertEqual(stream.id, 2)
        XCTAssertEqual(stream.nextSend, 1)
        XCTAssertFalse(stream.owns(id: 1, batch: b.batch, buffer: b.buffer), "the old stream's task is stale")
        XCTAssertFalse(stream.buffers.free.contains(b.buffer), "still written by the old task")
        let again = try XCTUnwrap(stream.scheduleNext())
        XCTAssertEqual(again.batch, 1)
        XCTAssertNotEqual(again.buffer, b.buffer)
        for _ in b.plan.sequences { stream.taskFinished(id: 1, batch: b.batch, buffer: b.buffer, failure: nil) }
        XCTAssertTrue(stream.buffers.free.contains(b.buffer), "free once the stale task answered")
        XCTAssertEqual(stream.assemblies[1]?.remaining, 2, "stale answers never count for the new stream")
    }

    func testTheNextEpochIsDecodedAheadAndAdoptedOnlyWhenAskedForExactly() throws {
        let stream = StageStream(rank: 0, stage: .train, buffers: [0, 1, 2])
        stream.start(id: 1, epoch: 2, resume: nil, plans: plans(1))
        let only = try XCTUnwrap(stream.scheduleNext())
        XCTAssertTrue(stream.canLookAhead, "every batch of the epoch is scheduled and buffers are free")
        let next = plans(3)
        stream.lookAhead(id: 9, epoch: 3, resume: nil, plans: next)
        let ahead = try XCTUnwrap(stream.scheduleNext())
        XCTAssertEqual(ahead.id, 9)
        XCTAssertEqual(ahead.batch, 0)
        let ahead2 = try XCTUnwrap(stream.scheduleNext())
        XCTAssertNil(stream.scheduleNext(), "three buffers: one for the current batch, two ahead")
        complete(stream, only)
        for _ in ahead.plan.sequences { stream.taskFinished(id: 9, batch: 0, buffer: ahead.buffer, failure: nil) }
        XCTAssertEqual(stream.readyAhead, 1)
        XCTAssertEqual(stream.next, .batch(batch: 0, plan: only.plan, buffer: only.buffer), "the lookahead never goes out early")

        // Another epoch than the one decoded ahead: the lookahead is dropped.
        let other = StageStream(rank: 0, stage: .train, buffers: [0, 1])
        other.start(id: 1, epoch: 2, resume: nil, plans: [])
        other.lookAhead(id: 4, epoch: 3, resume: nil, plans: next)
        let wasted = try XCTUnwrap(other.scheduleNext())
        XCTAssertFalse(other.start(id: 5, epoch: 3, resume: ResumeState(startEpoch: 3, startSequence: 2), plans: next))
        XCTAssertEqual(other.id, 5)
        XCTAssertNil(other.lookahead)
        XCTAssertFalse(other.buffers.free.contains(wasted.buffer), "its task is still decoding")
        for _ in wasted.plan.sequences { other.taskFinished(id: 4, batch: 0, buffer: wasted.buffer, failure: nil) }
        XCTAssertEqual(other.buffers.free.sorted(), [0, 1])

        // Exactly the epoch decoded ahead: adopted, under the lookahead's id, with its ready batch.
        stream.sent(stream.next!)
        stream.sent(stream.next!)
        XCTAssertTrue(stream.start(id: 10, epoch: 3, resume: nil, plans: next))
        XCTAssertEqual(stream.id, 9)
        XCTAssertEqual(stream.next, .batch(batch: 0, plan: next[0], buffer: ahead.buffer))
        XCTAssertTrue(stream.owns(id: 9, batch: 1, buffer: ahead2.buffer))
        XCTAssertEqual(stream.nextSchedule, 2)
    }

    func testAnEmptyEpochOnlyEnds() {
        let stream = StageStream(rank: 0, stage: .val, buffers: [0])
        stream.start(id: 3, epoch: 0, resume: nil, plans: [])
        XCTAssertEqual(stream.next, .end(batches: 0))
    }
}

final class RankStreamsTests: XCTestCase {
    func testTheMostRecentlyRequestedStageHasTheWireUntilItsEnd() throws {
        let pair = RankStreams(rank: 0, trainBuffers: [0, 1], valBuffers: [2, 3])
        XCTAssertNil(pair.onWire)
        let plan = BatchPlan(epoch: 0, batch: 0, frameIndex: 0, positions: [1], sequences: [1], orientations: [7])
        pair.train.start(id: 1, epoch: 0, resume: nil, plans: [plan, plan])
        pair.requested(.train)
        XCTAssertTrue(pair.onWire === pair.train)
        pair.val.start(id: 2, epoch: 0, resume: nil, plans: [plan])
        pair.requested(.val)
        XCTAssertTrue(pair.onWire === pair.val, "validation goes out first, the training stream pauses")
        XCTAssertTrue(pair.byPriority[0] === pair.val)
        let scheduled = try XCTUnwrap(pair.val.scheduleNext())
        pair.val.taskFinished(id: 2, batch: 0, buffer: scheduled.buffer, failure: nil)
        pair.val.sent(pair.val.next!)
        XCTAssertTrue(pair.onWire === pair.val, "until its end is sent")
        pair.val.sent(pair.val.next!)
        XCTAssertTrue(pair.onWire === pair.train, "then training continues where it stopped")
        XCTAssertTrue(pair.stream(owning: 3) === pair.val)
        XCTAssertTrue(pair.stream(owning: 1) === pair.train)
        XCTAssertNil(pair.stream(owning: 4))
    }
}

final class TrainProgressTests: XCTestCase {
    func testResumePositionIsTheFirstGroupNotEveryRankConsumed() {
        let ranks = [
            TrainProgress(epoch: 3, consumed: 17, batches: 40, resume: nil),
            TrainProgress(epoch: 3, consumed: 9, batches: 40, resume: nil),
        ]
        // 8 frames per sequence: rank 1 finished one group; a group is 4 sequences of the epoch's order.
        XCTAssertEqual(TrainProgress.resumePosition(ranks, rankCount: 2, framesPerSequence: 8, sequencesPerGroup: 4, fallback: nil),
                       ResumeState(startEpoch: 3, startSequence: 4))
        let resumed = ranks.map { TrainProgress(epoch: $0.epoch, consumed: $0.consumed, batches: $0.batches, resume: ResumeState(startEpoch: 3, startSequence: 12)) }
        XCTAssertEqual(TrainProgress.resumePosition(resumed, rankCount: 2, framesPerSequence: 8, sequencesPerGroup: 4, fallback: nil),
                       ResumeState(startEpoch: 3, startSequence: 16))
        let done = ranks.map { TrainProgress(epoch: 3, consumed: 40, batches: $0.batches, resume: nil) }
        XCTAssertEqual(TrainProgress.resumePosition(done, rankCount: 2, framesPerSequence: 8, sequencesPerGroup: 4, fallback: nil),
                       ResumeState(startEpoch: 4, startSequence: 0))
        let behind = [TrainProgress(epoch: 4, consumed: 40, batches: 40, resume: nil), ranks[1]]
        XCTAssertEqual(TrainProgress.resumePosition(behind, rankCount: 2, framesPerSequence: 8, sequencesPerGroup: 4, fallback: nil),
                       ResumeState(startEpoch: 3, startSequence: 4), "the oldest epoch being served decides")
        let fallback = ResumeState(startEpoch: 1, startSequence: 8)
        XCTAssertEqual(TrainProgress.resumePosition([ranks[0]], rankCount: 2, framesPerSequence: 8, sequencesPerGroup: 4, fallback: fallback),
                       fallback, "until every rank streams, the state the daemon started from")
        let last = [TrainProgress(epoch: Int(Int32.max), consumed: 1, batches: 1, resume: nil)]
        XCTAssertEqual(TrainProgress.resumePosition(last, rankCount: 1, framesPerSequence: 8, sequencesPerGroup: 4, fallback: nil),
                       ResumeState(startEpoch: Int(Int32.max) + 1, startSequence: 0), "the largest epoch a request may name does not overflow")
    }
}

final class StreamIDTests: XCTestCase {
    func testIdsAreFreshAndStartAtTheClock() {
        var ids = StreamIDs(start: 41)
        XCTAssertEqual([ids.take(), ids.take(), ids.take()], [41, 42, 43])
        var clock = StreamIDs()
        let first = clock.take()
        // Microseconds since 1970: later than 2025-01-01 and within a day of now.
        XCTAssertGreaterThan(first, 1_735_689_600_000_000)
        XCTAssertLessThan(abs(first - Int(Date().timeIntervalSince1970 * 1_000_000)), 86_400_000_000)
        var restarted = StreamIDs()
        XCTAssertGreaterThan(restarted.take(), first, "a restarted daemon never reuses an id")
    }
}
