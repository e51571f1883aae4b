/// The batch buffers of one stream: which are free, which hold a batch, and which are still read or
/// written by someone else (a worker decoding into it, libzmq sending from it).
///
/// A buffer goes free → `take` → owned by a batch → `retire` (the batch was sent or dropped) → free again once
/// its users are done. Every user `retain`s it and `release`s it; a retired buffer with users left is free only
/// when the last user releases it, so no buffer is ever handed to a second batch while a worker may still
/// write into it or a frame of it may still be on its way out.
struct BufferPool: Equatable {
    /// Every buffer of the pool (indices into the daemon's shared batch memory), in a fixed order.
    let indices: [Int]
    /// Free buffers, the one to hand out next last.
    private(set) var free: [Int]
    /// Buffers that belong to a batch (in assembly or ready).
    private(set) var owned: Set<Int> = []
    /// Users (tasks in flight, frames not released) per buffer.
    private var users: [Int: Int] = [:]

    init(indices: [Int]) {
        self.indices = indices
        free = indices.reversed()
    }

    func contains(_ buffer: Int) -> Bool { indices.contains(buffer) }

    func userCount(_ buffer: Int) -> Int { users[buffer] ?? 0 }

    /// A free buffer for a new batch, if any.
    mutating func take() -> Int? {
        guard let buffer = free.popLast() else { return nil }
        owned.insert(buffer)
        return buffer
    }

    mutating func retain(_ buffer: Int, count: Int = 1) {
        users[buffer, default: 0] += count
    }

    /// One user of `buffer` is done with it.
    mutating func release(_ buffer: Int) {
        guard let count = users[buffer], count > 0 else { return }
        users[buffer] = count - 1 == 0 ? nil : count - 1
        freeIfUnused(buffer)
    }

    /// The batch that owned `buffer` is done with it (sent, or abandoned).
    mutating func retire(_ buffer: Int) {
        guard owned.remove(buffer) != nil else { return }
        freeIfUnused(buffer)
    }

    private mutating func freeIfUnused(_ buffer: Int) {
        guard !owned.contains(buffer), users[buffer] == nil, !free.contains(buffer) else { return }
        free.append(buffer)
    }

    /// Buffers neither free nor owned: retired, waiting for their last user.
    var draining: Int { indices.count - free.count - owned.count }
}
