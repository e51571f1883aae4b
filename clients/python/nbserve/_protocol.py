"""Wire protocol v1 (docs/protocol.md): decoding one data-socket message without copying its tensors."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

VERSION = 1

# The order of the keys in a batch of noisebase's TrainingSampleLoader_v1: the camera keys, prev_camera,
# frame_index and file (TrainingSampleDataset.__getitem__ inserts them in this order), then the buffers in
# the order __getitem__ computes them. default_collate keeps the order of the first frame's dict.
CAMERA_KEYS = ("view_proj_mat", "camera_position", "camera_forward", "camera_up", "camera_left", "crop_offset")
BUFFER_KEYS = ("w_normal", "normal", "w_position", "w_motion", "motion", "depth", "color", "diffuse", "reference")
KEY_ORDER = CAMERA_KEYS + ("prev_camera", "frame_index", "file") + BUFFER_KEYS
_RANK = {key: index for index, key in enumerate(KEY_ORDER)}


class ProtocolError(RuntimeError):
    """A message that breaks wire protocol v1: a bug or a version mismatch, never data."""


class BatchError(RuntimeError):
    """The daemon could not produce a batch (its `error` message): names the file, array and chunk."""

    def __init__(self, header: dict[str, Any], rank: int | None = None) -> None:
        self.header = header
        self.stage = header.get("stage")
        self.epoch = header.get("epoch")
        self.batch = header.get("batch")
        self.file = header.get("file")
        self.array = header.get("array")
        self.chunk = header.get("chunk")
        self.reason = header.get("reason")
        self.rank = rank
        where = ", ".join(f"{name} {value!r}" for name, value in
                          (("file", self.file), ("array", self.array), ("chunk", self.chunk)) if value is not None)
        super().__init__(
            f"nb-serve could not produce {self.stage} epoch {self.epoch} batch {self.batch}"
            f"{'' if rank is None else f' of rank {rank}'}: {where or 'no file named'}: {self.reason}")


def decode_header(frame: Any) -> dict[str, Any]:
    """Frame 0 of a message: a JSON object of protocol version 1 with a known type."""
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not JSON ({error}): {raw[:200]!r}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is not a JSON object: {raw[:200]!r}")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported nb-serve protocol version {header.get('v')!r} (this client reads {VERSION})")
    if header.get("type") not in ("batch", "lease", "end", "error"):
        raise ProtocolError(f"unknown message type {header.get('type')!r}")
    return header


class Batch(dict[str, Any]):
    """One batch: a dict with noisebase's keys, nesting, dtypes and shapes, plus the release of its shared
    memory. Over the shared-memory transport its arrays are views of the daemon's memory, which the daemon
    keeps for this trainer until the batch is released: on its own once no array (or tensor) of it is
    referenced any more, or now with ``release()`` or at the end of a ``with batch:`` block (after which the
    arrays must not be read: the daemon may reuse their memory). Over ZeroMQ frames both do nothing.
    A pickled or copied batch is a plain dict."""

    def __init__(self, items: Any = (), lease: Any = None) -> None:
        super().__init__(items)
        self.lease = lease

    def release(self) -> None:
        """Gives the batch's shared memory back to the daemon now (idempotent)."""
        if self.lease is not None:
            self.lease.release()

    @property
    def released(self) -> bool:
        """Whether the batch's shared memory was given back (always True for a batch received as frames)."""
        return self.lease is None or bool(self.lease.released)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def copy(self) -> dict[str, Any]:
        return dict(self)


def decode_tensors(header: dict[str, Any], frames: Any) -> dict[str, np.ndarray]:
    """{name: ndarray} for a `batch` message, each array wrapping its received frame in place (no copy)."""
    specs = header.get("tensors")
    if not isinstance(specs, list):
        raise ProtocolError("batch header has no tensors array")
    if len(frames) != 1 + len(specs):
        raise ProtocolError(f"batch {header.get('batch')} has {len(frames)} frames for {len(specs)} tensors")
    arrays = {}
    for spec, frame in zip(specs, frames[1:]):
        try:
            name = spec["name"]
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(n) for n in spec["shape"])
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"batch {header.get('batch')}: bad tensor description {spec!r} ({error})") from None
        if not isinstance(name, str) or not name or name in arrays or any(n < 0 for n in shape):
            raise ProtocolError(f"batch {header.get('batch')}: bad tensor description {spec!r}")
        buffer = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        expected = dtype.itemsize * math.prod(shape)
        if buffer.nbytes != expected:
            raise ProtocolError(f"tensor {name!r}: frame of {buffer.nbytes} bytes for {dtype.str}{list(shape)} "
                                f"({expected} bytes)")
        if expected == 0:
            arrays[name] = np.empty(shape, dtype)
        else:
            arrays[name] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return arrays


def nest(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """'prev_camera.crop_offset' -> batch['prev_camera']['crop_offset'], keys in noisebase's order."""
    batch: dict[str, Any] = {}
    for name in sorted(arrays, key=lambda n: _RANK.get(n.partition(".")[0], len(_RANK))):
        group, dot, key = name.partition(".")
        if dot:
            batch.setdefault(group, {})[key] = arrays[name]
        else:
            batch[name] = arrays[name]
    if isinstance(batch.get("prev_camera"), dict):
        camera = batch["prev_camera"]
        batch["prev_camera"] = {key: camera[key] for key in
                                sorted(camera, key=lambda k: _RANK.get(k, len(_RANK)))}
    return batch


def with_file(batch: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """The batch with noisebase's `file` key (the list of sequence paths) in its place."""
    out = {}
    inserted = False
    for key, value in batch.items():
        if not inserted and _RANK.get(key, len(_RANK)) > _RANK["file"]:
            out["file"] = files
            inserted = True
        out[key] = value
    if not inserted:
        out["file"] = files
    return out
