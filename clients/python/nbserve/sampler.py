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

``frames_per_sequence`` and ``batch_size`` come from the noisebase config when it is passed to the loader
(``src``/``batch_size``); otherwise they are read off the stream: the batch size from a full sequence group,
the frames per sequence where a group ends. Until they are known, ``checkpoint`` answers exactly where the
answer does not depend on them (batch 0 of a stream and the batches before any group ended) and says False
(not a safe point yet) otherwise, so a deferred checkpoint waits for the next group instead of recording a
wrong position.
"""

from __future__ import annotations


class SamplerState:
    def __init__(self, rank: int = 0, num_replicas: int = 1, get_epoch=None,
                 frames_per_sequence: int | None = None, batch_size: int | None = None):
        self.rank = rank
        self.num_replicas = num_replicas
        self.frames_per_sequence = frames_per_sequence
        self.batch_size = batch_size          # per rank: noisebase's batch_size // num_replicas
        self.start_epoch_idx = 0
        self.start_sequence_idx = 0
        self.cached_state: dict = {}
        self.epoch_idx = 0
        self.resumed = False                  # load_state_dict was given a state
        self.get_epoch = get_epoch if get_epoch is not None else (lambda: self.epoch_idx)
        # What the stream has shown so far (for frames_per_sequence / batch_size when not configured).
        self._last: tuple | None = None       # (stream, batch, frame_index, number of sequences)

    # -- noisebase's API

    def checkpoint(self, epoch: int, batch_idx: int) -> bool:
        """Whether a checkpoint may be saved before training on batch `batch_idx`; caches the resume state."""
        frames = self.frames_per_sequence
        if frames is None:
            # Not known yet: batch 0 is a boundary whatever it is; below the frames seen so far no other batch
            # is; beyond them the answer is unknown, and False (not yet) is the safe one.
            if batch_idx != 0:
                return False
            groups = 0
        else:
            if batch_idx % frames != 0:
                return False
            groups = batch_idx // frames
        if groups == 0:
            sequence_idx = 0
        elif self.batch_size is None:
            return False
        else:
            sequence_idx = groups * self.batch_size * self.num_replicas
        self.cached_state = {"start_epoch_idx": epoch, "start_sequence_idx": sequence_idx}
        return True

    def state_dict(self) -> dict:
        return self.cached_state

    def load_state_dict(self, state_dict: dict):
        if state_dict != {}:
            self.start_epoch_idx = int(state_dict["start_epoch_idx"])
            self.epoch_idx = int(state_dict["start_epoch_idx"])
            self.start_sequence_idx = int(state_dict["start_sequence_idx"])
            self.resumed = True

    # -- used by the loader

    def resume_request(self) -> dict | None:
        """The state an epoch request carries (the daemon applies it to the epoch it names, as noisebase does)."""
        if not self.resumed:
            return None
        return {"start_epoch_idx": self.start_epoch_idx, "start_sequence_idx": self.start_sequence_idx}

    def epoch_finished(self, epoch: int):
        # VideoSampler: "Bump count when we finish an epoch; use max in case we have an older iterator".
        self.epoch_idx = max(self.epoch_idx, epoch + 1)

    def observe(self, stream, batch: int, frame_index: int, sequences: int):
        """A batch header of `stream` (any object identifying the stream)."""
        if self.frames_per_sequence is not None and frame_index >= self.frames_per_sequence:
            raise ValueError(f"the daemon sent frame {frame_index} of a sequence, but frames_per_sequence is "
                             f"{self.frames_per_sequence}: the loader's config is not the daemon's")
        if self.batch_size is not None and sequences > self.batch_size:
            raise ValueError(f"the daemon sent {sequences} sequences in a batch, but this rank's batch size is "
                             f"{self.batch_size}: the loader's config is not the daemon's")
        last = self._last
        if frame_index == 0 and last is not None and last[0] is stream and last[1] == batch - 1:
            # The previous batch was the last frame of a complete (so full-size) group.
            self._learn(frames=last[2] + 1, batch_size=last[3])
        self._last = (stream, batch, frame_index, sequences)

    def observe_end(self, stream, batches: int):
        """The stream's `end` after `batches` batch indices: its last group was complete."""
        last = self._last
        if last is not None and last[0] is stream and last[1] == batches - 1:
            self._learn(frames=last[2] + 1, batch_size=None)
        self._last = None

    def _learn(self, frames: int, batch_size: int | None):
        if self.frames_per_sequence is None:
            self.frames_per_sequence = frames
        if batch_size is not None and self.batch_size is None:
            self.batch_size = batch_size
