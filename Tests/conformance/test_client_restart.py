"""A daemon restarted under a training loop does not stop training (the Python client, clients/python).

The daemon is stopped and started again (the same config, `serve.resume: auto`, its state directory) while a
trainer runs: with SIGTERM (the daemon writes its resume state as it stops), or with SIGKILL after
`nb-serve ctl checkpoint`; twice per run, the first time with the new daemon started on another thread while
the trainer goes on and waits for its next batch. The trainer must see exactly what an uninterrupted run sees
(a numpy loop's batches, a torch model's losses and weights, a Lightning fit's batches and weights), and each
restart must really be a new daemon process.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
def dataset(tmp_path_factory) -> support.Dataset:
    return daemon_support.trainer_dataset(tmp_path_factory, "restart", seed=5, frames=FRAMES, batch=BATCH)


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


class Restarts:
    """Stops the daemon at given points of a training run (SIGTERM, or SIGKILL after `ctl checkpoint`) and
    starts it again with the same config. At the first point the new daemon is started on another thread while
    the trainer goes on and waits for its next batch; at later ones it is up before the trainer asks again."""

    def __init__(self, binary: Path, config: Path, first: daemon_support.DaemonProcess, start,
                 at: dict[tuple, str]):
        self.binary, self.config, self.start, self.at = binary, config, start, at
        self.daemons = [first]
        self.written: list[dict] = []
        self.threads: list[threading.Thread] = []
        self.state_file = config.parent / "state" / "resume-state.json"

    def stop(self, daemon: daemon_support.DaemonProcess, how: str):
        if how == "sigterm":
            assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()
            self.written.append(json.loads(self.state_file.read_text()))
        else:
            result = support.run_ok(self.binary, "ctl", "--control", daemon.control, "checkpoint")
            self.written.append(json.loads(result.stdout)["state"])
            daemon.stop(signal.SIGKILL)

    def __call__(self, *point):
        if point not in self.at:
            return
        self.join()
        self.stop(self.daemons[-1], self.at[point])
        thread = threading.Thread(target=lambda: self.daemons.append(self.start(self.binary, self.config)))
        thread.start()
        self.threads.append(thread)
        if point != next(iter(self.at)):
            thread.join()

    def join(self):
        for thread in self.threads:
            thread.join()

    def positions(self) -> list[tuple[int, int]]:
        return [(state["start_epoch_idx"], state["start_sequence_idx"]) for state in self.written]


# Mid-group in epoch 0 (frame 2 of the second group) and at a group boundary in epoch 1 (after its first group).
RESTART_AT = ((0, FRAMES + 2), (1, FRAMES - 1))


@pytest.mark.parametrize("how", ["sigterm", "kill-after-checkpoint"])
def test_training_survives_a_daemon_restart(binary, dataset, daemons, tmp_path, how):
    reference = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "reference"))
    expected = train_two_epochs(reference.control)
    reference.stop()
    assert len(expected) == 2 * (3 * FRAMES + FRAMES)

    config = daemon_support.daemon_config(dataset, tmp_path / "restarted", resume="auto")
    restarts = Restarts(binary, config, daemons(binary, config), daemons, {point: how for point in RESTART_AT})
    seen = train_two_epochs(restarts.daemons[0].control, restarts)
    restarts.join()
    assert len(restarts.daemons) == 3, "the daemon was not restarted twice"
    assert len({daemon.process.pid for daemon in restarts.daemons}) == 3
    assert seen == expected, "the trainer did not see the batches of an uninterrupted run"
    # What the daemon had recorded when it went away: the acknowledged whole sequence groups (epoch 0's first
    # group; none yet of epoch 1, whose first group's last batch the trainer was still holding).
    assert restarts.positions() == [(0, BATCH), (1, 0)]
    # The last daemon served the rest of the run and counts it consumed.
    status = restarts.daemons[-1].rank_status()
    assert status["train"]["epoch"] == 1 and status["val"]["epoch"] == 1
    assert status["val"]["consumed"] == FRAMES and status["val"]["phase"] == "ended"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_torch_model_trained_through_restarts_equals_one_trained_without(binary, dataset, daemons, tmp_path):
    """A tiny model trained for two epochs through nbserve.torch, the daemon restarted twice under it (SIGTERM,
    then SIGKILL after a checkpoint): every loss and the final weights are bit-identical to an uninterrupted
    run's."""
    import torch
    from nbserve.torch import TrainingSampleLoader_v1

    def train(control: str, on_batch=None):
        torch.manual_seed(0)
        torch.set_num_threads(1)
        model = torch.nn.Conv2d(3, 3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        loader = TrainingSampleLoader_v1(control, pin_memory=False, timeout=WAIT_S, **dataset.config)
        losses = []
        try:
            for epoch in (0, 1):
                for batch_idx, batch in enumerate(loader):
                    loss = torch.nn.functional.mse_loss(model(batch["color"].mean(-1)), batch["reference"])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append((epoch, batch_idx, loss.item()))
                    if on_batch is not None:
                        on_batch(epoch, batch_idx)
        finally:
            loader.close()
        return losses, [parameter.detach().clone() for parameter in model.parameters()]

    reference = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "reference"))
    expected_losses, expected_weights = train(reference.control)
    reference.stop()
    assert len(expected_losses) == 2 * 3 * FRAMES

    config = daemon_support.daemon_config(dataset, tmp_path / "restarted", resume="auto")
    first = daemons(binary, config)
    restarts = Restarts(binary, config, first, daemons, dict(zip(RESTART_AT, ("sigterm", "kill-after-checkpoint"))))
    losses, weights = train(first.control, restarts)
    restarts.join()
    assert len(restarts.daemons) == 3
    assert losses == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, expected_weights, strict=True))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("lightning") is None,
                    reason="torch or lightning is not installed")
def test_lightning_fit_with_validation_survives_daemon_restarts(binary, dataset, daemons, tmp_path):
    """Lightning, two epochs with validation in the middle and at the end of each: the daemon is restarted in
    the middle of a training sequence group (SIGTERM) and in the middle of a validation run (SIGKILL after a
    checkpoint). Every batch each step saw and the final weights equal an uninterrupted fit's."""
    import lightning as L
    import torch
    from nbserve.lightning import TrainingSampleLoader_v1

    def as_numpy(batch: dict) -> dict:
        return {key: ({k: v.numpy() for k, v in value.items()} if isinstance(value, dict)
                      else value if isinstance(value, list) else value.numpy()) for key, value in batch.items()}

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Conv2d(3, 3, 1)
            self.seen: list[tuple] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(("train", self.current_epoch, batch_idx, digest(as_numpy(batch))))
            return torch.nn.functional.mse_loss(self.net(batch["color"].mean(-1)), batch["reference"])

        def validation_step(self, batch, batch_idx):
            self.seen.append(("val", self.current_epoch, self.global_step, batch_idx, digest(as_numpy(batch))))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Restarting(L.Callback):
        def __init__(self, restarts):
            self.restarts = restarts

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.restarts(trainer.current_epoch, batch_idx)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.restarts("val", trainer.global_step, batch_idx)

    def fit(control: str, callbacks: list) -> tuple[list, list]:
        torch.set_num_threads(1)
        model = Tiny()
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            val_check_interval=6, callbacks=callbacks)
        trainer.fit(model, datamodule=TrainingSampleLoader_v1(control, pin_memory=False, timeout=WAIT_S,
                                                              **dataset.config))
        return model.seen, [parameter.detach().clone() for parameter in model.parameters()]

    reference = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "reference"))
    expected_seen, expected_weights = fit(reference.control, [])
    reference.stop()
    assert len(expected_seen) == 2 * 3 * FRAMES + 4 * FRAMES  # two epochs, four validation runs

    config = daemon_support.daemon_config(dataset, tmp_path / "restarted", resume="auto")
    first = daemons(binary, config)
    restarts = Restarts(binary, config, first, daemons,
                        {(0, FRAMES + 2): "sigterm", ("val", 3 * FRAMES + 6, 1): "kill-after-checkpoint"})
    seen, weights = fit(first.control, [Restarting(restarts)])
    restarts.join()
    assert len(restarts.daemons) == 3, "the daemon was not restarted twice"
    assert seen == expected_seen
    assert all(torch.equal(a, b) for a, b in zip(weights, expected_weights, strict=True))


def test_a_daemon_restarted_with_another_config_is_refused(binary, dataset, daemons, tmp_path):
    """Its batches would not continue this run: ConfigMismatch names what changed, instead of training on."""
    import yaml

    config = daemon_support.daemon_config(dataset, tmp_path)
    first = daemons(binary, config)
    loader = nbserve.Loader(first.control, timeout=WAIT_S)
    try:
        iterator = iter(loader)
        next(iterator)
        first.stop(signal.SIGTERM)
        changed = yaml.safe_load(config.read_text())
        changed["seed"] = changed.get("seed", 42) + 1
        support.write_config(config, changed)
        daemons(binary, config)
        with pytest.raises(nbserve.ConfigMismatch,
                           match=r"restarted with another configuration \(config\.seed: 42 -> 43\)"):
            # Batches the first daemon had already delivered into this process's queue come first; the
            # epoch ends (StopIteration, failing the test) long before this bound.
            for _ in range(1000):
                next(iterator)
    finally:
        loader.close()
