"""nb-serve for Lightning trainers: drop-ins for noisebase's ``noisebase.loaders.lightning.TrainingSampleLoader_v1``
and ``noisebase.lightning.MidepochCheckpoint``.

    from nbserve.lightning import TrainingSampleLoader_v1, MidepochCheckpoint, DataStallMonitor
"""

from __future__ import annotations

from typing import Any
from weakref import proxy

try:
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
except ImportError as error:  # pragma: no cover - exercised only where lightning is missing
    raise ImportError("nbserve.lightning needs Lightning: pip install lightning (or nbserve[lightning])") from error

from . import _atomic
from .loader import _stage
from .torch import TrainingSampleLoader_v1 as TorchLoader


class TrainingSampleLoader_v1(L.LightningDataModule):
    """A LightningDataModule serving the train and val stages from nb-serve; the epoch of each stream is
    ``trainer.current_epoch``. Lightning replaces the sampler (or adds a DistributedSampler) only in
    ``torch.utils.data.DataLoader`` objects; these loaders are plain iterables, so it leaves them alone and
    the daemon's sharding by rank stands (noisebase's data module turns the replacement off through a private
    attribute of the trainer instead).

    control: the daemon's control endpoint; the other arguments go to ``nbserve.torch.TrainingSampleLoader_v1``
    (pin_memory, device, transport="auto"/"shm"/"zmq", timeout, server_key/client_key for a daemon's CURVE-secured tcp endpoints, and noisebase's
    config keys, which may be passed as they are).
    """

    def __init__(self, control: str | None = None, **loader_args: Any) -> None:
        super().__init__()
        self.control = control
        self.loader_args = loader_args
        self.loaders: dict[str, TorchLoader] = {}  # the latest loader of each stage, for stats()

    def _loader(self, stage: str) -> TorchLoader:
        args = dict(self.loader_args)
        args["stage"] = stage
        loader = TorchLoader(self.control, get_epoch=self._current_epoch, **args)
        self.loaders[stage] = loader
        return loader

    def stats(self, stage: str = "train", reset: bool = False) -> dict[str, Any]:
        """The stage's loader's ``stats()`` (``nbserve.Loader.stats``): batches, wait and busy seconds, stall.
        A training step can log it next to its loss, e.g. ``self.log("data_stall",
        self.trainer.datamodule.stats()["stall"] or 0.0)``."""
        loader = self.loaders.get(_stage(stage))
        if loader is None:
            raise RuntimeError(f"no {stage} loader has been made yet (Lightning asks for it when the stage starts)")
        return loader.stats(reset)

    def _current_epoch(self) -> int:
        if self.trainer is None:
            raise RuntimeError("nbserve.lightning.TrainingSampleLoader_v1 is not attached to a Trainer")
        return self.trainer.current_epoch

    def train_dataloader(self) -> TorchLoader:
        return self._loader("train")

    def val_dataloader(self) -> TorchLoader:
        return self._loader("val")


def _local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class MidepochCheckpoint(ModelCheckpoint):
    """noisebase's MidepochCheckpoint: a ModelCheckpoint whose saves wait for the next sequence boundary
    (``batch_sampler.checkpoint``), so the saved loader state resumes exactly; saves only during training.

    Unlike noisebase's, every file is written atomically (a temporary file beside it, fsync, rename, fsync
    of the directory), removals of older checkpoints wait until the deferred save is on disk, and several
    saves scheduled before one boundary (a top-k file and last.ckpt) are all made. A crash during a save
    leaves the previous checkpoints as they were.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._nbserve_pending: dict[str, str] = {}   # path -> "save" | "remove", the last operation asked

    # ModelCheckpoint's own calls are recorded, and carried out at the next safe point.

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._nbserve_pending.pop(filepath, None)
        self._nbserve_pending[filepath] = "save"

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not self._nbserve_saves_pending():
            super()._remove_checkpoint(trainer, filepath)
            return
        self._nbserve_pending.pop(filepath, None)
        self._nbserve_pending[filepath] = "remove"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._nbserve_saves_pending():
            loader = trainer.train_dataloader
            if loader is None:
                return
            sampler = loader.batch_sampler
            if sampler.checkpoint(trainer.current_epoch, batch_idx):
                # The sampler cached the resume state; the loader's state_dict() returns it into the file.
                self._nbserve_flush(trainer)
                sampler.cached_state = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._nbserve_pending:
            # Between epochs is always safe; no sampler state is needed.
            self._nbserve_flush(trainer)

    def _nbserve_saves_pending(self) -> bool:
        return any(operation == "save" for operation in self._nbserve_pending.values())

    def _nbserve_flush(self, trainer: L.Trainer) -> None:
        pending, self._nbserve_pending = self._nbserve_pending, {}
        # New files first, removals after: at no moment are there fewer complete checkpoints than before.
        for path, operation in pending.items():
            if operation == "save":
                self._nbserve_write(trainer, path)
        for path, operation in pending.items():
            if operation == "remove":
                super()._remove_checkpoint(trainer, path)

    def _nbserve_write(self, trainer: L.Trainer, filepath: str) -> None:
        if not _local(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        # What ModelCheckpoint._save_checkpoint does, with the file written under a temporary name and
        # committed by the process that writes it (global rank 0).
        _atomic.atomic_write(
            filepath, lambda temporary: trainer.save_checkpoint(temporary, self.save_weights_only),
            commit_here=trainer.is_global_zero)
        trainer.strategy.barrier("nbserve.MidepochCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class DataStallMonitor(Callback):
    """Logs where the training loop's time goes, next to the loss, with the trainer's own logger: every
    ``every_n_train_steps`` steps, the train loader's ``stats(reset=True)`` (``nbserve.Loader.stats``) for the
    steps since the last log, as ``{prefix}stall`` (the share of time spent waiting for batches),
    ``{prefix}wait_p50_s``, ``{prefix}wait_p99_s``, ``{prefix}wait_s`` and ``{prefix}frames_per_s``. The loader
    is the data module's (``nbserve.lightning.TrainingSampleLoader_v1``) or the train dataloader itself when it
    is an ``nbserve.torch.TrainingSampleLoader_v1``. The daemon's metrics carry the same figures for ops."""

    def __init__(self, every_n_train_steps: int = 50, prefix: str = "data/") -> None:
        super().__init__()
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be at least 1, not {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.prefix = prefix
        self._batches = 0  # training batches seen, across epochs (an epoch may be shorter than the interval)

    def _stats(self, trainer: L.Trainer) -> dict[str, Any] | None:
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, TrainingSampleLoader_v1) and "train" in datamodule.loaders:
            return datamodule.stats("train", reset=True)
        loader = getattr(trainer, "train_dataloader", None)
        if isinstance(loader, TorchLoader):
            return loader.stats(reset=True)
        return None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches += 1
        if self._batches % self.every_n_train_steps:
            return
        stats = self._stats(trainer)
        if stats is None or not stats["batches"]:
            return
        figures = {"stall": stats["stall"], "wait_p50_s": stats["wait_p50_s"], "wait_p99_s": stats["wait_p99_s"],
                   "wait_s": stats["wait_s"], "frames_per_s": stats["frames"] / max(stats["interval_s"], 1e-9)}
        pl_module.log_dict({self.prefix + key: float(value) for key, value in figures.items() if value is not None},
                           on_step=True, on_epoch=False)
