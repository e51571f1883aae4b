"""The daemon's two sockets as a trainer sees them: the control socket (REQ, JSON request/reply, every wait
bounded) and the rank's data socket (one PULL per rank endpoint and process, shared by every loader of that
rank, kept across epochs)."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from ._protocol import ProtocolError, decode_header


class DaemonError(RuntimeError):
    """The daemon refused a control request (its reply had "ok": false), or it cannot serve this trainer."""


class DaemonUnavailable(ConnectionError):
    """Nothing answers at the control endpoint: no daemon is running there (the message says how to start one)."""


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


_contexts: dict[int, zmq.Context] = {}
_contexts_lock = threading.Lock()


def context() -> zmq.Context:
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
    endpoint (for ipc, at once when the socket file does not exist); a reply that does not come within
    ``timeout`` seconds raises TimeoutError. Either way the socket is replaced, so the next request starts
    clean."""

    def __init__(self, endpoint: str, timeout: float, connect_timeout: float = CONNECT_S) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> zmq.Socket:
        if self._socket is None or self._pid != os.getpid():
            socket = context().socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            # Queue requests only to completed connections: POLLOUT then says that a daemon is there.
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.connect(self.endpoint)
            self._socket, self._pid = socket, os.getpid()
        return self._socket

    def request(self, body: dict[str, Any], *, check: bool = True, connect_timeout: float | None = None,
                await_start: bool = False) -> dict[str, Any]:
        """Sends one request and returns the daemon's reply (raising DaemonError for "ok": false when `check`).

        `connect_timeout` replaces the wait for a connection; with `await_start` a missing ipc socket file
        is waited for too (a daemon that is starting), instead of failing at once."""
        with self._lock:
            path = ipc_path(self.endpoint)
            if not await_start and path is not None and not os.path.exists(path):
                self._discard()
                raise DaemonUnavailable(f"nb-serve is not running: there is no socket file {path} for the control "
                                        f"endpoint {self.endpoint}; {how_to_start(self.endpoint)}")
            socket = self._connect()
            connect_s = self.connect_timeout if connect_timeout is None else connect_timeout
            if not socket.poll(max(1, int(connect_s * 1000)), zmq.POLLOUT):
                self._discard()
                raise DaemonUnavailable(f"nb-serve is not running: nothing answers at {self.endpoint} (no connection "
                                        f"within {connect_s:g} s); {how_to_start(self.endpoint)}")
            try:
                socket.send_json(body, zmq.NOBLOCK)
                if not socket.poll(max(1, int(self.timeout * 1000)), zmq.POLLIN):
                    raise TimeoutError
                reply = socket.recv_json()
            except (TimeoutError, zmq.Again):
                self._discard()
                raise TimeoutError(
                    f"nb-serve did not answer {body.get('cmd')!r} on {self.endpoint} within {self.timeout:g} s "
                    f"(it is connected but busy or stopped: `nb-serve ctl --control {self.endpoint} status`)") from None
        if not isinstance(reply, dict):
            raise ProtocolError(f"control reply is not a JSON object: {reply!r}")
        if check and not reply.get("ok"):
            raise DaemonError(f"nb-serve refused {body.get('cmd')!r}: {reply.get('error', reply)}")
        return reply

    def _discard(self) -> None:
        if self._socket is not None:
            if self._pid == os.getpid():
                self._socket.close(linger=0)
            self._socket = None

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


@dataclass(eq=False)
class Stream:
    """One epoch stream the trainer asked for: (stage, epoch) and how far it has been read."""
    stage: str
    epoch: int
    batches: int                 # batches the daemon planned (the `epoch` reply's count)
    reply: dict = field(default_factory=dict)
    started: bool = False        # its first message has arrived
    finished: bool = False       # its `end` has arrived
    next_batch: int = 0          # the index of the next batch/error message expected

    @property
    def key(self) -> tuple:
        return (self.stage, self.epoch)


class Superseded(RuntimeError):
    """An epoch iterator was resumed after another epoch of the same rank had been requested."""


class Channel:
    """The PULL socket of one rank endpoint in this process, shared by every loader of that rank.

    ZeroMQ's PUSH deals messages round-robin among connected PULL sockets, so a second socket on the same
    endpoint (say a train and a val loader) would silently take every other batch: loaders share this
    one. The daemon streams one epoch per rank at a time; asking for a new epoch abandons the old stream,
    whose already-queued messages still arrive first (one connection keeps order). Those are told apart by
    (stage, epoch); when the abandoned stream had the same (stage, epoch) as the new one, a fence is put
    between them first: a validation epoch of another number is requested and its first message awaited,
    after which nothing of the old stream can come.
    """

    _registry: dict[tuple, "Channel"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, endpoint: str, receive_queue: int):
        self.endpoint = endpoint
        self.socket = context().socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, receive_queue)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.lock = threading.RLock()
        self.current: Stream | None = None
        self.stale: set[tuple] = set()   # (stage, epoch) of abandoned streams whose messages may still come
        self.users = 0

    @classmethod
    def acquire(cls, endpoint: str, active: tuple | None = None, receive_queue: int = 4) -> "Channel":
        """The process's channel for `endpoint`. `active` is the (stage, epoch) the daemon reported streaming
        on this rank before the socket connected: a new connection may still get the rest of that stream
        (say, after a trainer process died mid-epoch)."""
        key = (os.getpid(), endpoint)
        with cls._registry_lock:
            channel = cls._registry.get(key)
            if channel is None:
                channel = cls._registry[key] = Channel(endpoint, receive_queue)
                if active is not None:
                    channel.stale.add(tuple(active))
            channel.users += 1
            return channel

    def release(self):
        key = (os.getpid(), self.endpoint)
        with self._registry_lock:
            if self._registry.get(key) is not self:
                return
            self.users -= 1
            if self.users <= 0:
                del self._registry[key]
                self.socket.close(linger=0)

    # -- streams

    def begin(self, control: ControlClient, request: dict, timeout: float) -> Stream:
        """Asks the daemon for an epoch (abandoning this rank's current stream) and returns its stream."""
        with self.lock:
            if self.current is not None and not self.current.finished:
                self.stale.add(self.current.key)
            self.current = None
            key = (request["stage"], request["epoch"])
            if key in self.stale:
                self._fence(control, request, timeout)
            reply = control.request(request)
            self.current = Stream(request["stage"], request["epoch"], int(reply.get("batches", 0)), reply)
            return self.current

    def _fence(self, control: ControlClient, request: dict, timeout: float):
        epoch = request["epoch"]
        while ("val", epoch) in self.stale or ("val", epoch) == (request["stage"], request["epoch"]):
            epoch += 1
        fence = {"cmd": "epoch", "rank": request["rank"], "stage": "val", "epoch": epoch}
        control.request(fence)
        deadline = time.monotonic() + timeout
        while True:
            header, _ = self._receive(deadline, timeout)
            if (header.get("stage"), header.get("epoch")) == ("val", epoch):
                break
        # Everything of the older streams came before the fence's first message.
        self.stale = {("val", epoch)} if header["type"] != "end" else set()

    def receive(self, stream: Stream, timeout: float):
        """The next message (header, frames) of `stream`, skipping what is left of abandoned streams."""
        with self.lock:
            deadline = time.monotonic() + timeout
            while True:
                if self.current is not stream:
                    raise Superseded(
                        f"the {stream.stage} epoch {stream.epoch} stream on {self.endpoint} was abandoned: another "
                        f"epoch was requested for this rank since (the daemon streams one epoch per rank at a time)")
                header, frames = self._receive(deadline, timeout)
                if (header.get("stage"), header.get("epoch")) != stream.key:
                    continue  # left over from an abandoned stream
                if not stream.started:
                    stream.started = True
                    self.stale.clear()  # one connection keeps order: nothing older can follow
                if header["type"] == "end":
                    stream.finished = True
                elif header.get("batch") != stream.next_batch:
                    raise ProtocolError(f"{stream.stage} epoch {stream.epoch}: expected batch {stream.next_batch}, "
                                        f"received batch {header.get('batch')}")
                else:
                    stream.next_batch += 1
                return header, frames

    def _receive(self, deadline: float, timeout: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
            raise TimeoutError(
                f"no message from nb-serve on {self.endpoint} within {timeout:g} s (is the daemon alive? "
                f"`nb-serve ctl status`)")
        frames = self.socket.recv_multipart(copy=False)
        return decode_header(frames[0]), frames
