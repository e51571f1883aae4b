"""A daemon restarted under a training loop does not stop training (the Python client, clients/python).

The daemon is stopped and started again (the same config, `serve.resume: auto`, its state directory) while a
trainer iterates: with SIGTERM (the daemon writes its resume state as it stops), or with SIGKILL after
`nb-serve ctl checkpoint`; twice per run, once mid-group with the new daemon started on another thread while
the trainer waits for its next batch, once at a group boundary before the trainer asks again. The trainer must see exactly the batches of an uninterrupted run, epoch after epoch, with validation
between epochs, and the daemon after the restart must be a new process serving a new stream.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support
import loader_support as support

sys.path.insert(0, str(support.REPO_ROOT / "clients" / "python"))

import nbserve  # noqa: E402  (the working copy in clients/python)

FRAMES = 4
BATCH = 2
WAIT_S = 30


@pytest.fixture(scope="module")
def binary() -> Path:
    return support.require_binary()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    # 8 sequences of 4 frames, val_split 0.25: 6 training sequences (three groups of 2: 12 batches an epoch)
    # and 2 validation ones.
    root = tmp_path_factory.mktemp("restart-data")
    return support.generate_dataset(
        root, "restart", sequences=8, frames=FRAMES, crop=16, samples=4, height=48, width=80, seed=5,
        reference_samples=4, loader={"batch_size": BATCH, "val_split": 0.25, "samples": 4})


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory()


def digest(batch: dict) -> str:
    hasher = hashlib.sha256()
    for name, value in sorted(support.flatten_batch(batch).items()):
        hasher.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    return hasher.hexdigest()


def train_two_epochs(control: str, on_batch=None) -> list[tuple[str, int, int, str]]:
    """A trainer's loop: two training epochs, each followed by a validation epoch; (stage, epoch, batch_idx,
    digest) of everything it sees. `on_batch(epoch, batch_idx)` runs after each training batch."""
    seen = []
    train = nbserve.Loader(control, "train", timeout=WAIT_S)
    val = nbserve.Loader(control, "val", timeout=WAIT_S, get_epoch=lambda: train.batch_sampler.epoch_idx - 1)
    try:
        for epoch in (0, 1):
            for batch_idx, batch in enumerate(train):
                seen.append(("train", epoch, batch_idx, digest(batch)))
                if on_batch is not None:
                    on_batch(epoch, batch_idx)
            for batch_idx, batch in enumerate(val):
                seen.append(("val", epoch, batch_idx, digest(batch)))
    finally:
        train.close()
        val.close()
    return seen


@pytest.mark.parametrize("how", ["sigterm", "kill-after-checkpoint"])
def test_training_survives_a_daemon_restart(binary, dataset, daemons, tmp_path, how):
    reference = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "reference"))
    expected = train_two_epochs(reference.control)
    reference.stop()
    assert len(expected) == 2 * (3 * FRAMES + FRAMES)

    config = daemon_support.daemon_config(dataset, tmp_path / "restarted", resume="auto")
    state_file = tmp_path / "restarted" / "state" / "resume-state.json"
    first = daemons(binary, config)
    restarted: list[daemon_support.DaemonProcess] = []
    written: list[dict] = []
    threads: list[threading.Thread] = []

    def stop(daemon: daemon_support.DaemonProcess):
        if how == "sigterm":
            assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()
            written.append(json.loads(state_file.read_text()))
        else:
            result = support.run_ok(binary, "ctl", "--control", daemon.control, "checkpoint")
            written.append(json.loads(result.stdout)["state"])
            daemon.stop(signal.SIGKILL)

    def on_batch(epoch: int, batch_idx: int):
        # Mid-group in epoch 0 (frame 2 of the second group): the daemon is stopped, and started again on
        # another thread while the trainer goes on and waits for its next batch. At a group boundary in epoch 1
        # (after its first group): stopped and started again before the trainer asks for the next batch.
        if (epoch, batch_idx) in ((0, FRAMES + 2), (1, FRAMES - 1)):
            for thread in threads:
                thread.join()
            stop(restarted[-1] if restarted else first)
            thread = threading.Thread(target=lambda: restarted.append(daemons(binary, config)))
            thread.start()
            threads.append(thread)
            if epoch == 1:
                thread.join()

    seen = train_two_epochs(first.control, on_batch)
    for thread in threads:
        thread.join()
    assert len(restarted) == 2, "the daemon was not restarted twice"
    assert seen == expected, "the trainer did not see the batches of an uninterrupted run"
    # What the daemon had recorded when it went away: the acknowledged whole sequence groups (epoch 0's first
    # group; none yet of epoch 1, whose first group's last batch the trainer was still holding).
    assert [(state["start_epoch_idx"], state["start_sequence_idx"]) for state in written] == [(0, BATCH), (1, 0)]
    pids = {first.process.pid} | {daemon.process.pid for daemon in restarted}
    assert len(pids) == 3
    # The restarted daemon served the rest of the run, and counts it consumed.
    status = restarted[-1].rank_status()
    assert status["train"]["epoch"] == 1 and status["val"]["epoch"] == 1
    assert status["val"]["consumed"] == FRAMES and status["val"]["phase"] == "ended"
