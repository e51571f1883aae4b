"""The daemon's two sockets as a trainer sees them: the control socket (REQ, JSON request/reply, every wait
bounded) and the rank's data socket (one PULL per rank endpoint and process, shared by every loader of that
rank, kept across epochs)."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field

import zmq

from ._curve import CurveKeys, check_access, secure
from ._protocol import ProtocolError, decode_header


class DaemonError(RuntimeError):
    """The daemon refused a control request (its reply had "ok": false)."""


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
    """Request/reply with the daemon's control socket; a reply that does not come within `timeout` seconds
    raises TimeoutError (and the socket is replaced, so the next request starts clean)."""

    def __init__(self, endpoint: str, timeout: float, curve: CurveKeys | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> zmq.Socket:
        if self._socket is None or self._pid != os.getpid():
            check_access(self.endpoint)
            socket = context().socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            secure(socket, self.endpoint, self.curve)
            socket.connect(self.endpoint)
            self._socket, self._pid = socket, os.getpid()
        return self._socket

    def request(self, body: dict, *, check: bool = True) -> dict:
        with self._lock:
            socket = self._connect()
            deadline_ms = max(1, int(self.timeout * 1000))
            try:
                if not socket.poll(deadline_ms, zmq.POLLOUT):
                    raise TimeoutError
                socket.send_json(body, zmq.NOBLOCK)
                if not socket.poll(deadline_ms, zmq.POLLIN):
                    raise TimeoutError
                reply = socket.recv_json()
            except (TimeoutError, zmq.Again):
                self._discard()
                hint = (" If the daemon's tcp endpoints use CURVE, pass server_key= and client_key="
                        if self.endpoint.startswith("tcp://") and self.curve is None else "")
                raise TimeoutError(
                    f"nb-serve did not answer {body.get('cmd')!r} on {self.endpoint} within {self.timeout:g} s "
                    f"(is `nb-serve run` running? `nb-serve ctl status --control {self.endpoint}`).{hint}") from None
        if not isinstance(reply, dict):
            raise ProtocolError(f"control reply is not a JSON object: {reply!r}")
        if check and not reply.get("ok"):
            raise DaemonError(f"nb-serve refused {body.get('cmd')!r}: {reply.get('error', reply)}")
        return reply

    def _discard(self):
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self):
        with self._lock:
            if self._pid == os.getpid():
                self._discard()
            self._socket = None


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

    def __init__(self, endpoint: str, receive_queue: int, curve: CurveKeys | None = None):
        self.endpoint = endpoint
        check_access(endpoint)
        self.socket = context().socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, receive_queue)
        self.socket.setsockopt(zmq.LINGER, 0)
        secure(self.socket, endpoint, curve)
        self.socket.connect(endpoint)
        self.lock = threading.RLock()
        self.current: Stream | None = None
        self.stale: set[tuple] = set()   # (stage, epoch) of abandoned streams whose messages may still come
        self.users = 0

    @classmethod
    def acquire(cls, endpoint: str, active: tuple | None = None, receive_queue: int = 4,
                curve: CurveKeys | None = None) -> "Channel":
        """The process's channel for `endpoint`. `active` is the (stage, epoch) the daemon reported streaming
        on this rank before the socket connected: a new connection may still get the rest of that stream
        (say, after a trainer process died mid-epoch)."""
        key = (os.getpid(), endpoint)
        with cls._registry_lock:
            channel = cls._registry.get(key)
            if channel is None:
                channel = cls._registry[key] = Channel(endpoint, receive_queue, curve)
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
