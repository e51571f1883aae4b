"""`nbserve.Loader`: one rank's epochs from nb-serve as dicts of numpy arrays, as noisebase yields them."""

from __future__ import annotations

import os
import sys

from ._curve import load_curve
from ._protocol import BatchError, ProtocolError, decode_tensors, nest, with_file
from ._transport import Channel, ControlClient, DaemonError, Superseded, data_endpoint, default_control
from .sampler import SamplerState

# Keys of noisebase's loader config (its dataset YAML / TrainingSampleLoader_v1 arguments). They are
# accepted so an existing call keeps working; the daemon's config decides what is served, and these are
# used only for noisebase's `file` key (data_path, src.files) and the sampler geometry (src.frames_per_sequence,
# batch_size), which are checked against what the daemon sends.
NOISEBASE_CONFIG_KEYS = frozenset({
    "src", "seed", "val_split", "shuffle", "batch_size", "drop_last", "num_workers", "flip_rotate", "buffers",
    "samples", "data_path", "data_remote", "name", "type", "framework", "sampler_state", "defaults", "_target_",
    "loaders", "serve",  # serve: nb-serve's own section, when the daemon's YAML is passed as it is
})


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


def _stage(stage: str) -> str:
    if stage in ("train", "val"):
        return stage
    if stage == "validation":
        return "val"
    raise ValueError(f"stage {stage!r} is not 'train' or 'val'")


class Loader:
    """One rank's batches from an nb-serve daemon.

    ``iter(loader)`` asks the daemon for the next epoch (each new iteration is the next epoch, as with
    noisebase's loader, unless ``get_epoch`` is given) and yields its batches as dicts of numpy arrays with
    noisebase's keys, shapes and dtypes (``prev_camera`` nested, ``frame_index`` a 0-d int64 array), each
    array a view of the received ZeroMQ frame (no copy). Iteration stops at the daemon's end-of-epoch
    message. Each batch is acknowledged to the daemon when the next one is asked for, so the daemon's
    resume state (``nb-serve ctl checkpoint``) covers what was trained on.

    The daemon streams one epoch per rank at a time, and every loader of a rank in a process shares one data
    socket. When another epoch is streamed to the rank in the middle of an iteration (validation in the
    middle of a training epoch), the interrupted iterator, once resumed, asks for its epoch again from the
    start of the interrupted sequence group and passes over what it already yielded: it yields the
    uninterrupted epoch. A batch the daemon could not produce raises ``BatchError``; a daemon that does not
    answer within ``timeout`` seconds raises ``TimeoutError``.

    control     the daemon's control endpoint (default: the daemon's default, as `nb-serve run` uses)
    stage       "train" or "val"
    rank, world_size
                default: torch.distributed's when initialised, else 0 and 1; the daemon must serve this rank of
                this world size
    get_epoch   callable giving the epoch to ask for at each iteration (noisebase's argument)
    timeout     seconds to wait for any reply or batch before raising TimeoutError
    server_key, client_key
                CURVE keys for a daemon whose tcp endpoints are secured (README "Trust model"): the daemon's
                public certificate (its NAME.key from `nb-serve keygen`) and this trainer's secret certificate
                (NAME.key_secret, whose NAME.key is in the daemon's serve.authorized_keys); a path each, or
                Z85 bytes (server_key) and a (public, secret) pair of Z85 bytes (client_key)
    **config    noisebase's loader config (optional): with ``data_path`` and ``src`` batches also carry
                noisebase's ``file`` key; ``src.frames_per_sequence`` and ``batch_size`` make
                ``batch_sampler.checkpoint`` exact from the first batch
    """

    def __init__(self, control: str | None = None, stage: str = "train", rank: int | None = None,
                 world_size: int | None = None, get_epoch=None, timeout: float = 60.0, server_key=None,
                 client_key=None, **config):
        self._closed, self._channel, self._control = True, None, None
        unknown = sorted(set(config) - NOISEBASE_CONFIG_KEYS)
        if unknown:
            raise TypeError(f"unexpected arguments {unknown} (noisebase config keys are accepted: "
                            f"{sorted(NOISEBASE_CONFIG_KEYS)})")
        self._closed = False
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
        self.endpoint = data_endpoint(served[self.rank]["endpoint"], self.control)

        src = config.get("src") or {}
        batch_size = config.get("batch_size")
        self.batch_sampler = SamplerState(
            rank=self.rank, num_replicas=self.world_size, get_epoch=get_epoch,
            frames_per_sequence=None if src.get("frames_per_sequence") is None else int(src["frames_per_sequence"]),
            batch_size=None if batch_size is None else int(batch_size) // self.world_size)
        self._files = None
        if "src" in config and "files" in src:
            # noisebase: os.path.join(resolve_data_path(data_path), src['files'].format(index=i)); its default
            # data path (data_path None) is the working directory's data/.
            data_path = config.get("data_path")
            root = data_path if data_path is not None else os.path.join(os.getcwd(), "data")
            template = src["files"]
            self._files = lambda index: os.path.join(root, template.format(index=index))
        self._lengths: dict = {}
        self.last_header: dict | None = None
        entry = served[self.rank]
        active = (entry.get("stage"), entry.get("epoch")) if entry.get("active") else None
        self._channel = Channel.acquire(self.endpoint, active, curve=self._curve)

    # -- noisebase's loader API

    def __iter__(self):
        return self._epoch()

    def __len__(self) -> int:
        """Batches this rank gets in the next epoch (the daemon's `length`)."""
        epoch = int(self.batch_sampler.get_epoch())
        key = (self.stage, epoch)
        if key not in self._lengths:
            reply = self._control.request({"cmd": "length", "stage": self.stage, "rank": self.rank, "epoch": epoch})
            self._lengths[key] = int(reply["batches"])
        return self._lengths[key]

    def state_dict(self) -> dict:
        return self.batch_sampler.cached_state

    def load_state_dict(self, state_dict: dict):
        self.batch_sampler.load_state_dict(state_dict)

    # -- the stream

    def _epoch(self):
        if self._closed:
            raise RuntimeError("this nbserve.Loader is closed")
        sampler = self.batch_sampler
        epoch = int(sampler.get_epoch())
        request = {"cmd": "epoch", "rank": self.rank, "stage": self.stage, "epoch": epoch}
        state = sampler.resume_request()
        if state is not None:
            request["state"] = state
        stream = self._channel.begin(self._control, request, self.timeout)
        base = self._resumed_from(stream, epoch)  # the epoch's sequence position the stream starts at
        consumed = 0      # batch positions of `stream` the consumer is done with (acknowledged)
        delivered = 0     # batch positions of `stream` handed out (batches and errors)
        skip = 0          # positions to pass over after a continuation (handed out before it)
        group = None      # the sequences of the last batch handed out
        while True:
            if self._closed:
                raise RuntimeError("this nbserve.Loader was closed during the epoch")
            if consumed:
                self._ack(stream, consumed)
            try:
                header, frames = self._channel.receive(stream, self.timeout)
            except Superseded:
                stream, base, skip = self._continue(epoch, stream, base, delivered)
                consumed = delivered = 0
                continue
            kind = header["type"]
            if kind == "end":
                if skip:
                    raise ProtocolError(f"the continued {self.stage} epoch {epoch} ended {skip} batches early")
                sampler.observe_end(stream, stream.next_batch)
                sampler.epoch_finished(epoch)
                return
            consumed = delivered = header["batch"] + 1
            if skip:
                # Already handed out before the stream was interrupted: the same group, frame by frame.
                if kind != "batch" or header["sequences"] != group or header["frame_index"] != header["batch"]:
                    raise ProtocolError(f"the continued {self.stage} epoch {epoch} does not repeat its interrupted "
                                        f"sequence group {group} (batch {header.get('batch')}: "
                                        f"{header.get('sequences')}, frame {header.get('frame_index')})")
                skip -= 1
                continue
            if kind == "error":
                raise BatchError(header, self.rank)
            sampler.observe(stream, header["batch"], header["frame_index"], len(header["sequences"]))
            self.last_header = header
            group = header["sequences"]
            batch = nest(decode_tensors(header, frames))
            if self._files is not None:
                batch = with_file(batch, [self._files(index) for index in header["sequences"]])
            yield batch

    @staticmethod
    def _resumed_from(stream, epoch: int) -> int:
        resumed = stream.reply.get("resumed_from")
        if isinstance(resumed, dict) and resumed.get("start_epoch_idx") == epoch:
            return int(resumed.get("start_sequence_idx", 0))
        return 0

    def _continue(self, epoch: int, stream, base: int, delivered: int):
        """Another epoch was streamed to this rank meanwhile (say, validation in the middle of a training
        epoch): asks for this epoch again from the start of the interrupted sequence group (a resume state,
        as noisebase's) and returns (stream, its base, batches to pass over)."""
        frames, batch_size = self.batch_sampler.frames_per_sequence, self.batch_sampler.batch_size
        # frames_per_sequence is learned where the stream crosses a group boundary: while it is unknown, every
        # batch handed out lies in the stream's first group.
        groups = 0 if frames is None else delivered // frames
        if groups and batch_size is None:
            raise Superseded(f"cannot continue the interrupted {self.stage} epoch {epoch} on rank {self.rank}: its "
                             f"batch size is not known (pass the noisebase config's batch_size to the loader)")
        start = base + (groups * batch_size * self.world_size if groups else 0)
        skip = delivered - (groups * frames if groups else 0)
        request = {"cmd": "epoch", "rank": self.rank, "stage": self.stage, "epoch": epoch,
                   "state": {"start_epoch_idx": epoch, "start_sequence_idx": start}}
        stream = self._channel.begin(self._control, request, self.timeout)
        return stream, self._resumed_from(stream, epoch), skip

    def _ack(self, stream, consumed: int):
        self._control.request({"cmd": "ack", "rank": self.rank, "stage": stream.stage, "epoch": stream.epoch,
                               "batches": consumed})

    # -- lifetime

    def close(self):
        """Releases the sockets (the rank's data socket closes when its last loader in the process does)."""
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            self._channel.release()
            self._channel = None
        if self._control is not None:
            self._control.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return (f"nbserve.Loader(control={self.control!r}, stage={self.stage!r}, rank={self.rank}, "
                f"world_size={self.world_size}, endpoint={self.endpoint!r})")
