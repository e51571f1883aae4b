import CNBSystem
import Foundation
import Glibc
import NBStorage
import NBVocabulary

/// The shared-memory transport's sessions (docs/protocol.md section 7): same-host trainers connect to a unix
/// socket beside the control socket, say which rank they are, and receive a read-only descriptor of the
/// shared batch memory; batches then reach them as `lease` messages naming where each tensor lies, and they
/// give each batch back by releasing its lease on the session. A session that ends (the trainer exited,
/// crashed or disconnected) gives back everything it held.
///
/// Messages on a session, both ways, are a 4-byte little-endian length and that many bytes of JSON:
/// - trainer → daemon: `{"hello": 1, "rank": R}` once, then `{"release": [lease, …]}` any number of times;
/// - daemon → trainer: the hello's answer, `{"ok": true, "bytes": N, "leases": L, "rank": R}` with the
///   memory's descriptor attached (SCM_RIGHTS), or `{"ok": false, "error": "…"}` before it closes the session.
final class LeaseSessions {
    /// One connected trainer.
    final class Session {
        let fd: Int32
        var rank: Int?
        var inbound: [UInt8] = []
        init(fd: Int32) { self.fd = fd }
    }

    /// Where a leased batch lives.
    struct Lease {
        let rank: Int
        let buffer: Int
        let session: ObjectIdentifier
    }

    let path: String
    let listener: Int32
    private let memoryDescriptor: Int32
    private let memoryBytes: Int
    private let limit: Int
    private(set) var sessions: [Session] = []
    private(set) var leases: [Int: Lease] = [:]
    private var nextLease = 1
    /// Called with (rank, buffer) for every lease given back.
    var onRelease: (Int, Int) -> Void = { _, _ in }
    private let servedRanks: Set<Int>

    /// Largest message a trainer may send (a release of thousands of leases fits).
    static let maximumMessage = 1 << 20

    init(path: String, listener: Int32, memory: SharedBatchMemory, limit: Int, ranks: [Int]) throws {
        self.path = path
        self.listener = listener
        memoryDescriptor = try memory.readOnlyDescriptor()
        memoryBytes = memory.byteCount
        self.limit = limit
        servedRanks = Set(ranks)
    }

    /// The session of `rank`, if a trainer of that rank is connected.
    func session(rank: Int) -> Session? {
        sessions.first { $0.rank == rank }
    }

    /// Leases `rank` holds now.
    func held(rank: Int) -> Int {
        leases.values.filter { $0.rank == rank }.count
    }

    /// Whether `rank` may be sent another lease (`serve.leases`): back-pressure, never an overwrite.
    func mayLease(rank: Int) -> Bool {
        held(rank: rank) < limit
    }

    /// Records a lease of `buffer` sent to `rank`'s session; returns its id.
    func lease(rank: Int, buffer: Int) -> Int? {
        guard let session = session(rank: rank) else { return nil }
        let id = nextLease
        nextLease += 1
        leases[id] = Lease(rank: rank, buffer: buffer, session: ObjectIdentifier(session))
        return id
    }

    /// Forgets a lease whose message could not be sent.
    func cancel(_ id: Int) {
        leases.removeValue(forKey: id)
    }

    /// New connections.
    func accept() {
        while true {
            let fd = nb_accept_cloexec(listener)
            guard fd >= 0 else { return }
            sessions.append(Session(fd: fd))
        }
    }

    /// Reads what `session` sent; ends it on end of file or a message that breaks the protocol.
    func service(_ session: Session) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var ended = false
        while true {
            let count = buffer.withUnsafeMutableBytes { read(session.fd, $0.baseAddress, $0.count) }
            if count > 0 {
                session.inbound.append(contentsOf: buffer[0..<count])
                if session.inbound.count > Self.maximumMessage + 4 { ended = true; break }
                continue
            }
            if count == 0 { ended = true }
            if count < 0 && errno == EINTR { continue }
            break
        }
        while session.inbound.count >= 4 {
            let length = session.inbound.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            guard length <= Self.maximumMessage else {
                refuse(session, "a session message is at most \(Self.maximumMessage) bytes")
                return
            }
            guard session.inbound.count >= 4 + length else { break }
            let message = Array(session.inbound[4..<(4 + length)])
            session.inbound.removeFirst(4 + length)
            do {
                try handle(message, from: session)
            } catch {
                refuse(session, error.description)
                return
            }
        }
        if ended { end(session) }
    }

    private func handle(_ bytes: [UInt8], from session: Session) throws(ControlError) {
        guard let value = try? JSONValue.parse(bytes), case .object(let object) = value else {
            throw .invalid("a session message is one JSON object")
        }
        if object["hello"] != nil {
            for key in object.keys.sorted() where key != "hello" && key != "rank" {
                throw .invalid("unknown key \(JSONValue.string(String(key.prefix(64))).description) in a hello (it takes hello and rank)")
            }
            guard object["hello"] == .int(1) else { throw .invalid("\"hello\" must be 1 (the session protocol version this daemon speaks)") }
            guard session.rank == nil else { throw .invalid("this session already said hello") }
            guard case .int(let raw)? = object["rank"], let rank = Int(exactly: raw), servedRanks.contains(rank) else {
                throw .invalid("\"rank\" must be an integer naming a rank served here (\(servedRanks.sorted().map(String.init).joined(separator: ", ")))")
            }
            guard self.session(rank: rank) == nil else {
                throw .refused("rank \(rank) already has a shared-memory session (one trainer process per rank)")
            }
            session.rank = rank
            let reply = JSONValue.object([
                "ok": .bool(true), "bytes": .int(Int64(memoryBytes)), "leases": .int(Int64(limit)), "rank": .int(Int64(rank)),
            ])
            guard send(reply, to: session, attaching: memoryDescriptor) else { throw .refused("could not send the memory") }
            return
        }
        if let releases = object["release"] {
            guard object.count == 1 else { throw .invalid("a release message has only the key \"release\"") }
            guard case .array(let ids) = releases else { throw .invalid("\"release\" must be an array of lease ids") }
            for id in ids {
                guard case .int(let raw) = id, let lease = Int(exactly: raw) else { throw .invalid("lease ids are integers, not \(id)") }
                // Only the session's own leases; releasing one twice, or another's, is refused.
                guard let held = leases[lease], held.session == ObjectIdentifier(session) else {
                    throw .invalid("lease \(lease) is not held by this session")
                }
                leases.removeValue(forKey: lease)
                onRelease(held.rank, held.buffer)
            }
            return
        }
        throw .invalid("a session message is a hello or a release")
    }

    private func send(_ value: JSONValue, to session: Session, attaching fd: Int32? = nil) -> Bool {
        let body = Array(value.description.utf8)
        var bytes = withUnsafeBytes(of: UInt32(body.count).littleEndian) { Array($0) }
        bytes += body
        // Replies are small and the socket's buffer empty: a send completes at once or the session is gone.
        let sent = bytes.withUnsafeBytes { raw -> Int in
            if let fd { return nb_send_with_fd(session.fd, raw.baseAddress, UInt(raw.count), fd) }
            return Glibc.send(session.fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL))
        }
        return sent == bytes.count
    }

    private func refuse(_ session: Session, _ reason: String) {
        _ = send(.object(["ok": .bool(false), "error": .string(reason)]), to: session)
        Daemon.log("shared-memory session\(session.rank.map { " of rank \($0)" } ?? ""): \(reason); closing it", .warning)
        end(session)
    }

    /// Ends a session: everything it held is given back.
    func end(_ session: Session) {
        let key = ObjectIdentifier(session)
        for (id, lease) in leases where lease.session == key {
            leases.removeValue(forKey: id)
            onRelease(lease.rank, lease.buffer)
        }
        Glibc.close(session.fd)
        sessions.removeAll { $0 === session }
    }

    /// Closes every session and the listener, and removes the socket file.
    func close() {
        for session in sessions { Glibc.close(session.fd) }
        sessions.removeAll()
        Glibc.close(listener)
        Glibc.close(memoryDescriptor)
        unlink(path)
    }
}
