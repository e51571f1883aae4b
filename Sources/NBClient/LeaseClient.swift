import CNBSystem
import Foundation
import Glibc
import NBSystem
import NBVocabulary

/// The trainer's end of a shared-memory session (docs/protocol.md section 7), in Swift: used by `nb-serve
/// demo` and `nb-serve bench` so that they read batches as same-host trainers do.
public final class LeaseClient {
    let fd: Int32
    /// The batch memory, mapped read-only.
    public let memory: UnsafeRawBufferPointer
    public let leaseLimit: Int

    /// Connects to the session socket at `path` and says hello as `rank`.
    public init(path: String, rank: Int) throws {
        let fd = nb_unix_connect(path)
        guard fd >= 0 else { throw SystemCallError(call: "connect(\(path))", errno: errno) }
        do {
            try Self.send(fd, .object(["hello": .int(1), "rank": .int(Int64(rank))]))
            var received: Int32 = -1
            let reply = try Self.receive(fd, descriptor: &received)
            guard reply["ok"] == .bool(true), let bytes = reply["bytes"]?.intValue, let limit = reply["leases"]?.intValue, received >= 0 else {
                if received >= 0 { Glibc.close(received) }
                throw ClientError("\(path) refused the session: \(reply["error"]?.stringValue ?? reply.description)")
            }
            defer { Glibc.close(received) }
            guard let address = mmap(nil, bytes, PROT_READ, MAP_SHARED, received, 0), address != MAP_FAILED else {
                throw SystemCallError(call: "mmap(\(bytes)) of the shared batch memory", errno: errno)
            }
            memory = UnsafeRawBufferPointer(start: address, count: bytes)
            leaseLimit = limit
            self.fd = fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Gives leases back.
    public func release(_ leases: [Int]) throws {
        try Self.send(fd, .object(["release": .array(leases.map { .int(Int64($0)) })]))
    }

    private static func send(_ fd: Int32, _ value: JSONValue) throws {
        let body = Array(value.description.utf8)
        let bytes = withUnsafeBytes(of: UInt32(body.count).littleEndian) { Array($0) } + body
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw SystemCallError(call: "send on the shared-memory session", errno: errno) }
            done += count
        }
    }

    private static func receive(_ fd: Int32, descriptor: inout Int32) throws -> JSONValue {
        var header = [UInt8](repeating: 0, count: 4)
        let count = header.withUnsafeMutableBytes { nb_receive_with_fd(fd, $0.baseAddress, 4, &descriptor) }
        guard count == 4 else { throw ClientError("the shared-memory session closed before its answer") }
        let length = Int(UInt32(littleEndian: header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
        var body = [UInt8](repeating: 0, count: length)
        guard try body.withUnsafeMutableBytes({ try readExactly(fd, into: $0, what: "the shared-memory session") }) else { throw ClientError("the shared-memory session closed during its answer") }
        return try JSONValue.parse(body)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: memory.baseAddress), memory.count)
        Glibc.close(fd)
    }
}
