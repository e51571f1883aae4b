import CNBSystem
import Glibc
import NBSystem

/// Batch buffers shared between the daemon and its workers: one anonymous memory file (`memfd`),
/// mapped by both. Workers write decoded slots straight into it; the daemon sends from it. Nothing is
/// named in /dev/shm, so a killed daemon leaves nothing behind.
public final class SharedBatchMemory {
    public let descriptor: Int32
    public let byteCount: Int
    public let base: UnsafeMutableRawPointer

    /// Creates `byteCount` bytes of shared memory (the daemon side).
    public init(creating byteCount: Int, name: String = "nb-serve-batches") throws(SystemCallError) {
        let fd = nb_memfd_create(name)
        guard fd >= 0 else { throw SystemCallError(call: "memfd_create", errno: errno) }
        guard ftruncate(fd, off_t(byteCount)) == 0 else {
            let code = errno
            close(fd)
            throw SystemCallError(call: "sizing the shared batch memory to \(byteCount) bytes (\(byteCount >> 20) MiB)", errno: code)
        }
        // Every page is reserved now: too little memory is a start-up error naming the size, never a SIGBUS
        // in a worker or a trainer halfway through training.
        let reserved = nb_fallocate(fd, Int64(byteCount))
        guard reserved == 0 else {
            close(fd)
            throw SystemCallError(call: "reserving \(byteCount) bytes (\(byteCount >> 20) MiB) of shared batch memory", errno: reserved)
        }
        do {
            base = try Self.map(fd, byteCount)
        } catch {
            close(fd)
            throw error
        }
        descriptor = fd
        self.byteCount = byteCount
    }

    /// Maps memory the daemon passed as descriptor `fd` (the worker side).
    public init(mapping fd: Int32, byteCount: Int) throws(SystemCallError) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError(call: "fstat(shared memory fd \(fd))", errno: errno) }
        guard Int(info.st_size) >= byteCount else {
            throw SystemCallError(call: "shared memory is \(info.st_size) bytes, expected \(byteCount)", errno: EINVAL)
        }
        descriptor = fd
        self.byteCount = byteCount
        base = try Self.map(fd, byteCount)
    }

    private static func map(_ fd: Int32, _ count: Int) throws(SystemCallError) -> UnsafeMutableRawPointer {
        let address = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else { throw SystemCallError(call: "mmap(\(count))", errno: errno) }
        return address
    }

    /// A new read-only descriptor of the same memory, for a trainer: it can map it, never write it.
    public func readOnlyDescriptor() throws(SystemCallError) -> Int32 {
        let fd = open("/proc/self/fd/\(descriptor)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open(/proc/self/fd/\(descriptor), O_RDONLY)", errno: errno) }
        return fd
    }

    /// `count` bytes at `offset`, or nil when outside the mapping.
    public func region(offset: Int, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard offset >= 0, count >= 0, offset <= byteCount, count <= byteCount - offset else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + offset, count: count)
    }

    deinit {
        munmap(base, byteCount)
        close(descriptor)
    }
}
