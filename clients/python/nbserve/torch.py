"""nb-serve for PyTorch trainers: a drop-in for noisebase's ``TrainingSampleLoader_v1``.

    from nbserve.torch import TrainingSampleLoader_v1, backproject_pixel_centers

Batches are the same dicts noisebase's loader yields (``nbserve.Batch``): torch tensors (``torch.from_numpy``
over the daemon's shared memory or the received frames, then optionally copied into pinned memory and/or to
``device``), ``prev_camera`` nested, ``frame_index`` a 0-d int64 tensor, and ``file`` when the noisebase config
is passed.

Over shared memory the CPU tensors are read-only views of the daemon's memory (never copied; torch warns
that it does not support non-writable tensors, a warning this module filters while it makes them: writing
into such a tensor is an error, as the memory is mapped read-only). With a CUDA ``device`` the mapped memory
is page-locked once (``cudaHostRegister``) and each tensor is copied with one ``non_blocking`` DMA; the
batch's shared memory is released as soon as those copies have completed (a CUDA event). The CUDA path is
guarded by ``torch.cuda.is_available()`` and is not exercised by the CPU-only test suite.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only where torch is missing
    raise ImportError("nbserve.torch needs PyTorch: pip install torch (or nbserve[torch])") from error

from ._protocol import Batch
from ._shm import Session
from .loader import Loader
from .sampler import SamplerState

# cudaHostRegister flags: the mapping is read-only, which CUDA must be told (cudaHostRegisterReadOnly).
_CUDA_HOST_REGISTER_READ_ONLY = 0x08


def _clear_cuda_error() -> bool:
    """Reads back (and so clears) CUDA's last error. A refused ``cudaHostRegister`` stays the runtime's "last
    error", which torch reads after its next kernel launch and would raise as that launch's failure; torch's
    cudart bindings have no ``cudaGetLastError``, so it is called in the libcudart this process loaded (the
    same library, hence the same error state). False when no libcudart is mapped (a static runtime)."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "/libcudart.so" in line), None)
        if path is None:
            return False
        ctypes.CDLL(path).cudaGetLastError()
        return True
    except OSError:
        return False


def _register(session: Session) -> bool:
    """Page-locks the session's whole mapping for CUDA once, read-only as it is mapped; False (with a
    warning) when CUDA refuses (a GPU or driver without read-only registration). A writable registration is
    not tried: the mapping is read-only, so the driver cannot pin it for writing."""
    if session.cuda_registered is False:
        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        code = cudart.cudaHostRegister(session.address, session.size, _CUDA_HOST_REGISTER_READ_ONLY)
        if int(code) == 0:
            session.cuda_registered = True
        else:
            cleared = _clear_cuda_error()
            warnings.warn(f"cudaHostRegister of nb-serve's shared memory failed "
                          f"({cudart.cudaGetErrorString(code)}): batches are staged through pinned copies"
                          + ("" if cleared else "; CUDA's error state could not be cleared, so the next CUDA "
                             "operation may report this error"), RuntimeWarning, stacklevel=3)
            session.cuda_registered = None  # tried and refused: not again
    return bool(session.cuda_registered)


def _to_torch(value: Any, pin: bool, device: torch.device | None) -> Any:
    if isinstance(value, dict):
        converted = {key: _to_torch(item, pin, device) for key, item in value.items()}
        return Batch(converted, value.lease) if isinstance(value, Batch) else converted
    if isinstance(value, list):
        return value
    if not value.flags.aligned:  # torch wants aligned storage; tiny frames only
        value = value.copy()
    with warnings.catch_warnings():
        # Shared memory is mapped read-only: these tensors are views that must not be written to.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(value)
    if pin:
        tensor = tensor.pin_memory()
    if device is not None:
        tensor = tensor.to(device, non_blocking=pin)
    return tensor


def _to_torch_device(value: Any, device: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_torch_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return value
    return value.to(device, non_blocking=True)


class TrainingSampleLoader_v1:
    """noisebase's ``TrainingSampleLoader_v1``, served by nb-serve.

    control     the daemon's control endpoint
    stage       "train" or "val"
    get_epoch   callable giving the epoch of each iteration (default: count epochs like noisebase)
    pin_memory  copy each batch into page-locked memory (only where CUDA is available; noisebase's loader
                always asks for it; over shared memory the mapping itself is page-locked instead, no copy)
    device      move each batch there (non-blocking from pinned memory); None keeps it on the CPU
    transport   "auto", "shm" or "zmq", as for ``nbserve.Loader``
    rank, world_size, timeout, server_key, client_key
                as for ``nbserve.Loader`` (server_key/client_key: CURVE keys for a daemon's secured tcp endpoints)
    **config    noisebase's loader config may be passed as it is (``TrainingSampleLoader_v1(**cfg, ...)``): the
                daemon's config decides what is served, and every key of it that decides the batches must agree
                with the daemon's (``nbserve.ConfigMismatch`` otherwise); ``data_path``/``src`` give noisebase's
                ``file`` key

    ``loader.batch_sampler.checkpoint(epoch, batch_idx)``, ``loader.batch_sampler.cached_state``,
    ``loader.state_dict()`` and ``loader.load_state_dict(state)`` behave as noisebase's.
    """

    def __init__(self, control: str | None = None, stage: str = "train", get_epoch: Callable[[], int] | None = None,
                 pin_memory: bool = True, device: str | torch.device | None = None, rank: int | None = None,
                 world_size: int | None = None, timeout: float = 60.0,
                 server_key: str | os.PathLike[str] | bytes | None = None,
                 client_key: str | os.PathLike[str] | tuple[bytes, bytes] | None = None, transport: str = "auto",
                 **config: Any) -> None:
        self.loader = Loader(control, stage=stage, rank=rank, world_size=world_size, get_epoch=get_epoch,
                             timeout=timeout, server_key=server_key, client_key=client_key, transport=transport,
                             **config)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.device = torch.device(device) if device is not None else None
        # Host batches in shared memory whose copies to the GPU are in flight: (CUDA event, batch).
        self._in_flight: deque[tuple[Any, Batch]] = deque()

    @property
    def batch_sampler(self) -> SamplerState:
        return self.loader.batch_sampler

    @property
    def stage(self) -> str:
        return self.loader.stage

    @property
    def transport(self) -> str:
        return self.loader.transport

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pin, device = self.pin_memory, self.device
        cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        timing = self.loader._timing
        for batch in self.loader:
            self._retire()
            session = self.loader.session
            if cuda and session is not None and batch.lease is not None and _register(session):
                on_device = self._to_cuda(batch, device)
                timing.extend_wait()  # converting and copying is the loader's time, not the trainer's
                yield on_device
            else:
                handed = [_to_torch(batch, pin, device)]
                del batch
                timing.extend_wait()
                yield handed.pop()
        self._retire(wait=True)

    def _to_cuda(self, batch: Batch, device: Any) -> Batch:
        """One non-blocking copy per tensor straight from the registered shared memory; the host batch (and so
        its lease) is kept until the copies' event has completed."""
        host = _to_torch(batch, False, None)
        on_device = _to_torch_device(host, device)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self._in_flight.append((event, batch))
        return Batch(on_device, None)

    def _retire(self, wait: bool = False) -> None:
        """Lets go of the host batches whose copies to the GPU have completed (their leases are released)."""
        while self._in_flight and (wait or self._in_flight[0][0].query()):
            event, _ = self._in_flight.popleft()
            if wait:
                event.synchronize()

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """``nbserve.Loader.stats``: the time converting to tensors and copying to ``device`` counts as waiting."""
        return self.loader.stats(reset)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.loader.load_state_dict(state_dict)

    def close(self) -> None:
        self.loader.close()

    def __repr__(self) -> str:
        return f"nbserve.torch.TrainingSampleLoader_v1({self.loader!r})"


def backproject_pixel_centers(motion: torch.Tensor, crop_offset: torch.Tensor, prev_crop_offset: torch.Tensor,
                              as_grid: bool = False) -> torch.Tensor:
    """noisebase.torch.backproject_pixel_centers, verbatim in behaviour.

    Args:
        motion (tensor, N2HW): per-pixel screen-space motion vectors (in pixels)
        crop_offset (tensor, size (2) or (N, 2)): offset of the crop from the camera frame's top left corner
        prev_crop_offset (tensor): the same in the previous frame
        as_grid (bool): torch.grid_sample format, with align_corners = False

    Returns:
        pixel_position (tensor, N2HW): ij indexed pixel coordinates, OR
        pixel_position (tensor, NHW2): xy WH position in (-1, 1) IF as_grid
    """
    height = motion.shape[2]
    width = motion.shape[3]
    dtype = motion.dtype
    device = motion.device

    pixel_grid = torch.stack(torch.meshgrid(
        torch.arange(0, height, dtype=dtype, device=device),
        torch.arange(0, width, dtype=dtype, device=device),
        indexing="ij",
    ))

    pixel_pos = pixel_grid + motion - prev_crop_offset[..., None, None] + crop_offset[..., None, None]

    if as_grid:
        pixel_pos_xy = torch.permute(torch.flip(pixel_pos, (1,)), (0, 2, 3, 1)) + 0.5
        image_pos = pixel_pos_xy / torch.tensor([width, height], dtype=pixel_pos.dtype, device=pixel_pos.device)
        return image_pos * 2 - 1
    return pixel_pos
