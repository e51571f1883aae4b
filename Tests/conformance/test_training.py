"""Training through nb-serve equals training through noisebase's own loaders, step for step and bit for bit.

A tiny denoiser (two seeded 3x3 convolutions, Tests/conformance/training_run.py) is trained for two epochs, each
run in its own process, fed by noisebase 1.1.1's real ``TrainingSampleLoader_v1`` (torch DataLoader and Lightning
DataModule, with its own workers) and by nbserve's drop-ins reading a real daemon. Per step: the same (epoch,
batch_idx, global step), the same keys in the same order, the same `file`, a SHA-256 per tensor equal for every
key but `color`/`depth`, which must be within the README's 2.5e-7 relative; the model reads only exactly served
keys, so every loss and the final weights must be identical bits.

Lightning runs also save noisebase-style mid-epoch checkpoints (each loader's own ``MidepochCheckpoint``):
- a trainer SIGKILLed after a mid-epoch checkpoint and resumed from it ends bit-identical to the uninterrupted run;
- a checkpoint written by a noisebase-fed trainer resumes an nbserve-fed one, and the other way round, each
  yielding exactly the uninterrupted run's remaining steps and weights.

Where torch or Lightning cannot be installed these tests are skipped and listed at the end of the run (conftest).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support
import loader_support as support

HAVE_TORCH = importlib.util.find_spec("torch") is not None and not hasattr(sys.modules.get("torch"), "__stub__")
HAVE_LIGHTNING = HAVE_TORCH and importlib.util.find_spec("lightning") is not None
pytestmark = pytest.mark.skipif(
    not HAVE_LIGHTNING,
    reason="torch and lightning are not installed (scripts/setup.sh installs them; pip install torch lightning)")

RUNNER = Path(__file__).resolve().parent / "training_run.py"
FRAMES = 4
BATCH = 2
STEPS_PER_EPOCH = 3 * FRAMES       # 6 training sequences in groups of BATCH, FRAMES batches each
EPOCHS = 2
CHECKPOINT_EVERY = 3                # due at step 3, 6, ...; each saved at the next sequence boundary
README_TOLERANCE = 2.5e-7           # README "What stays identical": color and depth, relative
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    return support.generate_dataset(
        tmp_path_factory.mktemp("training-data"), "training", sequences=8, frames=FRAMES, crop=16, samples=4,
        height=48, width=80, seed=21, reference_samples=4,
        loader={"batch_size": BATCH, "val_split": 0.25, "samples": 4, "num_workers": 2})


@pytest.fixture(scope="module")
def daemon(binary, dataset, tmp_path_factory):
    started = daemon_support.DaemonProcess(binary, daemon_support.daemon_config(
        dataset, tmp_path_factory.mktemp("training-daemon")))
    yield started
    started.stop(signal.SIGKILL)


@dataclasses.dataclass
class Run:
    """What one training run left in its directory."""
    out: Path

    @property
    def steps(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "steps.jsonl").read_text().splitlines()]

    def tensors(self, step: dict) -> dict:
        with np.load(self.out / "tensors" / f"{step['epoch']}-{step['batch_idx']}.npz") as data:
            return dict(data)

    @property
    def weights(self) -> dict:
        import torch
        return torch.load(self.out / "weights.pt", weights_only=True)

    def checkpoints(self) -> list[tuple[int, dict, Path]]:
        """(global step, loader state, path) of each mid-epoch checkpoint, oldest first."""
        import torch
        found = []
        for path in sorted((self.out / "checkpoints").glob("*.ckpt")):
            checkpoint = torch.load(path, weights_only=False)
            states = checkpoint["loops"]["fit_loop"]["state_dict"].get("combined_loader") or [{}]
            if states[0]:
                found.append((checkpoint["global_step"], states[0], path))
        return sorted(found, key=lambda entry: entry[0])


def command(loader: str, framework: str, config: Path, out: Path, control: str, *extra) -> list[str]:
    return [sys.executable, str(RUNNER), "--loader", loader, "--framework", framework, "--config", str(config),
            "--control", control, "--epochs", str(EPOCHS), "--out", str(out), *map(str, extra)]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(loader: str, framework: str, daemon, out: Path, *extra) -> Run:
    return train_together((loader, framework, out, *extra), daemon=daemon)[0]


def train_together(*runs: tuple, daemon) -> list[Run]:
    """Runs (loader, framework, out, *extra) trainings at the same time and waits for all of them. At most one
    of them may read the daemon: it serves one stream per rank."""
    assert sum(run[0] == "nbserve" for run in runs) <= 1, "two nbserve trainers would share rank 0's stream"
    processes = []
    for loader, framework, out, *extra in runs:
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "run.log", "w")
        processes.append((loader, framework, out, log, subprocess.Popen(
            command(loader, framework, daemon.config_path, out, daemon.control, *extra),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment(), cwd=out)))
    failures = []
    for loader, framework, out, log, process in processes:
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if process.returncode != 0:
            failures.append(f"{loader}/{framework} run ended with {process.returncode}:\n"
                            f"{(out / 'run.log').read_text()[-6000:]}")
    assert not failures, "\n".join(failures)
    return [Run(out) for _, _, out, _, _ in processes]


def assert_same_steps(actual: Run, expected: Run, where: str, *, exact: bool, first_step: int = 0):
    """actual's steps are expected's from `first_step` on: positions, keys, `file`, exact tensors and losses
    identical; color/depth identical (exact) or within the README's tolerance."""
    wanted = [step for step in expected.steps if step["step"] >= first_step]
    got = actual.steps
    positions = [(s["epoch"], s["batch_idx"], s["step"]) for s in got]
    assert positions == [(s["epoch"], s["batch_idx"], s["step"]) for s in wanted], f"{where}: steps {positions}"
    for mine, theirs in zip(got, wanted):
        at = f"{where}, epoch {mine['epoch']} batch {mine['batch_idx']}"
        assert mine["keys"] == theirs["keys"] and mine["prev_camera_keys"] == theirs["prev_camera_keys"], at
        assert mine["file"] == theirs["file"], at
        differing = sorted(key for key in theirs["hashes"] if mine["hashes"].get(key) != theirs["hashes"][key])
        assert not differing and mine["hashes"].keys() == theirs["hashes"].keys(), f"{at}: tensors differ: {differing}"
        assert mine["loss"] == theirs["loss"], f"{at}: loss {float.fromhex(mine['loss'])!r} != " \
                                               f"{float.fromhex(theirs['loss'])!r}"
        ours, reference = actual.tensors(mine), expected.tensors(theirs)
        assert ours.keys() == reference.keys() and ours, at
        for key in reference:
            if exact:
                assert ours[key].tobytes() == reference[key].tobytes(), f"{at}: {key} differs"
            else:
                error = support.relative_error(ours[key], reference[key])
                assert error <= README_TOLERANCE, f"{at}: {key} relative error {error:.3e}"


def assert_same_weights(actual: Run, expected: Run, where: str):
    import torch
    ours, theirs = actual.weights, expected.weights
    assert ours.keys() == theirs.keys(), where
    differing = [name for name in theirs if not torch.equal(ours[name], theirs[name])
                 or ours[name].numpy().tobytes() != theirs[name].numpy().tobytes()]
    assert not differing, f"{where}: final weights differ in {differing}"


@pytest.fixture(scope="module")
def lightning_runs(daemon, tmp_path_factory) -> dict[str, Run]:
    """Uninterrupted Lightning runs, with mid-epoch checkpoints, fed by each loader."""
    root = tmp_path_factory.mktemp("lightning-runs")
    loaders = ("noisebase", "nbserve")
    runs = train_together(*[(loader, "lightning", root / loader, "--checkpoint-every", CHECKPOINT_EVERY)
                            for loader in loaders], daemon=daemon)
    return dict(zip(loaders, runs))


def test_torch_training_equals_noisebase(daemon, tmp_path):
    noisebase, nbserve = train_together(("noisebase", "torch", tmp_path / "noisebase"),
                                        ("nbserve", "torch", tmp_path / "nbserve"), daemon=daemon)
    assert len(noisebase.steps) == EPOCHS * STEPS_PER_EPOCH
    assert_same_steps(nbserve, noisebase, "torch: nbserve vs noisebase", exact=False)
    assert_same_weights(nbserve, noisebase, "torch: nbserve vs noisebase")


def test_lightning_training_equals_noisebase(lightning_runs):
    noisebase, nbserve = lightning_runs["noisebase"], lightning_runs["nbserve"]
    assert len(noisebase.steps) == EPOCHS * STEPS_PER_EPOCH
    assert_same_steps(nbserve, noisebase, "lightning: nbserve vs noisebase", exact=False)
    assert_same_weights(nbserve, noisebase, "lightning: nbserve vs noisebase")
    # Both saved their mid-epoch checkpoints at the same steps with the same loader states.
    positions = [(step, state) for step, state, _ in noisebase.checkpoints()]
    assert positions and positions == [(step, state) for step, state, _ in nbserve.checkpoints()]
    assert all(0 < state["start_sequence_idx"] and step % FRAMES == 0 for step, state in positions), positions


def wait_for_line(process: subprocess.Popen, wanted: str, timeout_s: float) -> list[str]:
    """Reads the process's standard output until a line equals `wanted` (fails on exit or timeout)."""
    lines, pending = [], b""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            continue
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        lines += [line.decode() for line in complete]
        if wanted in lines:
            return lines
    process.kill()
    _, errors = process.communicate()
    pytest.fail(f"the trainer never printed {wanted!r}; output: {lines[-20:]}\n{errors.decode()[-6000:]}")


def test_sigkill_after_midepoch_checkpoint_then_resume_is_bit_identical(daemon, lightning_runs, tmp_path):
    uninterrupted = lightning_runs["nbserve"]
    pause = 2 * CHECKPOINT_EVERY    # mid-epoch, after the save due at step 3 (made at the boundary, step 4)
    killed = subprocess.Popen(
        command("nbserve", "lightning", daemon.config_path, tmp_path / "killed", daemon.control,
                "--checkpoint-every", CHECKPOINT_EVERY, "--pause-at-step", pause),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=tmp_path)
    try:
        wait_for_line(killed, f"paused at step {pause}", RUN_TIMEOUT_S)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    partial = Run(tmp_path / "killed")
    assert [s["step"] for s in partial.steps] == list(range(pause))
    checkpoints = partial.checkpoints()
    assert checkpoints, "no mid-epoch checkpoint before the kill"
    step, state, path = checkpoints[-1]
    assert 0 < step < pause and state["start_epoch_idx"] == 0, (step, state)
    assert not list(path.parent.glob(".*tmp*")), "a temporary checkpoint file was left behind"

    resumed = train("nbserve", "lightning", daemon, tmp_path / "resumed", "--resume", path)
    assert_same_steps(resumed, uninterrupted, "resumed after SIGKILL", exact=True, first_step=step)
    assert_same_weights(resumed, uninterrupted, "resumed after SIGKILL")


def test_midepoch_checkpoints_resume_across_loaders(daemon, lightning_runs, tmp_path):
    """A noisebase-fed trainer's checkpoint resumed by nbserve, and an nbserve-fed trainer's by noisebase (the
    two resumed runs at the same time)."""
    directions = [("noisebase", "nbserve"), ("nbserve", "noisebase")]
    starts = {}
    for written_by, resumed_by in directions:
        step, state, path = next(entry for entry in lightning_runs[written_by].checkpoints()
                                 if entry[0] < STEPS_PER_EPOCH)
        starts[written_by] = (step, state, path)
    resumed = train_together(*[(resumed_by, "lightning", tmp_path / f"{written_by}-to-{resumed_by}", "--resume",
                                starts[written_by][2]) for written_by, resumed_by in directions], daemon=daemon)
    for (written_by, resumed_by), run in zip(directions, resumed):
        step, state, _ = starts[written_by]
        where = f"{written_by} checkpoint at step {step} ({state}) resumed by {resumed_by}"
        # Bit for bit what the resuming loader's own uninterrupted run did, and (within color/depth's
        # tolerance) what the other loader's did.
        assert_same_steps(run, lightning_runs[resumed_by], where, exact=True, first_step=step)
        assert_same_weights(run, lightning_runs[resumed_by], where)
        assert_same_steps(run, lightning_runs[written_by], where, exact=False, first_step=step)
