"""`nbserve.Loader`: one rank's epochs from nb-serve as dicts of numpy arrays, as noisebase yields them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable

from . import _config
from ._config import ConfigMismatch
from ._curve import load_curve
from ._protocol import Batch, BatchError, ProtocolError, decode_tensors, nest, with_file
from ._shm import Session, ShmUnavailable, unusable
from ._stats import Timing
from ._transport import (Channel, ControlClient, Copied, DaemonError, DaemonLost, DaemonUnavailable, Stream, StreamLost,
                         data_endpoint, default_control, how_to_start)
from .sampler import SamplerState


def _distributed() -> tuple[int, int] | None:
    """(rank, world size) from torch.distributed when it is initialised. torch is never imported here: a
    process group can only have been initialised by a process that imported it already."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # a half-imported or stubbed torch
        return None
    return None


def _changes(before: dict[str, Any], after: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> list[str]:
    """`key: old -> new` for each of `keys` that differs (inside mappings, key by key)."""
    changes = []
    for key in keys:
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _changes(old, new, tuple(sorted(set(old) | set(new))), f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


TRANSPORTS = ("auto", "shm", "zmq")


def _stage(stage: str) -> str:
    if stage in ("train", "val"):
        return stage
    if stage == "validation":
        return "val"
    raise ValueError(f"stage {stage!r} is not 'train' or 'val'")


class Loader:
    """One rank's batches from an nb-serve daemon.

    ``iter(loader)`` asks the daemon for the next epoch (each new iteration is the next epoch, as with
    noisebase's loader, unless ``get_epoch`` is given) and yields its batches as ``nbserve.Batch`` dicts of
    numpy arrays with noisebase's keys, shapes and dtypes (``prev_camera`` nested, ``frame_index`` a 0-d int64
    array), each array a view (no copy): of the daemon's shared memory (read-only) or of the received ZeroMQ
    frame, as ``transport`` decides. A batch in shared memory is the trainer's until it is released: once
    none of its arrays is referenced any more, or by ``batch.release()`` / ``with batch:``; the daemon lets
    a rank hold ``serve.leases`` batches at once (``LeaseLimit`` when the trainer holds them all and waits). Iteration stops at the daemon's end-of-epoch
    message. A batch counts as consumed once the next one is asked for; consumption is acknowledged to the
    daemon whenever it completes a sequence group and at the end of the epoch (the granularity of the
    daemon's resume state), so ``nb-serve ctl checkpoint`` covers what was trained on.

    Every loader of a rank in a process shares one data socket; the daemon keeps one stream per stage for the
    rank and sends one stage at a time, so validation in the middle of a training epoch leaves the training
    stream where it is (its batches already on their way are kept aside until training goes on). When the
    daemon goes away mid-epoch (a restart), the iterator waits up to ``timeout`` seconds for it to answer
    again, asks for its epoch from the start of the current sequence group and passes over what it already
    yielded: it yields the uninterrupted epoch. An iterator whose stream was replaced by a newer iteration
    of the same stage does the same when it is resumed.

    A batch the daemon could not produce raises ``BatchError``; no daemon at the control endpoint raises
    ``DaemonUnavailable`` at once or within 1.5 s; a daemon that went away and does not come back within
    ``timeout`` seconds raises ``DaemonUnavailable``; one that is connected but does not answer or send within
    ``timeout`` seconds raises ``TimeoutError``.

    control     the daemon's control endpoint (default: the daemon's default, as `nb-serve run` uses)
    stage       "train" or "val"
    rank, world_size
                default: torch.distributed's when initialised, else 0 and 1; the daemon must serve this rank of
                this world size
    get_epoch   callable giving the epoch to ask for at each iteration (noisebase's argument)
    timeout     seconds to wait for any reply or batch, or for a daemon that went away to come back
    transport   "auto" (default): the daemon's shared memory when it offers it and its session socket is on
                this host and accessible, else ZeroMQ frames; "shm": shared memory or ShmUnavailable saying
                why not; "zmq": frames, always. ``loader.transport`` says which is used
    server_key, client_key
                CURVE keys for a daemon whose tcp endpoints are secured (README "Trust model"): the daemon's
                public certificate (its NAME.key from `nb-serve keygen`) and this trainer's secret certificate
                (NAME.key_secret, whose NAME.key is in the daemon's serve.authorized_keys); a path each, or
                Z85 bytes (server_key) and a (public, secret) pair of Z85 bytes (client_key)
    **config    noisebase's loader config, as it is (optional). Every key of it that decides the batches
                (batch_size, seed, buffers, samples, val_split, shuffle, drop_last, flip_rotate, src.*) must say
                what the daemon serves, else ConfigMismatch names the key and both values; ``data_path`` and
                ``src.files`` give batches noisebase's ``file`` key; keys neither noisebase nor nb-serve reads
                are ignored with a warning
    """

    def __init__(self, control: str | None = None, stage: str = "train", rank: int | None = None,
                 world_size: int | None = None, get_epoch: Callable[[], int] | None = None, timeout: float = 60.0,
                 server_key: str | os.PathLike[str] | bytes | None = None,
                 client_key: str | os.PathLike[str] | tuple[bytes, bytes] | None = None, transport: str = "auto",
                 **config: Any) -> None:
        self._closed = False
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {', '.join(map(repr, TRANSPORTS))}")
        self.control = control or default_control()
        self.stage = _stage(stage)
        self.timeout = float(timeout)
        self._curve = load_curve(server_key, client_key)
        self._control = ControlClient(self.control, self.timeout, self._curve)
        distributed = _distributed()
        if rank is None:
            rank = distributed[0] if distributed else 0
        if world_size is None:
            world_size = distributed[1] if distributed else 1
        self.rank, self.world_size = int(rank), int(world_size)

        status = self._control.request({"cmd": "status"})
        self.status = status
        served = {int(entry["rank"]): entry for entry in status.get("ranks", [])}
        if status.get("world_size") != self.world_size:
            raise DaemonError(
                f"nb-serve at {self.control} serves a world size of {status.get('world_size')}, but this trainer "
                f"has world size {self.world_size} (rank {self.rank}); start the daemon with serve.world_size: "
                f"{self.world_size}, or pass world_size=")
        if self.rank not in served:
            raise DaemonError(
                f"nb-serve at {self.control} does not serve rank {self.rank} (it serves ranks {sorted(served)} "
                f"of {self.world_size}); connect this rank to the daemon that serves it")
        _config.check(config, status.get("config"), self.control)
        self.endpoint = data_endpoint(served[self.rank]["endpoint"], self.control)

        # The daemon's geometry: the positions checkpoint() saves are positions in the stream it serves.
        self.batch_sampler = SamplerState(
            frames_per_sequence=int(status["frames_per_sequence"]), batch_size=int(status["batch_size"]),
            rank=self.rank, num_replicas=self.world_size, get_epoch=get_epoch)
        self._files: Callable[[int], str] | None = None
        src = config.get("src") or {}
        if "files" in src:
            # noisebase: os.path.join(resolve_data_path(data_path), src['files'].format(index=i)); its default
            # data path (data_path None) is the working directory's data/.
            data_path = config.get("data_path")
            root = data_path if data_path is not None else os.path.join(os.getcwd(), "data")
            template = src["files"]
            self._files = lambda index: os.path.join(root, template.format(index=index))
        self._lengths: dict[tuple[str, int], int] = {}
        self._timing = Timing()
        # The stream being yielded from and what it acknowledged, for a report when iteration stops early.
        self._reporting: tuple[Stream | None, int] = (None, 0)
        self.last_header: dict[str, Any] | None = None
        self._channel = Channel.acquire(self.endpoint, curve=self._curve)
        self.transport = "zmq"
        self.transport_reason: str | None = None  # why "auto" did not pick shared memory
        if transport != "zmq":
            reason = unusable(status)
            if reason is None:
                try:
                    self._channel.open_session(status["shm_socket"], self.rank, self.timeout)
                    self.transport = "shm"
                except (ShmUnavailable, DaemonUnavailable, DaemonLost, OSError) as error:
                    reason = str(error)
            if reason is not None and transport == "shm":
                self.close()
                raise ShmUnavailable(f"transport='shm' cannot be used with nb-serve at {self.control}: {reason}")
            self.transport_reason = reason

    # -- noisebase's loader API

    def __iter__(self) -> Iterator[Batch]:
        return self._epoch()

    def __len__(self) -> int:
        """Batches this rank gets in the next epoch (the daemon's `length`)."""
        epoch = int(self.batch_sampler.get_epoch())
        key = (self.stage, epoch)
        if key not in self._lengths:
            reply = self._control.request({"cmd": "length", "stage": self.stage, "rank": self.rank, "epoch": epoch})
            self._lengths[key] = int(reply["batches"])
        return self._lengths[key]

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.cached_state

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Where this trainer's time went since the loader was made (or last reset): ``batches``,
        ``frames`` and ``bytes`` received; ``wait_s``, the seconds it was blocked waiting for batches;
        ``busy_s``, the seconds it spent between them; ``stall``, the share of the two it waited (None
        before a batch); the wait per batch at the 50th, 90th and 99th percentile and its maximum
        (``wait_p50_s`` …, ``wait_max_s``); ``interval_s``, the wall time covered; and the ``rank``,
        ``stage`` and ``transport``. The daemon receives the same waits with the acknowledgements and
        exports them (``nbserve_trainer_wait_seconds``, ``nbserve_data_stall_ratio``). With ``reset``, a
        new window starts after this one is returned."""
        figures = self._timing.stats()
        figures.update(rank=self.rank, stage=self.stage, transport=self.transport)
        if reset:
            self._timing.reset()
        return figures

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state_dict)

    # -- the stream

    def _epoch(self) -> Iterator[Batch]:
        if self._closed:
            raise RuntimeError("this nbserve.Loader is closed")
        try:
            yield from self._stream_epoch()
        except GeneratorExit:
            # The trainer stopped iterating before the end message (Lightning stops at len(loader)): the time
            # since the last hand-over was its own, and the waits not yet reported still are reported.
            self._timing.asked()
            self._timing.idle()
            self._report_on_close()
            raise

    def _report_on_close(self) -> None:
        """Best effort and brief (the trainer is moving on, or the interpreter ending): the timing not yet
        reported goes with an ack of what the stream already acknowledged (no new consumption)."""
        stream, acknowledged = self._reporting
        if self._closed or stream is None or not self._timing.has_pending():
            return
        try:
            if self._channel.is_current(stream):
                self._ack(stream, acknowledged, connect_timeout=0.5, timeout=1.0)
        except Exception:  # the daemon is gone or busy: the figures are lost, nothing else
            pass

    def _stream_epoch(self) -> Iterator[Batch]:
        sampler = self.batch_sampler
        frames = sampler.frames_per_sequence
        timing = self._timing
        timing.asked()
        epoch = int(sampler.get_epoch())
        request: dict[str, Any] = {"cmd": "epoch", "rank": self.rank, "stage": self.stage, "epoch": epoch}
        state = sampler.resume_request()
        if state is not None:
            request["state"] = state
        stream = self._open(request)
        base = self._resumed_from(stream, epoch)  # the epoch's sequence position the stream starts at
        delivered = 0     # batch positions of `stream` handed out (batches and errors); once the next one is
        acknowledged = 0  # asked for, all are consumed; those up to a group boundary are acknowledged
        skip = 0          # positions to pass over after a reopen (handed out before it)
        group: list[int] | None = None  # the sequences of the last batch handed out
        while True:
            if self._closed:
                raise RuntimeError("this nbserve.Loader was closed during the epoch")
            try:
                self._channel.check_daemon()
                boundary = delivered - delivered % frames
                # Acknowledged at each sequence group; the trainer's timing goes with it, and on its own (an
                # ack of what was acknowledged already) at least once a second.
                if (boundary > acknowledged or timing.report_due()) and self._channel.is_current(stream):
                    acknowledged = max(boundary, acknowledged)
                    self._ack(stream, acknowledged)
                header, payload = self._channel.receive(stream, self.timeout)
            except (StreamLost, DaemonLost, DaemonUnavailable) as lost:
                # The daemon restarted (or this stage was asked for again): the same epoch again from the start
                # of the current sequence group, passing over what was handed out already (also when a reopen
                # is interrupted before it passed over all of it).
                handed = delivered + skip
                start = base + sampler.sequence_index(handed)
                request = {"cmd": "epoch", "rank": self.rank, "stage": self.stage, "epoch": epoch,
                           "state": {"start_epoch_idx": epoch, "start_sequence_idx": start}}
                stream, skip = self._open(request, lost), handed % frames
                base = self._resumed_from(stream, epoch)
                delivered = acknowledged = 0
                continue
            kind = header["type"]
            if kind == "end":
                if skip:
                    raise ProtocolError(f"the reopened {self.stage} epoch {epoch} ended {skip} batches early")
                if delivered > acknowledged:
                    try:
                        self._ack(stream, delivered)
                    except (DaemonLost, DaemonUnavailable, StreamLost):
                        pass  # every batch arrived; a restarted daemon does not know this stream anyway
                timing.idle()
                sampler.epoch_finished(epoch)
                return
            delivered = header["batch"] + 1
            if skip:
                # Already handed out before the reopen: the same group, frame by frame.
                if kind != "error" and (header["sequences"] != group or header["frame_index"] != header["batch"]):
                    raise ProtocolError(f"the reopened {self.stage} epoch {epoch} does not repeat its interrupted "
                                        f"sequence group {group} (batch {header.get('batch')}: "
                                        f"{header.get('sequences')}, frame {header.get('frame_index')})")
                self._channel._discard(header)
                skip -= 1
                continue
            if kind == "error":
                raise BatchError(header, self.rank)
            self._check_geometry(header)
            self.last_header = header
            group = header["sequences"]
            lease = None
            if isinstance(payload, Copied):
                arrays = dict(payload)  # kept aside, then copied out of shared memory to make room
            elif kind == "lease":
                session = self._channel.session
                if session is None or header["stream"] not in session.streams:
                    raise ProtocolError(f"a lease message of stream {header['stream']}, which was not asked for over "
                                        f"this process's shared-memory session")
                lease, arrays = session.views(header)
            else:
                arrays = decode_tensors(header, payload)
            handed_frames, handed_bytes = len(header["sequences"]), sum(array.nbytes for array in arrays.values())
            batch = nest(arrays)
            if self._files is not None:
                batch = with_file(batch, [self._files(index) for index in header["sequences"]])
            # Handed over without a reference left in this frame: dropping the batch releases it at once.
            out = [Batch(batch, lease)]
            del arrays, batch, lease
            self._reporting = (stream, acknowledged)
            timing.handed(handed_frames, handed_bytes)  # everything before this was the loader's time
            yield out.pop()
            timing.asked()

    def _check_geometry(self, header: dict[str, Any]) -> None:
        sampler = self.batch_sampler
        if header["frame_index"] != header["batch"] % sampler.frames_per_sequence \
                or len(header["sequences"]) > sampler.batch_size:
            raise ProtocolError(
                f"{self.stage} batch {header['batch']} holds frame {header['frame_index']} of "
                f"{len(header['sequences'])} sequences, which does not fit the daemon's reported "
                f"frames_per_sequence {sampler.frames_per_sequence} and batch size {sampler.batch_size} per rank")

    @staticmethod
    def _resumed_from(stream: Stream, epoch: int) -> int:
        resumed = stream.reply.get("resumed_from")
        if isinstance(resumed, dict) and resumed.get("start_epoch_idx") == epoch:
            return int(resumed.get("start_sequence_idx", 0))
        return 0

    def _open(self, request: dict[str, Any], lost: Exception | None = None) -> Stream:
        """Starts a stream. After `lost` (the daemon went away, or does not know a stream it served), and
        whenever the daemon is found gone, the daemon at the control endpoint is first waited for (up to
        `timeout` seconds) and checked to serve what the one before served."""
        deadline = time.monotonic() + self.timeout
        pending = lost
        while True:
            if pending is not None:
                # A stream the daemon does not know may mean a restart not yet seen on the data socket; the other
                # stage's stream is forgotten only when the daemon is known to be gone. DaemonUnavailable at the
                # deadline.
                self._await_daemon(deadline, pending, forget=not isinstance(pending, StreamLost))
            try:
                self._channel.check_daemon()
                if self.transport == "shm":
                    request["transport"] = "shm"
                    path = self.status.get("shm_socket")
                    if not isinstance(path, str):
                        raise ShmUnavailable(f"nb-serve at {self.control} restarted without its shared-memory "
                                             f"socket; this loader uses transport='shm'")
                    self._channel.open_session(path, self.rank, self.timeout)
                return self._channel.begin(self._control, request)
            except (DaemonLost, DaemonUnavailable) as error:
                pending = error

    def _await_daemon(self, deadline: float, why: Exception, forget: bool = True) -> None:
        """Waits until a daemon answers at the control endpoint again, and checks that it serves what the one
        before served (the same config, world size and rank): then its streams continue this trainer's. With
        `forget`, every stream of the data socket is forgotten (the daemon that served them is gone)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kind = "is not running" if isinstance(why, DaemonUnavailable) else f"went away ({why})"
                raise DaemonUnavailable(f"nb-serve at {self.control} {kind} and did not come back within "
                                        f"{self.timeout:g} s; {how_to_start(self.control)}") from None
            try:
                status = self._control.request({"cmd": "status"}, connect_timeout=remaining, await_start=True)
                break
            except (DaemonLost, DaemonUnavailable, TimeoutError) as error:
                why = error
        changes = _changes(self.status, status, ("config", "world_size", "frames_per_sequence", "batch_size"))
        if changes:
            raise ConfigMismatch(f"nb-serve at {self.control} restarted with another configuration "
                                 f"({'; '.join(changes)}): its stream cannot continue this trainer's")
        if self.rank not in {int(entry["rank"]) for entry in status.get("ranks", [])}:
            raise DaemonError(f"nb-serve at {self.control} restarted without rank {self.rank}")
        self.status = status
        if forget:
            self._channel.forget()

    def _ack(self, stream: Stream, consumed: int, connect_timeout: float | None = None,
             timeout: float | None = None) -> None:
        """Acknowledges `consumed` batches of `stream`, with the trainer's timing since the last ack; the
        timeouts replace the control client's waits."""
        try:
            self._control.request({"cmd": "ack", "rank": self.rank, "stage": stream.stage, "epoch": stream.epoch,
                                   "batches": consumed, "stream": stream.id, **self._timing.pending()},
                                  connect_timeout=connect_timeout, timeout=timeout)
            self._timing.reported()
        except DaemonError as refused:
            # The daemon does not know the stream: it is a new daemon (the control socket reconnected to it
            # before the data socket's disconnection was seen) or the stage was asked for again.
            raise StreamLost(f"the {stream.stage} epoch {stream.epoch} stream {stream.id} is gone: {refused}") from None

    @property
    def session(self) -> Session | None:
        """The rank's shared-memory session in this process (None over ZeroMQ frames)."""
        return self._channel.session if self.transport == "shm" else None

    # -- lifetime

    def close(self) -> None:
        """Releases the sockets (the rank's data socket closes when its last loader in the process does)."""
        if self._closed:
            return
        self._closed = True
        channel = self.__dict__.pop("_channel", None)  # absent when __init__ failed before acquiring it
        if channel is not None:
            channel.release()
        control = self.__dict__.get("_control")
        if control is not None:
            control.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"nbserve.Loader(control={self.control!r}, stage={self.stage!r}, rank={self.rank}, "
                f"world_size={self.world_size}, endpoint={self.endpoint!r})")
