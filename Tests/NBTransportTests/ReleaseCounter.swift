import Foundation
import Synchronization

/// Counts release callbacks; the callback only bumps an atomic, as `ZeroCopyBuffer` requires.
final class ReleaseCounter: Sendable {
    private let count = Atomic<Int>(0)

    var value: Int { count.load(ordering: .acquiring) }

    func callback() -> @Sendable () -> Void {
        { self.count.add(1, ordering: .releasing) }
    }

    /// Waits (bounded) until the count reaches `target`.
    func wait(for target: Int, timeout: Duration = .seconds(10)) -> Int {
        let deadline = ContinuousClock.now + timeout
        while value < target && ContinuousClock.now < deadline { usleep(1000) }
        return value
    }
}
