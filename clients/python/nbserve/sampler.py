"""noisebase's resumable-sampler state without torch: `loader.batch_sampler` of every nbserve loader.

noisebase's ``VideoSampler`` keeps the epoch counter, the resume position and the checkpoint cache of its
``TrainingSampleLoader_v1``; the daemon does the sampling itself, so only that state is left here, with the
same attribute names and the same arithmetic:

- ``checkpoint(epoch, batch_idx)`` is True only before the first batch of a sequence group
  (``batch_idx % frames_per_sequence == 0``) and then caches ``{'start_epoch_idx': epoch,
  'start_sequence_idx': batch_idx // frames_per_sequence * batch_size * num_replicas}`` in
  ``cached_state`` (``batch_size`` per rank, as noisebase's sampler has it);
- ``loader.state_dict()`` returns ``cached_state``, ``loader.load_state_dict(state)`` sets
  ``start_epoch_idx``, ``epoch_idx`` and ``start_sequence_idx``, and the next epoch request carries that
  state, so the daemon streams exactly what noisebase would after the same ``load_state_dict``.

``frames_per_sequence`` and ``batch_size`` are always the daemon's (its ``status``), whatever the trainer's
config says: the positions saved are positions in the stream that was served.
"""

from __future__ import annotations

from typing import Callable


class SamplerState:
    """The part of noisebase's ``VideoSampler`` a trainer touches, with the daemon's geometry."""

    def __init__(self, frames_per_sequence: int, batch_size: int, rank: int = 0, num_replicas: int = 1,
                 get_epoch: Callable[[], int] | None = None) -> None:
        self.rank = rank
        self.num_replicas = num_replicas
        self.frames_per_sequence = frames_per_sequence
        self.batch_size = batch_size          # per rank: noisebase's batch_size // num_replicas
        self.start_epoch_idx = 0
        self.start_sequence_idx = 0
        self.cached_state: dict[str, int] = {}
        self.epoch_idx = 0
        self.resumed = False                  # load_state_dict was given a state
        self.get_epoch: Callable[[], int] = get_epoch if get_epoch is not None else (lambda: self.epoch_idx)

    # -- noisebase's API

    def checkpoint(self, epoch: int, batch_idx: int) -> bool:
        """Whether a checkpoint may be saved before training on batch `batch_idx`; caches the resume state."""
        if batch_idx % self.frames_per_sequence != 0:
            return False
        self.cached_state = {"start_epoch_idx": epoch, "start_sequence_idx": self.sequence_index(batch_idx)}
        return True

    def state_dict(self) -> dict[str, int]:
        return self.cached_state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict != {}:
            self.start_epoch_idx = int(state_dict["start_epoch_idx"])
            self.epoch_idx = int(state_dict["start_epoch_idx"])
            self.start_sequence_idx = int(state_dict["start_sequence_idx"])
            self.resumed = True

    # -- used by the loader

    def sequence_index(self, batch_idx: int) -> int:
        """noisebase's start_sequence_idx for the group that batch `batch_idx` of a stream lies in, counted
        from the stream's start."""
        return batch_idx // self.frames_per_sequence * self.batch_size * self.num_replicas

    def resume_request(self) -> dict[str, int] | None:
        """The state an epoch request carries (the daemon applies it to the epoch it names, as noisebase does)."""
        if not self.resumed:
            return None
        return {"start_epoch_idx": self.start_epoch_idx, "start_sequence_idx": self.start_sequence_idx}

    def epoch_finished(self, epoch: int) -> None:
        # VideoSampler: "Bump count when we finish an epoch; use max in case we have an older iterator".
        self.epoch_idx = max(self.epoch_idx, epoch + 1)
