"""The daemon's two sockets as a trainer sees them: the control socket (REQ, JSON request/reply, every wait
bounded) and the rank's data socket (one PULL per rank endpoint and process, shared by every loader of that
rank, kept across epochs and across daemon restarts).

Both sockets are watched with a ZeroMQ socket monitor: the daemon's end of a connection closing (the daemon
stopped, crashed or is restarting) is seen at once, so nothing waits for a reply or a batch that cannot
come."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ._curve import CurveKeys, check_access, secure
from ._protocol import ProtocolError, decode_header

if TYPE_CHECKING:
    from ._shm import Session


class DaemonError(RuntimeError):
    """The daemon refused a control request (its reply had "ok": false), or it cannot serve this trainer."""


class DaemonUnavailable(ConnectionError, TimeoutError):
    """Nothing answers at the control endpoint: no daemon is running there (the message says how to start one).
    Also a TimeoutError, which is what a missing daemon raised before (after the whole `timeout`)."""


class DaemonLost(ConnectionError):
    """The daemon's end of a connection closed: it stopped or crashed (and may be restarting)."""


class StreamLost(RuntimeError):
    """A stream can no longer be read: the daemon that served it went away, or this stage was asked for again
    (a newer iteration of the same stage replaced it)."""


# Heartbeats on every connection (ZMTP 3.1): a daemon whose host vanished without closing the connection is
# seen as gone after HEARTBEAT_TIMEOUT_MS, like one whose process ended.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000


class _Watch:
    """A socket's monitor: whether the daemon's end of a connection has closed since the last look."""

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self.monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def disconnected(self) -> bool:
        """Consumes the pending events; True when one was a disconnection."""
        seen = False
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            seen = seen or event["event"] == zmq.EVENT_DISCONNECTED
        return seen

    def close(self, socket: zmq.Socket[Any]) -> None:
        socket.disable_monitor()
        self.monitor.close(linger=0)


def _configure(socket: zmq.Socket[Any], endpoint: str, curve: CurveKeys | None) -> None:
    """Options every socket to the daemon gets, before it connects (CURVE keys on tcp endpoints).

    Heartbeats only on tcp: an ipc connection ends with the daemon's process (the kernel closes it), so they
    would find nothing more there; and libzmq 4.3.5 can abort the whole trainer (`Assertion failed: !_io_error
    (src/stream_engine_base.cpp:310)`) when a heartbeat falls on an ipc connection that a killed daemon's end
    has just closed."""
    socket.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("tcp://"):
        socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    secure(socket, endpoint, curve)


# How long a connection to the control socket may take before nothing is taken to be listening. libzmq
# completes a connection (and the ZMTP handshake, on the daemon's I/O thread) within milliseconds whenever a
# daemon is there, busy or not; only the reply waits for the daemon's loop, and that wait is `timeout`.
CONNECT_S = 1.5


def default_control() -> str:
    """The daemon's default control endpoint (as `nb-serve run` computes it)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        directory = runtime.split(":")[0]
    elif os.environ.get("XDG_RUNTIME_DIR"):
        directory = os.environ["XDG_RUNTIME_DIR"] + "/nb-serve"
    else:
        directory = f"/tmp/nb-serve-{os.getuid()}"
    return f"ipc://{directory}/control.sock"


def ipc_path(endpoint: str) -> str | None:
    """The socket file of an ipc:// endpoint (None for other transports and abstract sockets)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return endpoint[len("ipc://"):]
    return None


def how_to_start(endpoint: str) -> str:
    return (f"start the daemon with `nb-serve run --config DATASET.yaml` (its serve.control must be {endpoint}; "
            f"under systemd: `sudo systemctl start nb-serve`), or pass the loader the control endpoint of the "
            f"daemon that runs; `nb-serve ctl --control {endpoint} status` checks it")


def _curve_hint(endpoint: str, curve: CurveKeys | None) -> str:
    if endpoint.startswith("tcp://") and curve is None:
        return (" If the daemon's tcp endpoints use CURVE (a handshake without keys never completes), pass "
                "server_key= and client_key=.")
    return ""


_contexts: dict[int, zmq.Context[Any]] = {}
_contexts_lock = threading.Lock()


def context() -> zmq.Context[Any]:
    """One ZeroMQ context per process (a forked child gets its own)."""
    pid = os.getpid()
    with _contexts_lock:
        ctx = _contexts.get(pid)
        if ctx is None or ctx.closed:
            ctx = _contexts[pid] = zmq.Context()
        return ctx


class ControlClient:
    """Request/reply with the daemon's control socket.

    A request fails within ``connect_timeout`` seconds with DaemonUnavailable when nothing listens at the
    endpoint (for ipc, at once when the socket file does not exist); with DaemonLost when the daemon's end
    closes before it replied; with TimeoutError when a connected daemon does not reply within ``timeout``
    seconds. Each time the socket is replaced, so the next request starts clean."""

    def __init__(self, endpoint: str, timeout: float, curve: CurveKeys | None = None,
                 connect_timeout: float = CONNECT_S) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self.connect_timeout = connect_timeout
        self._socket: zmq.Socket[Any] | None = None
        self._watch: _Watch | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> tuple[zmq.Socket[Any], _Watch]:
        if self._socket is None or self._watch is None or self._pid != os.getpid():
            check_access(self.endpoint)
            socket = context().socket(zmq.REQ)
            _configure(socket, self.endpoint, self.curve)
            # Queue requests only to completed connections: POLLOUT then says that a daemon is there.
            socket.setsockopt(zmq.IMMEDIATE, 1)
            watch = _Watch(socket)
            socket.connect(self.endpoint)
            self._socket, self._watch, self._pid = socket, watch, os.getpid()
        return self._socket, self._watch

    def request(self, body: dict[str, Any], *, check: bool = True, connect_timeout: float | None = None,
                await_start: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Sends one request and returns the daemon's reply (raising DaemonError for "ok": false when `check`).

        `connect_timeout` replaces the wait for a connection and `timeout` the wait for the reply; with
        `await_start` a missing ipc socket file is waited for too (a daemon that is starting), instead of
        failing at once."""
        with self._lock:
            path = ipc_path(self.endpoint)
            if not await_start and path is not None and not os.path.exists(path):
                self._discard()
                raise DaemonUnavailable(f"nb-serve is not running: there is no socket file {path} for the control "
                                        f"endpoint {self.endpoint}; {how_to_start(self.endpoint)}")
            socket, watch = self._connect()
            connect_s = self.connect_timeout if connect_timeout is None else connect_timeout
            if not socket.poll(max(1, int(connect_s * 1000)), zmq.POLLOUT):
                self._discard()
                raise DaemonUnavailable(f"nb-serve is not running: nothing answers at {self.endpoint} (no connection "
                                        f"within {connect_s:g} s); {how_to_start(self.endpoint)}."
                                        f"{_curve_hint(self.endpoint, self.curve)}")
            watch.disconnected()  # a connection that closed before this request does not concern it
            socket.send_json(body)
            poller = zmq.Poller()
            poller.register(socket, zmq.POLLIN)
            poller.register(watch.monitor, zmq.POLLIN)
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while True:
                remaining = deadline - time.monotonic()
                ready = dict(poller.poll(max(1, int(remaining * 1000)))) if remaining > 0 else {}
                if socket in ready:
                    reply = socket.recv_json()
                    break
                if watch.monitor in ready and watch.disconnected():
                    self._discard()
                    raise DaemonLost(f"nb-serve at {self.endpoint} went away before it answered {body.get('cmd')!r}")
                if remaining <= 0 or not ready:
                    self._discard()
                    raise TimeoutError(
                        f"nb-serve did not answer {body.get('cmd')!r} on {self.endpoint} within {self.timeout:g} s "
                        f"(it is connected but busy or stopped: `nb-serve ctl --control {self.endpoint} status`)."
                        f"{_curve_hint(self.endpoint, self.curve)}")
        if not isinstance(reply, dict):
            raise ProtocolError(f"control reply is not a JSON object: {reply!r}")
        if check and not reply.get("ok"):
            raise DaemonError(f"nb-serve refused {body.get('cmd')!r}: {reply.get('error', reply)}")
        return reply

    def _discard(self) -> None:
        if self._socket is not None and self._pid == os.getpid():
            if self._watch is not None:
                self._watch.close(self._socket)
            self._socket.close(linger=0)
        self._socket = self._watch = None

    def close(self) -> None:
        with self._lock:
            self._discard()


def data_endpoint(endpoint: str, control: str) -> str:
    """A rank endpoint as the daemon reports it, made connectable: a wildcard host (`*`, 0.0.0.0, ::) is
    replaced by the control endpoint's host when that is tcp, else by the loopback address."""
    match = re.fullmatch(r"tcp://(\*|0\.0\.0\.0|\[::\]|::):(\d+)", endpoint)
    if not match:
        return endpoint
    host = "127.0.0.1"
    control_match = re.fullmatch(r"tcp://(.+):(\d+)", control)
    if control_match and control_match.group(1) not in ("*", "0.0.0.0", "[::]", "::"):
        host = control_match.group(1)
    return f"tcp://{host}:{match.group(2)}"




class Copied(dict[str, Any]):
    """The tensors of a `lease` message copied out of shared memory (its lease already given back)."""


@dataclass(eq=False)
class Stream:
    """One stream the trainer asked for (docs/protocol.md section 6): a stage's epoch from a position, named
    by the id of the daemon's `epoch` reply."""
    stage: str
    epoch: int
    id: int
    batches: int                 # batches the daemon planned from the stream's start
    reply: dict[str, Any] = field(default_factory=dict)
    next_batch: int = 0          # the index of the next batch/error message expected


class Channel:
    """The PULL socket of one rank endpoint in this process, shared by every loader of that rank.

    ZeroMQ's PUSH deals messages round-robin among connected PULL sockets, so a second socket on the same
    endpoint (say a train and a val loader) would silently take every other batch: loaders share this one.
    The daemon keeps one stream per stage for the rank and puts one stage at a time on the wire (the one most
    recently asked for, until its `end`). The channel keeps, per stage, the stream last asked for: a message
    of it is delivered, or kept aside in order while the other stage is being read; a message of any other
    stream id (an abandoned stream, a daemon since restarted) is dropped.
    """

    _registry: dict[tuple[int, str], Channel] = {}
    _registry_lock = threading.Lock()

    def __init__(self, endpoint: str, receive_queue: int, curve: CurveKeys | None = None) -> None:
        self.endpoint = endpoint
        check_access(endpoint)
        self.socket = context().socket(zmq.PULL)
        _configure(self.socket, endpoint, curve)
        self.socket.setsockopt(zmq.RCVHWM, receive_queue)
        self._watch = _Watch(self.socket)
        self.socket.connect(endpoint)
        self.lock = threading.RLock()
        self.current: dict[str, Stream | None] = {"train": None, "val": None}
        self.kept: dict[str, deque[tuple[dict[str, Any], list[zmq.Frame] | Copied]]] = {"train": deque(),
                                                                                   "val": deque()}
        self.users = 0
        self.session: Session | None = None  # the rank's shared-memory session in this process, once asked for

    @classmethod
    def acquire(cls, endpoint: str, receive_queue: int = 4, curve: CurveKeys | None = None) -> Channel:
        """The process's channel for `endpoint`."""
        key = (os.getpid(), endpoint)
        with cls._registry_lock:
            channel = cls._registry.get(key)
            if channel is None:
                channel = cls._registry[key] = Channel(endpoint, receive_queue, curve)
            channel.users += 1
            return channel

    def release(self) -> None:
        key = (os.getpid(), self.endpoint)
        with self._registry_lock:
            if self._registry.get(key) is not self:
                return
            self.users -= 1
            if self.users <= 0:
                del self._registry[key]
                self._watch.close(self.socket)
                self.socket.close(linger=0)
                if self.session is not None:
                    self.session.close()
                    self.session = None

    # -- the shared-memory session

    def open_session(self, path: str, rank: int, timeout: float) -> Session:
        """The rank's shared-memory session (docs/protocol.md section 7), opened once per process and again
        after the daemon that served the last one went away."""
        from ._shm import Session

        with self.lock:
            if self.session is not None and self.session.gone():
                self.session.close()
                self.session = None
            if self.session is None:
                self.session = Session(path, rank, timeout)
            return self.session

    def _discard(self, header: dict[str, Any]) -> None:
        """Gives back the lease of a message that is dropped, not handed out."""
        if self.session is not None and header.get("type") == "lease":
            self.session.discard(header)

    # -- streams

    def begin(self, control: ControlClient, request: dict[str, Any]) -> Stream:
        """Asks the daemon for an epoch of a stage (replacing this stage's stream) and returns the new stream."""
        with self.lock:
            reply = control.request(request)
            identifier = reply.get("stream")
            if not isinstance(identifier, int) or isinstance(identifier, bool) or identifier < 1:
                raise ProtocolError(f"the daemon's epoch reply has no stream id: {reply!r} (nb-serve is older than "
                                    f"this client; upgrade it)")
            stage = request["stage"]
            stream = Stream(stage, request["epoch"], identifier, int(reply.get("batches", 0)), reply)
            if request.get("transport") == "shm":
                if self.session is None:
                    raise ProtocolError("a shared-memory stream was asked for without a session")
                self.session.streams.add(identifier)
            self.current[stage] = stream
            for header, _ in self.kept[stage]:  # kept for the stream this one replaces
                self._discard(header)
            self.kept[stage].clear()
            return stream

    def is_current(self, stream: Stream) -> bool:
        return self.current[stream.stage] is stream

    def check_daemon(self) -> None:
        """Raises DaemonLost (after forgetting every stream) when the daemon's end of the data connection has
        closed since the last look: the daemon stopped or crashed, and its streams are gone with it."""
        with self.lock:
            if self._watch.disconnected():
                self.forget()
                raise DaemonLost(f"nb-serve's data connection {self.endpoint} closed: the daemon stopped or crashed")
            if self.session is not None and self.session.gone():
                self.forget()
                raise DaemonLost(f"nb-serve closed the shared-memory session of {self.endpoint}: the daemon stopped "
                                 f"or crashed")

    def forget(self) -> None:
        """Forgets every stream (the daemon that served them is gone; what it left queued is stale)."""
        with self.lock:
            self._watch.disconnected()
            for stage in self.current:
                self.current[stage] = None
                self.kept[stage].clear()
            if self.session is not None:
                # Its leases went with the daemon; the memory stays mapped while arrays of it are used.
                self.session.close()
                self.session = None

    def receive(self, stream: Stream, timeout: float) -> tuple[dict[str, Any], list[zmq.Frame] | Copied]:
        """The next message (header, frames) of `stream`. Raises StreamLost when the stream was replaced,
        DaemonLost when the daemon went away, TimeoutError when nothing of it comes within `timeout`."""
        with self.lock:
            deadline = time.monotonic() + timeout
            kept = self.kept[stream.stage]
            while True:
                self.check_daemon()
                if not self.is_current(stream):
                    raise StreamLost(f"the {stream.stage} epoch {stream.epoch} stream {stream.id} on {self.endpoint} "
                                     f"was replaced: this stage was asked for again")
                if kept:
                    header, frames = kept.popleft()
                    return self._checked(stream, header), frames
                session = self.session
                if session is not None:
                    session.flush()
                    if stream.id in session.streams and len(session.held) >= session.limit \
                            and not self.socket.poll(0):
                        self._check_leases(session)
                received, frames = self._receive(deadline, timeout)
                if received is None:
                    continue  # the daemon's end closed: check_daemon says so
                header = received
                if header["type"] == "lease" and session is not None and header["stream"] in session.streams \
                        and isinstance(header.get("lease"), int):
                    session.held.add(header["lease"])  # the daemon counts it from now on, handed out or not
                owner = self.current.get(str(header.get("stage")))
                if owner is None or header["stream"] != owner.id:
                    self._discard(header)
                    continue  # stale: an abandoned stream's, or a daemon's since restarted
                if owner is stream:
                    return self._checked(stream, header), frames
                self.kept[owner.stage].append((header, frames))

    def _check_leases(self, session: Session) -> None:
        """Raises LeaseLimit when this process holds every lease the rank may hold (none can come): after
        collecting garbage, in case unreachable batches in reference cycles are what holds them."""
        from ._shm import LeaseLimit

        gc.collect()
        self._spill(session)
        session.flush()
        if len(session.held) >= session.limit and not self.socket.poll(0):
            kept = sum(1 for queue in self.kept.values() for header, _ in queue if header["type"] == "lease")
            raise LeaseLimit(
                f"this trainer holds {len(session.held)} batches of rank {session.rank}'s shared memory ({kept} of "
                f"them received for the other stage's iterator and kept for it), all that "
                f"nb-serve lets a rank hold (serve.leases: {session.limit}), and waits for another, which cannot "
                f"come: let go of kept batches (drop their arrays and tensors, or batch.release()), copy what must "
                f"be kept (numpy's .copy()), raise serve.leases, or use transport='zmq'")

    def _spill(self, session: Session) -> None:
        """Copies the batches kept aside for the other stage out of shared memory and gives their leases back.

        The daemon may have sent a stage many batches ahead before the other stage was asked for (up to the
        rank's lease limit); kept aside and not yet handed out, they would starve the stage being read. Their
        copies are handed out later as ordinary batches (the message loses its `lease` key)."""
        for queue in self.kept.values():
            for position, (header, payload) in enumerate(queue):
                if header["type"] != "lease" or "lease" not in header or header["stream"] not in session.streams:
                    continue
                lease, arrays = session.views(header)
                copied = Copied({name: array.copy() for name, array in arrays.items()})
                del arrays
                lease.release()
                queue[position] = ({key: value for key, value in header.items() if key != "lease"}, copied)

    @staticmethod
    def _checked(stream: Stream, header: dict[str, Any]) -> dict[str, Any]:
        """`header`, after checking that a batch or error message is the stream's next index (no gap)."""
        if header["type"] != "end":
            if header.get("batch") != stream.next_batch:
                raise ProtocolError(f"{stream.stage} epoch {stream.epoch} stream {stream.id}: expected batch "
                                    f"{stream.next_batch}, received batch {header.get('batch')}")
            stream.next_batch += 1
        return header

    def _receive(self, deadline: float, timeout: float) -> tuple[dict[str, Any] | None, list[zmq.Frame]]:
        """A message, or (None, []) when the monitor has news; TimeoutError at the deadline."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._watch.monitor, zmq.POLLIN)
        session = self.session
        if session is not None:
            poller.register(session.fileno(), zmq.POLLIN)  # readable only when the daemon closed it
        remaining = deadline - time.monotonic()
        wait_ms = max(1, int(remaining * 1000))
        if session is not None and session.held:
            # Releases queued by finalizers in other threads while this one waits are sent at the next slice.
            wait_ms = min(wait_ms, 50)
        ready = dict(poller.poll(wait_ms)) if remaining > 0 else {}
        if session is not None and session.fileno() in ready:
            return None, []
        if session is not None and not ready and time.monotonic() < deadline:
            return None, []
        if self.socket in ready:
            frames = self.socket.recv_multipart(copy=False)
            header = decode_header(frames[0])
            if not isinstance(header.get("stream"), int) or isinstance(header.get("stream"), bool):
                raise ProtocolError(f"a {header['type']} message without a stream id (nb-serve is older than this "
                                    f"client; upgrade it)")
            return header, frames
        if self._watch.monitor in ready:
            return None, []
        raise TimeoutError(
            f"no message from nb-serve on {self.endpoint} within {timeout:g} s (the daemon is connected but sends "
            f"nothing: `nb-serve ctl status`)")
