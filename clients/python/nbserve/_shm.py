"""The shared-memory transport's trainer side (docs/protocol.md section 7): one session per rank and process
on the daemon's unix socket, the batch memory mapped once read-only, batches as numpy views of it, and each
batch's lease given back once none of its arrays is referenced any more (or at once, on request).

Lifetime: every array of a batch is made from a small `_View` object (through ``__array_interface__``), so
``array.base`` keeps it alive, and every view keeps the batch's `_Lease`. When the last array (or torch tensor
over it) goes, the lease's finalizer queues its id; the queue is sent as one `release` message by whoever
next takes the session's lock (the loader's next receive, an explicit release, or the finalizer itself when
the lock is free). A finalizer never waits for the lock: it may run inside a send, in any thread.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import select
import socket as pysocket
import struct
import threading
import time
import weakref
from collections import deque
from typing import Any

import numpy as np

from ._protocol import ProtocolError
from ._transport import DaemonError, DaemonLost, DaemonUnavailable

SESSION_VERSION = 1


class LeaseLimit(RuntimeError):
    """The trainer holds every batch the daemon lets a rank hold in shared memory (``serve.leases``), and waits
    for another: nothing can arrive until it lets go of one (drops its arrays, or ``batch.release()``)."""


class ShmUnavailable(DaemonError):
    """``transport="shm"`` was asked for, but this trainer cannot use the daemon's shared memory (says why)."""


def unusable(status: dict[str, Any]) -> str | None:
    """Why this process cannot use the shared-memory transport of the daemon whose `status` this is (None when
    it can): the daemon offers no session socket, or the socket file is not on this host or not accessible."""
    if "shm_socket" not in status:
        return "the daemon is older than the shared-memory transport (its status has no shm_socket)"
    path = status["shm_socket"]
    if path is None:
        return ("the daemon offers no shared-memory socket (its serve.shm_socket is \"\", or its control socket is "
                "not an ipc:// socket)")
    if not isinstance(path, str) or not os.path.exists(path):
        return f"the daemon's shared-memory socket {path} is not on this host (the daemon runs on another machine)"
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"this user may not connect to the daemon's shared-memory socket {path} (it has the control "
                f"socket's mode and group: serve.socket_mode / serve.socket_group)")
    return None


class _Lease:
    """One leased batch: given back when it is garbage (every array of the batch gone) or on `release()`."""

    __slots__ = ("id", "session", "mapping", "_finalizer", "__weakref__")

    def __init__(self, session: Session, lease: int) -> None:
        self.id = lease
        self.session = session
        self.mapping = session.mapping  # keeps the memory mapped while any view lives
        self._finalizer = weakref.finalize(self, session.give_back, lease)

    def release(self) -> None:
        """Gives the batch back now (idempotent). Its arrays still read the memory, which the daemon may reuse."""
        self._finalizer()

    @property
    def released(self) -> bool:
        return not self._finalizer.alive


class _View:
    """The owner of one array's memory: numpy makes the array from ``__array_interface__`` and keeps this object
    as the array's ``base`` (and every view of the array keeps the array)."""

    __slots__ = ("lease", "__array_interface__")

    def __init__(self, lease: _Lease, interface: dict[str, Any]) -> None:
        self.lease = lease
        self.__array_interface__ = interface


class Session:
    """A rank's session with the daemon: the hello, the mapped memory, the leases this process holds."""

    def __init__(self, path: str, rank: int, timeout: float) -> None:
        self.path, self.rank = path, rank
        sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM | pysocket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            raise DaemonUnavailable(f"nb-serve's shared-memory socket {path} does not answer ({error})") from None
        except OSError:
            sock.close()
            raise
        self.socket = sock
        try:
            self._send({"hello": SESSION_VERSION, "rank": rank})
            reply, fds = self._receive()
        except BaseException:
            sock.close()
            raise
        try:
            if not isinstance(reply, dict) or reply.get("ok") is not True:
                why = reply.get("error", reply) if isinstance(reply, dict) else reply
                raise ShmUnavailable(f"nb-serve refused the shared-memory session of rank {rank} on {path}: {why}")
            size, limit = reply.get("bytes"), reply.get("leases")
            if len(fds) != 1 or not isinstance(size, int) or size <= 0 or not isinstance(limit, int) or limit < 1:
                raise ProtocolError(f"the shared-memory hello reply on {path} is malformed: {reply!r} with "
                                    f"{len(fds)} descriptors")
            self.memory = mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except BaseException:
            sock.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        self.size, self.limit = size, limit
        self.mapping = np.frombuffer(self.memory, np.uint8)
        self.address = int(self.mapping.ctypes.data)
        self.held: set[int] = set()     # leases received and not yet given back
        self.streams: set[int] = set()  # streams asked for over this session: their leases are this session's
        self._queue: deque[int] = deque()
        self._lock = threading.Lock()
        self.broken = False
        self.cuda_registered: bool | None = False  # None: CUDA refused to register the mapping

    # -- framing: 4-byte little-endian length, then JSON

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.socket.sendall(struct.pack("<I", len(data)) + data)

    def _receive(self) -> tuple[Any, list[int]]:
        head, fds, _, _ = pysocket.recv_fds(self.socket, 4, 1)
        if len(head) == 0:
            raise DaemonLost(f"nb-serve closed the shared-memory session on {self.path}")
        while len(head) < 4:
            more = self.socket.recv(4 - len(head))
            if not more:
                raise DaemonLost(f"nb-serve closed the shared-memory session on {self.path}")
            head += more
        (length,) = struct.unpack("<I", head)
        body = b""
        while len(body) < length:
            chunk = self.socket.recv(length - len(body))
            if not chunk:
                raise DaemonLost(f"nb-serve closed the shared-memory session on {self.path} mid-message")
            body += chunk
        try:
            return json.loads(body), fds
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ProtocolError(f"a shared-memory session message is not JSON ({error}): {body[:200]!r}") from None

    # -- batches

    def views(self, header: dict[str, Any]) -> tuple[_Lease, dict[str, np.ndarray]]:
        """The lease of a `lease` message and its tensors as read-only numpy views of the mapping."""
        lease = header.get("lease")
        specs = header.get("tensors")
        if not isinstance(lease, int) or isinstance(lease, bool) or lease < 1 or not isinstance(specs, list):
            raise ProtocolError(f"lease message without a lease id or tensors: {header!r}")
        self.held.add(lease)
        owner = _Lease(self, lease)
        arrays: dict[str, np.ndarray] = {}
        for spec in specs:
            try:
                name, dtype = spec["name"], np.dtype(spec["dtype"])
                shape = tuple(int(n) for n in spec["shape"])
                offset = spec["offset"]
            except (KeyError, TypeError, ValueError) as error:
                raise ProtocolError(f"batch {header.get('batch')}: bad tensor description {spec!r} ({error})") from None
            count = dtype.itemsize * math.prod(shape)
            if not isinstance(name, str) or not name or name in arrays or any(n < 0 for n in shape) \
                    or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 \
                    or offset + count > self.size:
                raise ProtocolError(f"batch {header.get('batch')}: bad tensor description {spec!r} (the mapping "
                                    f"has {self.size} bytes)")
            if count == 0:
                arrays[name] = np.empty(shape, dtype)
                continue
            interface = {"version": 3, "shape": shape, "typestr": dtype.str, "data": (self.address + offset, True)}
            arrays[name] = np.asarray(_View(owner, interface))
        return owner, arrays

    def give_back(self, lease: int) -> None:
        """Queues `lease` for release and sends the queue when the session's lock is free (never waits for it:
        this runs from finalizers, possibly inside a send of this very thread)."""
        self._queue.append(lease)
        if self._lock.acquire(blocking=False):
            try:
                self._flush_locked()
            finally:
                self._lock.release()

    def flush(self) -> None:
        """Sends what is queued for release (the loader's thread, before it waits for a message)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        leases = []
        while self._queue:
            lease = self._queue.popleft()
            if lease in self.held:
                self.held.discard(lease)
                leases.append(lease)
        if leases and not self.broken:
            try:
                self._send({"release": leases})
            except OSError:
                self.broken = True  # the daemon is gone: gone() says so, and its leases went with it

    def discard(self, header: dict[str, Any]) -> None:
        """Gives back the lease of a message that is not handed out (stale, passed over, or dropped)."""
        lease = header.get("lease")
        if header.get("type") == "lease" and header.get("stream") in self.streams and isinstance(lease, int):
            self.held.add(lease)
            self.give_back(lease)

    def gone(self) -> bool:
        """True when the daemon closed the session (it stopped or crashed): it never sends after the hello."""
        if self.broken:
            return True
        try:
            readable, _, _ = select.select([self.socket], [], [], 0)
            if readable:
                self.broken = True
        except (OSError, ValueError):
            self.broken = True
        return self.broken

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self, wait: float = 2.0) -> None:
        """Ends the session (the daemon takes back every lease). The mapping stays while any array uses it.

        Waits (up to `wait` seconds) for the daemon to close its end, so that a session opened next for the
        rank (the next loader of this process) is not refused as a second one. Never waits for the lock: a
        loader closed by the garbage collector may be closed in the middle of this thread's own send."""
        locked = self._lock.acquire(blocking=False)
        try:
            alive = not self.broken
            self.broken = True
            try:
                if alive and locked:
                    self.socket.shutdown(pysocket.SHUT_WR)
                    deadline = time.monotonic() + wait
                    while (remaining := deadline - time.monotonic()) > 0:
                        readable, _, _ = select.select([self.socket], [], [], remaining)
                        if not readable or not self.socket.recv(4096):
                            break
            except OSError:
                pass
            finally:
                self.socket.close()
        finally:
            if locked:
                self._lock.release()
