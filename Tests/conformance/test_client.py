"""The Python trainer client (clients/python, package `nbserve`) against a real daemon.

Every batch the client yields must be noisebase 1.1.1's own batch for that position (its real loader code, run
by Tests/fixtures/noisebase_oracle.py with torch stubbed where torch is missing), with noisebase's keys, nesting,
key order, shapes and dtypes, and the same tolerances as test_loader.py. Also: end of epoch, `len`, two ranks
covering the epoch once, checkpoint -> drop the loader -> `load_state_dict` on a fresh one -> the rest of the
epoch, acknowledged consumption in `nb-serve ctl checkpoint`, BatchError for a corrupt chunk, TimeoutError for a
dead or stalled daemon, zero-copy arrays, the numpy backprojection, atomic checkpoint files and the CLI.

The torch and Lightning tests run where those are installed. Where they are not, they are skipped with the
reason "torch is not installed" and the run ends with a notice listing them (never a silent pass).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support
import loader_support as support

CLIENT_DIR = support.REPO_ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

import nbserve  # noqa: E402  (the working copy in clients/python)
from nbserve import _atomic  # noqa: E402
from nbserve.sampler import SamplerState  # noqa: E402

WAIT_S = 30



def really_installed(name: str) -> bool:
    """Whether the real package is installed. noisebase_oracle puts spec-less stand-ins for a missing torch
    into sys.modules (when test_loader.py is collected first); those do not count."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is None:
        return False
    return importlib.util.find_spec(name) is not None


HAVE_TORCH = really_installed("torch")
HAVE_LIGHTNING = HAVE_TORCH and really_installed("lightning")
NO_TORCH = "torch is not installed (pip install torch to run the nbserve.torch tests)"
NO_LIGHTNING = ("torch is not installed (pip install torch lightning to run the nbserve.lightning tests)"
                if not HAVE_TORCH else "lightning is not installed (pip install lightning to run it)")
requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason=NO_TORCH)
requires_lightning = pytest.mark.skipif(not HAVE_LIGHTNING, reason=NO_LIGHTNING)

_NOT_RUN: list[str] = []


class _TorchNotice:
    """Ends the terminal report with the torch / Lightning tests of this file that did not run."""

    def pytest_runtest_logreport(self, report):
        if report.skipped and report.when == "setup" and "/test_client" in report.nodeid:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if "not installed" in reason:
                _NOT_RUN.append(report.nodeid.split("/")[-1])

    def pytest_terminal_summary(self, terminalreporter):
        if _NOT_RUN:
            terminalreporter.write_sep("!", "nbserve torch / Lightning tests NOT RUN", yellow=True, bold=True)
            terminalreporter.write_line(
                f"torch{'' if HAVE_TORCH else ' is not installed'}"
                f"{'' if HAVE_LIGHTNING or not HAVE_TORCH else ', lightning is not installed'}: "
                f"{len(_NOT_RUN)} tests of Tests/conformance/test_client*.py were not run:")
            for name in _NOT_RUN:
                terminalreporter.write_line(f"  {name}")
            terminalreporter.write_line("install torch and lightning and run the suite again to run them")


@pytest.fixture(scope="session", autouse=True)
def _torch_notice(request):
    if not request.config.pluginmanager.has_plugin("nbserve-torch-notice"):
        request.config.pluginmanager.register(_TorchNotice(), "nbserve-torch-notice")


# ----------------------------------------------------------------------------------------------------------
# Dataset, daemons, oracle

# 8 sequences of 4 frames, val_split 0.25: 2 validation sequences (one group of 2), 6 training ones (three
# groups of 2, i.e. 12 batches an epoch; with two ranks, three groups of 1 on each).
FRAMES = 4
BATCH = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("client-data")
    return support.generate_dataset(
        root, "client", sequences=8, frames=FRAMES, crop=16, samples=4, height=48, width=80, seed=3,
        reference_samples=4, loader={"batch_size": BATCH, "val_split": 0.25, "samples": 4})


def nb_config(dataset) -> dict:
    """noisebase's loader config, as a trainer passes it (gives the `file` key and the sampler geometry)."""
    return {key: dataset.config[key] for key in ("src", "data_path", "batch_size")}


Daemon = daemon_support.DaemonProcess
daemon_config = daemon_support.daemon_config


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory()


@pytest.fixture(scope="module")
def shared_daemon(binary, dataset, tmp_path_factory):
    """One daemon for the tests that only read streams (each test closes its loaders)."""
    # Tests keep whole epochs; over shared memory each kept batch holds one of the rank's leases.
    daemon = Daemon(binary, daemon_config(dataset, tmp_path_factory.mktemp("shared"), leases=64))
    yield daemon
    daemon.stop(signal.SIGKILL)


def oracle_epoch(config: dict, stage: str, epoch: int, *, world_size=1, rank=0, state=None) -> list[dict]:
    """noisebase's own batches of one epoch (numpy, collated by its collate_fixes)."""
    loader = support.build_oracle(config, stage=stage, world_size=world_size, rank=rank,
                                  start_epoch=state and state["start_epoch_idx"],
                                  start_sequence=state and state["start_sequence_idx"])
    batches = []
    for number in range(len(support.oracle_index_batches(loader, epoch))):
        batches.append(support.oracle_batch(loader, epoch, number))
    return batches


def assert_equal_to_noisebase(actual: dict, expected: dict, where: str, with_file: bool = True):
    """Same keys in the same order and nesting, noisebase's `file` (given noisebase's config), and
    test_loader.py's tolerances."""
    keys = [key for key in expected if with_file or key != "file"]
    assert list(actual) == keys, f"{where}: keys {list(actual)} != noisebase's {keys}"
    assert list(actual["prev_camera"]) == list(expected["prev_camera"]), where
    if with_file:
        assert actual["file"] == list(expected["file"]), where
    flat_actual = support.flatten_batch(actual)
    flat_expected = support.flatten_batch(expected)
    problems = support.compare_batch(flat_actual, flat_expected, where, support.ErrorLog())
    assert not problems, "\n".join(problems)
    assert isinstance(actual["frame_index"], np.ndarray) and actual["frame_index"].shape == ()
    assert actual["frame_index"].dtype == np.int64


def assert_epoch_equals_noisebase(actual: list, expected: list, where: str, with_file: bool = True):
    assert len(actual) == len(expected), f"{where}: {len(actual)} batches, noisebase {len(expected)}"
    for number, (a, b) in enumerate(zip(actual, expected)):
        assert_equal_to_noisebase(a, b, f"{where} batch {number}", with_file)


def digest(batch: dict) -> str:
    """A fingerprint of a batch's tensors, for comparing nb-serve with nb-serve (not with noisebase, whose
    computed keys differ in the last bits: those comparisons go through assert_equal_to_noisebase)."""
    hasher = hashlib.sha256()
    for name, value in sorted(support.flatten_batch(batch).items()):
        hasher.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    return hasher.hexdigest()


def epoch_digests(loader) -> list[str]:
    return [digest(batch) for batch in loader]


def as_numpy(batch: dict) -> dict:
    """A torch batch as numpy (views of the same memory)."""
    return {key: ({k: v.numpy() for k, v in value.items()} if isinstance(value, dict)
                  else value if isinstance(value, list) else value.numpy()) for key, value in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# Streams equal noisebase's loader


TRANSPORTS = ["shm", "zmq"]  # what the tests below are run over (test_client_shm.py has the rest of shm's)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stage", ["train", "val"])
def test_epochs_equal_noisebase_batch_for_batch(shared_daemon, dataset, stage, transport):
    # The daemon's whole YAML (noisebase's keys and serve:) passed as it is, as a switched trainer may.
    config = {**shared_daemon.config, "stage": stage}
    with nbserve.Loader(shared_daemon.control, timeout=WAIT_S, transport=transport, **config) as loader:
        assert loader.transport == transport
        for epoch in (0, 1):  # counted like noisebase: the second iteration is epoch 1
            expected = oracle_epoch(dataset.config, stage, epoch)
            assert len(loader) == len(expected) > 0
            received = 0
            for number, batch in enumerate(loader):
                assert number < len(expected), "more batches than noisebase's epoch"
                assert loader.last_header["epoch"] == epoch
                assert_equal_to_noisebase(batch, expected[number], f"{stage} epoch {epoch} batch {number}")
                received += 1
            assert received == len(expected), "the epoch ended early"
            assert loader.batch_sampler.epoch_idx == epoch + 1
            status = shared_daemon.rank_status()[stage]
            assert (status["epoch"], status["consumed"]) == (epoch, len(expected))


def test_get_epoch_overrides_the_count_and_len_is_the_daemons(shared_daemon, dataset, binary):
    with nbserve.Loader(shared_daemon.control, get_epoch=lambda: 5, **nb_config(dataset)) as loader:
        plan = support.nb_plan(binary, shared_daemon.config_path, epoch=5)
        assert len(loader) == len(plan) == 3 * FRAMES
        batches = list(loader)
        assert_epoch_equals_noisebase(batches, oracle_epoch(dataset.config, "train", 5), "epoch 5")
        assert [digest(batch) for batch in loader] == [digest(batch) for batch in batches]  # epoch 5 again


def test_arrays_wrap_the_received_frames_without_copying(shared_daemon, dataset):
    with nbserve.Loader(shared_daemon.control, transport="zmq", **nb_config(dataset)) as loader:
        batch = next(iter(loader))
        arrays = dict(support.flatten_batch(batch))
        arrays["frame_index"] = batch["frame_index"]
        addresses = set()
        for name, array in arrays.items():
            assert isinstance(array, np.ndarray), name
            assert not array.flags.owndata, f"{name} owns its data: it was copied"
            base = array
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview), f"{name} is not a view of a buffer"
            assert isinstance(base.obj, zmq.Frame), f"{name} does not wrap a received ZeroMQ frame"
            addresses.add(id(base.obj))
        assert len(addresses) == len(arrays), "each tensor has its own frame"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("taken, configured", [(3, True), (6, False)],
                         ids=["first-group", "second-group-without-config"])
def test_validation_mid_epoch_then_training_continues_exactly(shared_daemon, dataset, taken, configured, transport):
    config = nb_config(dataset) if configured else {}
    train = nbserve.Loader(shared_daemon.control, "train", get_epoch=lambda: 0, transport=transport, **config)
    val = nbserve.Loader(shared_daemon.control, "val", get_epoch=lambda: 0, transport=transport, **config)
    try:
        assert (train.transport, val.transport) == (transport, transport)
        assert train._channel is val._channel, "a second PULL socket on a rank endpoint would split the stream"
        expected_train = epoch_digests(train)
        expected_val = list(val)
        assert_epoch_equals_noisebase(expected_val, oracle_epoch(dataset.config, "val", 0), "val epoch 0",
                                      with_file=configured)
        iterator = iter(train)
        head = [digest(next(iterator)) for _ in range(taken)]
        train_stream = shared_daemon.rank_status()["train"]["stream"]
        deadline = time.monotonic() + WAIT_S
        while shared_daemon.rank_status()["train"]["sent"] <= taken:  # more of it is on its way
            assert time.monotonic() < deadline, "the daemon sent no training batch ahead"
        # Validation in the middle of the training epoch: the daemon keeps the train stream where it is; what
        # of it was already on its way arrives before validation's batches and is kept aside by the client...
        assert epoch_digests(val) == [digest(b) for b in expected_val]
        assert train._channel.kept["train"], "no training batch was kept aside during validation"
        # ...and the train iterator goes on where it was, on the same stream (nothing asked for again).
        assert head + [digest(b) for b in iterator] == expected_train
        status = shared_daemon.rank_status()["train"]
        assert (status["stream"], status["consumed"]) == (train_stream, len(expected_train))
        # Abandoned mid-epoch and a new iteration of the same (stage, epoch): from the start, exact.
        iterator = iter(train)
        assert [digest(next(iterator)) for _ in range(2)] == expected_train[:2]
        assert epoch_digests(train) == expected_train
        # The abandoned iterator, resumed, still goes on where it was (its stream was replaced: it asks for the
        # rest of the epoch from its sequence group's start and passes over what it already yielded).
        assert digest(next(iterator)) == expected_train[2]
        iterator.close()
    finally:
        train.close()
        val.close()


def test_channel_follows_docs_protocol_section_6(tmp_path):
    """The reader rules of docs/protocol.md section 6, on real sockets with messages written as that section
    specifies: per stage, the stream id of the latest `epoch` reply is current; its messages are delivered, or
    kept aside in order while the other stage is read; any other id is stale and dropped; a gap in a stream's
    batch indices is a protocol error."""
    context = zmq.Context.instance()
    control, push = context.socket(zmq.REP), context.socket(zmq.PUSH)
    control.bind(f"ipc://{tmp_path}/control.sock")
    push.bind(f"ipc://{tmp_path}/rank0.sock")
    ids = {"train": 1796186412000001, "val": 1796186412000002}

    def answer_epoch():
        request = control.recv_json()
        control.send_json({"ok": True, "stream": ids[request["stage"]], "batches": 4, "resumed_from": None})

    def send(stage, batch=None, stream=None, kind="batch"):
        header = {"v": 1, "type": kind, "stream": stream or ids[stage], "stage": stage, "epoch": 0}
        if kind == "end":
            header["batches"] = 4
        else:
            header.update(batch=batch, frame_index=batch, rank=0, world_size=1, sequences=[batch], orientations=[7],
                          tensors=[])
        push.send_json(header)

    client = nbserve.ControlClient(f"ipc://{tmp_path}/control.sock", timeout=WAIT_S)
    channel = nbserve._transport.Channel.acquire(f"ipc://{tmp_path}/rank0.sock")
    try:
        thread = threading.Thread(target=answer_epoch)
        thread.start()
        train = channel.begin(client, {"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0})
        thread.join()
        send("train", 0, stream=ids["train"] - 7)  # an abandoned stream's
        send("train", 0)
        send("train", 1)
        thread = threading.Thread(target=answer_epoch)
        thread.start()
        val = channel.begin(client, {"cmd": "epoch", "rank": 0, "stage": "val", "epoch": 0})
        thread.join()
        send("train", 2)  # on its way when validation was asked for
        send("val", 0, stream=ids["val"] + 99)  # a daemon's since restarted
        send("val", 0)
        send("val", kind="end")
        send("train", 3)
        send("train", 5)
        received = [channel.receive(val, WAIT_S)[0] for _ in range(2)]
        assert [(h["type"], h.get("batch")) for h in received] == [("batch", 0), ("end", None)]
        assert [h["batch"] for h, _ in channel.kept["train"]] == [0, 1, 2]
        assert [channel.receive(train, WAIT_S)[0]["batch"] for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(nbserve.ProtocolError, match="expected batch 4, received batch 5"):
            channel.receive(train, WAIT_S)
    finally:
        channel.release()
        client.close()
        control.close(linger=0)
        push.close(linger=0)


def test_two_ranks_receive_the_whole_epoch_once(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_config(dataset, tmp_path, world_size=2))
    seen = []
    for rank in (0, 1):
        with nbserve.Loader(daemon.control, rank=rank, world_size=2, **nb_config(dataset)) as loader:
            expected = oracle_epoch(dataset.config, "train", 0, world_size=2, rank=rank)
            assert len(loader) == len(expected) == 3 * FRAMES
            received = 0
            for number, batch in enumerate(loader):
                assert_equal_to_noisebase(batch, expected[number], f"rank {rank} batch {number}")
                assert len(loader.last_header["sequences"]) == BATCH // 2
                seen += [(sequence, int(batch["frame_index"])) for sequence in loader.last_header["sequences"]]
                received += 1
            assert received == len(expected)
    whole = oracle_epoch(dataset.config, "train", 0)  # world size 1: the whole epoch
    train_sequences = {int(Path(f).stem[len("scene"):]) for batch in whole for f in batch["file"]}
    assert sorted(seen) == sorted((s, f) for s in train_sequences for f in range(FRAMES)), \
        "the two ranks together must cover every training sequence's every frame exactly once"


def test_rank_and_world_size_must_match_the_daemon(binary, dataset, daemons, tmp_path):
    both = daemons(binary, daemon_config(dataset, tmp_path / "both", world_size=2))
    with pytest.raises(nbserve.DaemonError, match="world size of 2"):
        nbserve.Loader(both.control)
    only_one = daemons(binary, daemon_config(dataset, tmp_path / "one", world_size=2, ranks=[1]))
    with pytest.raises(nbserve.DaemonError, match=r"does not serve rank 0 \(it serves ranks \[1\]"):
        nbserve.Loader(only_one.control, rank=0, world_size=2)
    with nbserve.Loader(only_one.control, rank=1, world_size=2) as loader:
        assert loader.endpoint == f"ipc://{tmp_path / 'one'}/rank1.sock"
    with pytest.warns(UserWarning, match="timeuot"):
        nbserve.Loader(only_one.control, rank=1, world_size=2, timeuot=1).close()  # a misspelt argument is named


# ----------------------------------------------------------------------------------------------------------
# The trainer's config against the daemon's


def test_every_served_key_the_trainer_passes_must_be_the_daemons(shared_daemon, dataset):
    """Each key of noisebase's config that decides the batches, changed, is refused with both values named;
    the daemon's own values and extra keys are accepted."""
    config = dataset.config
    nbserve.Loader(shared_daemon.control, **config).close()
    changes = {
        "batch_size": (4, "batch_size: the trainer's is 4, the daemon serves 2"),
        "seed": (config.get("seed", 42) + 1, "seed: "),
        "buffers": (["color"], "buffers: the trainer's is ['color'], the daemon serves"),
        "samples": (2, "samples: the trainer's is 2, the daemon serves 4"),
        "val_split": (0.5, "val_split: the trainer's is 0.5, the daemon serves 0.25"),
        "shuffle": (False, "shuffle: the trainer's is False, the daemon serves True"),
        "drop_last": (False, "drop_last: the trainer's is False, the daemon serves True"),
        "flip_rotate": (False, "flip_rotate: the trainer's is False, the daemon serves True"),
    }
    for key, value in config["src"].items():
        other = value + "x" if isinstance(value, str) else value * 2
        changes[f"src.{key}"] = (other, f"src.{key}: the trainer's is {other!r}, the daemon serves {value!r}")
    for key, (value, message) in changes.items():
        changed = {**config, "src": dict(config["src"])}
        if key.startswith("src."):
            changed["src"][key[4:]] = value
        else:
            changed[key] = value
        with pytest.raises(nbserve.ConfigMismatch, match=re.escape(message)):
            nbserve.Loader(shared_daemon.control, **changed)
    # The buffers' order does not matter to noisebase (it computes them in a fixed order).
    served = shared_daemon.request({"cmd": "status"})["config"]
    nbserve.Loader(shared_daemon.control, buffers=list(reversed(served["buffers"]))).close()


def test_the_sampler_geometry_is_the_daemons_whatever_the_trainer_passes(shared_daemon, dataset):
    """Only the daemon's frames_per_sequence and batch size give checkpoint positions; a trainer that passes
    none gets exact positions from batch 0 on."""
    with nbserve.Loader(shared_daemon.control, get_epoch=lambda: 0) as loader:
        assert (loader.batch_sampler.frames_per_sequence, loader.batch_sampler.batch_size) == (FRAMES, BATCH)
        reference = support.build_oracle(dataset.config, stage="train")
        for batch_idx, _ in enumerate(loader):
            assert loader.batch_sampler.checkpoint(0, batch_idx) == reference.batch_sampler.checkpoint(0, batch_idx)
            assert loader.state_dict() == reference.batch_sampler.cached_state
    with pytest.raises(nbserve.ConfigMismatch, match=r"src\.frames_per_sequence: the trainer's is 16"):
        nbserve.Loader(shared_daemon.control, src={**dataset.config["src"], "frames_per_sequence": 16})


def test_extra_config_keys_are_accepted(shared_daemon, dataset):
    """Keys noisebase's configs carry and users' own Hydra keys do not stop the loader; keys neither
    noisebase nor nb-serve reads are named in a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbserve.Loader(shared_daemon.control, **{**dataset.config, "metrics": ["psnr"], "persistent_workers": True,
                                                 "num_workers": 8}).close()
    with pytest.warns(UserWarning, match=r"\['my_lr', 'optimizer'\]"):
        loader = nbserve.Loader(shared_daemon.control, my_lr=0.1, optimizer={"name": "adam"}, **dataset.config)
    with loader:
        assert len(loader) == 3 * FRAMES


# ----------------------------------------------------------------------------------------------------------
# Checkpoint and resume


def test_sampler_checkpoint_is_noisebases_arithmetic():
    """SamplerState.checkpoint against noisebase's own VideoSampler.checkpoint, geometry configured."""
    video_sampler = support.oracle.import_noisebase().video_sampler
    for frames, batch_size, world in ((4, 2, 1), (4, 2, 2), (64, 8, 4), (1, 3, 1)):
        theirs = video_sampler.VideoSampler(batch_size, frames, 100)
        theirs.num_replicas, theirs.batch_size = world, batch_size // world
        ours = SamplerState(frames_per_sequence=frames, batch_size=batch_size // world, num_replicas=world)
        for epoch in (0, 3):
            for batch_idx in range(0, 3 * frames + 2):
                assert ours.checkpoint(epoch, batch_idx) == theirs.checkpoint(epoch, batch_idx)
                assert ours.cached_state == theirs.cached_state, (frames, batch_size, world, epoch, batch_idx)
    # load_state_dict as noisebase's loader: {} changes nothing; a state sets the epoch counter too.
    state = SamplerState(FRAMES, BATCH)
    state.load_state_dict({})
    assert (state.epoch_idx, state.resume_request()) == (0, None)
    state.load_state_dict({"start_epoch_idx": 3, "start_sequence_idx": 4})
    assert (state.epoch_idx, state.get_epoch()) == (3, 3)
    assert state.resume_request() == {"start_epoch_idx": 3, "start_sequence_idx": 4}


@pytest.mark.parametrize("configured", [True, False], ids=["with-noisebase-config", "without-config"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_checkpoint_drop_loader_resume_equals_uninterrupted(shared_daemon, dataset, configured, transport):
    config = {**(nb_config(dataset) if configured else {}), "transport": transport}
    with nbserve.Loader(shared_daemon.control, get_epoch=lambda: 0, **config) as uninterrupted:
        expected = epoch_digests(uninterrupted)
    reference = support.build_oracle(dataset.config, stage="train")
    first = nbserve.Loader(shared_daemon.control, **config)
    state = None
    for batch_idx, batch in enumerate(first):
        assert digest(batch) == expected[batch_idx]
        boundary = first.batch_sampler.checkpoint(0, batch_idx)
        assert boundary == reference.batch_sampler.checkpoint(0, batch_idx) == (batch_idx % FRAMES == 0)
        assert first.state_dict() == reference.batch_sampler.cached_state
        if batch_idx == 2 * FRAMES:
            state = first.state_dict()
            first.batch_sampler.cached_state = reference.batch_sampler.cached_state = {}
        if batch_idx == 2 * FRAMES + 2:
            break  # the trainer dies two batches after its checkpoint
    first.close()
    del first
    assert state == {"start_epoch_idx": 0, "start_sequence_idx": 2 * BATCH}

    second = nbserve.Loader(shared_daemon.control, **config)
    assert second.transport == transport
    second.load_state_dict(state)
    rest = list(second)
    assert [digest(batch) for batch in rest] == expected[2 * FRAMES:], "the resumed epoch is not the rest"
    # noisebase's loader after the same load_state_dict yields the same.
    assert_epoch_equals_noisebase(rest, oracle_epoch(dataset.config, "train", 0, state=state), "resumed",
                                  with_file=configured)
    # and the next epoch is whole again
    assert_epoch_equals_noisebase(list(second), oracle_epoch(dataset.config, "train", 1), "epoch 1",
                                  with_file=configured)
    second.close()


def test_ctl_checkpoint_reflects_acknowledged_consumption(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)

    def ctl_checkpoint() -> dict:
        result = support.run_ok(binary, "ctl", "--control", daemon.control, "checkpoint")
        return json.loads(result.stdout)["state"]

    with nbserve.Loader(daemon.control) as loader:
        iterator = iter(loader)
        for _ in range(FRAMES):
            next(iterator)
        # FRAMES batches received, FRAMES - 1 trained on (a batch counts once the next one is asked for), and
        # acknowledged by sequence group: none yet.
        assert daemon.rank_status()["train"]["consumed"] == 0
        assert ctl_checkpoint()["start_sequence_idx"] == 0
        next(iterator)
        assert daemon.rank_status()["train"]["consumed"] == FRAMES
        for _ in range(FRAMES - 1):
            next(iterator)
        assert daemon.rank_status()["train"]["consumed"] == FRAMES
        state = ctl_checkpoint()
        assert (state["start_epoch_idx"], state["start_sequence_idx"]) == (0, BATCH)
        for _ in iterator:
            pass
        assert daemon.rank_status()["train"]["consumed"] == 3 * FRAMES
        state = ctl_checkpoint()
        assert (state["start_epoch_idx"], state["start_sequence_idx"]) == (1, 0)


# ----------------------------------------------------------------------------------------------------------
# Faults


corrupt_first_chunk = daemon_support.corrupt_first_chunk


def test_corrupt_chunk_raises_batch_error_naming_file_array_chunk(binary, dataset, daemons, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset.root, copy)
    config = daemon_config(dataset, tmp_path, data_path=copy)
    victim = support.nb_plan(binary, config, epoch=0)[0]["sequences"][0]
    scene = copy / f"scene{victim:04d}.zip"
    key = corrupt_first_chunk(scene, "color")
    daemon = daemons(binary, config)

    with nbserve.Loader(daemon.control, timeout=WAIT_S) as loader:
        outcomes = []
        for attempt in range(2):
            good = []
            with pytest.raises(nbserve.BatchError) as raised:
                for batch in loader:
                    good.append(digest(batch))
            error = raised.value
            assert (error.file, error.array, error.chunk) == (str(scene), "color", key)
            assert error.reason and error.epoch == 0 and error.batch == len(good)
            assert str(scene) in str(error) and key in str(error) and "'color'" in str(error)
            outcomes.append((good, error.batch))
        # The epoch did not finish, so the next iteration asks for epoch 0 again and meets the same batch.
        assert outcomes[0] == outcomes[1]
        assert loader.batch_sampler.epoch_idx == 0
        assert daemon.request({"cmd": "status"})["ok"]


def test_a_daemon_that_does_not_come_back_raises_after_the_timeout(binary, dataset, daemons, tmp_path):
    """A daemon killed mid-epoch is waited for (it may be restarting) for `timeout` seconds, then the loader
    raises DaemonUnavailable saying how to start it: never a hang."""
    daemon = daemons(binary, daemon_config(dataset, tmp_path))
    loader = nbserve.Loader(daemon.control, timeout=1.0)
    iterator = iter(loader)
    next(iterator)
    daemon.stop(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(nbserve.DaemonUnavailable, match="did not come back within 1 s; start the daemon"):
        for _ in range(100):
            next(iterator)
    assert time.monotonic() - started < 5
    loader.close()


def test_no_daemon_fails_within_seconds_saying_how_to_start(binary, dataset, daemons, tmp_path):
    """With the default 60 s timeout: no socket file, a socket file a killed daemon left behind, and a tcp
    endpoint nobody listens on each fail at once or within the connection wait (1.5 s)."""
    killed = daemons(binary, daemon_config(dataset, tmp_path / "killed"))
    killed.stop(signal.SIGKILL)
    stale = killed.control
    assert Path(stale[len("ipc://"):]).exists(), "a daemon killed with SIGKILL leaves its socket file"
    with socket.socket() as probe:  # a free tcp port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for control, reason in ((f"ipc://{tmp_path}/nobody/control.sock", "there is no socket file"),
                            (stale, "nothing answers"), (f"tcp://127.0.0.1:{port}", "nothing answers")):
        started = time.monotonic()
        with pytest.raises(nbserve.DaemonUnavailable) as raised:
            nbserve.Loader(control)
        assert time.monotonic() - started < 3, control
        message = str(raised.value)
        assert "nb-serve is not running" in message and reason in message and control in message
        assert "nb-serve run --config" in message and "systemctl start nb-serve" in message


def test_stalled_stream_raises_timeout(binary, dataset, daemons, tmp_path):
    """The daemon answers, but no batch comes (its workers are stopped): TimeoutError, not a hang. The batches
    the daemon decoded ahead, before the workers stopped, come first."""
    daemon = daemons(binary, daemon_config(dataset, tmp_path))
    workers = [worker["pid"] for worker in daemon.request({"cmd": "status"})["workers"]]
    loader = nbserve.Loader(daemon.control, timeout=1.0)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        iterator = iter(loader)
        with pytest.raises(TimeoutError, match="no message from nb-serve"):
            for _ in range(3 * FRAMES):
                next(iterator)
        assert time.monotonic() - started < 5
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        loader.close()


# ----------------------------------------------------------------------------------------------------------
# backproject_pixel_centers


def backproject_reference(motion, crop_offset, prev_crop_offset, as_grid):
    """An independent transcription of noisebase/torch/projective.py's backproject_pixel_centers, pixel by
    pixel in float32, in the operation order of its expression:

        pixel_pos = pixel_grid + motion - prev_crop_offset[..., None, None] + crop_offset[..., None, None]
        as_grid:  xy = flip(pixel_pos, channels) + 0.5;  image_pos = xy / [width, height];  image_pos * 2 - 1

    where pixel_grid[0] is the row index i and pixel_grid[1] the column index j, and torch's type promotion
    turns the int32 offsets into float32 before they are subtracted / added."""
    f = np.float32
    n, _, height, width = motion.shape
    pos = np.empty((n, 2, height, width), np.float32)
    for b in range(n):
        for c in range(2):
            for i in range(height):
                for j in range(width):
                    grid = f(i) if c == 0 else f(j)
                    value = f(grid + motion[b, c, i, j])
                    value = f(value - f(prev_crop_offset[b, c]))
                    pos[b, c, i, j] = f(value + f(crop_offset[b, c]))
    if not as_grid:
        return pos
    out = np.empty((n, height, width, 2), np.float32)
    for b in range(n):
        for i in range(height):
            for j in range(width):
                x = f(pos[b, 1, i, j] + f(0.5))
                y = f(pos[b, 0, i, j] + f(0.5))
                out[b, i, j, 0] = f(f(f(x / f(width)) * f(2)) - f(1))
                out[b, i, j, 1] = f(f(f(y / f(height)) * f(2)) - f(1))
    return out


def backproject_inputs():
    rng = np.random.default_rng(7)
    motion = (rng.standard_normal((2, 2, 5, 7)) * 3).astype(np.float32)
    crop = rng.integers(-40, 200, (2, 2)).astype(np.int32)
    prev = rng.integers(-40, 200, (2, 2)).astype(np.int32)
    return motion, crop, prev


@pytest.mark.parametrize("as_grid", [False, True])
def test_backproject_pixel_centers_np_equals_noisebases_formula(as_grid):
    motion, crop, prev = backproject_inputs()
    ours = nbserve.backproject_pixel_centers_np(motion, crop, prev, as_grid=as_grid)
    expected = backproject_reference(motion, crop, prev, as_grid)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert ours.tobytes() == expected.tobytes()


def test_backproject_on_a_served_batch(shared_daemon, dataset):
    with nbserve.Loader(shared_daemon.control, get_epoch=lambda: 0) as loader:
        batches = list(loader)
    batch = batches[1]  # frame 1: real motion
    motion = np.ascontiguousarray(batch["motion"][..., 0])
    grid = nbserve.backproject_pixel_centers_np(motion, batch["crop_offset"], batch["prev_camera"]["crop_offset"],
                                                as_grid=True)
    assert grid.shape == (BATCH, 16, 16, 2) and grid.dtype == np.float32
    expected = backproject_reference(motion, batch["crop_offset"], batch["prev_camera"]["crop_offset"], True)
    assert grid.tobytes() == expected.tobytes()


# ----------------------------------------------------------------------------------------------------------
# Atomic checkpoint files (what MidepochCheckpoint writes with), the CLI, packaging


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "last.ckpt"
    target.parent.mkdir()
    target.write_bytes(b"old checkpoint")

    def crashing(path):
        with open(path, "wb") as fh:
            fh.write(b"half a new checkp")
        raise KeyboardInterrupt("killed during the save")

    with pytest.raises(KeyboardInterrupt):
        _atomic.atomic_write(str(target), crashing)
    assert target.read_bytes() == b"old checkpoint"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    _atomic.atomic_write(str(target), lambda path: Path(path).write_bytes(b"new checkpoint"))
    assert target.read_bytes() == b"new checkpoint"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert synced[0].endswith(".last.ckpt.nbserve-tmp"), "the new file is synced before the rename"
    assert synced[-1] == str(target.parent), "the directory is synced after the rename"

    # A non-owning rank only takes part in the write.
    _atomic.atomic_write(str(target), lambda path: None, commit_here=False)
    assert target.read_bytes() == b"new checkpoint"


def test_cli_status_and_pull(shared_daemon, tmp_path):
    # A PULL socket still open in this process would take every other batch from the CLI's.
    assert not [key for key in nbserve._transport.Channel._registry if "shared" in key[1]], "a loader was not closed"
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR)}

    def nbserve_cli(*args, timeout=WAIT_S):
        return subprocess.run([sys.executable, "-m", "nbserve", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)

    status = nbserve_cli("status", "--control", shared_daemon.control)
    assert status.returncode == 0, status.stderr
    assert "world size 1" in status.stdout and "rank 0 on ipc://" in status.stdout
    assert "worker" in status.stdout
    pulled = nbserve_cli("pull", "--control", shared_daemon.control, "--batches", "15")
    assert pulled.returncode == 0, pulled.stderr
    assert re.search(r"^  color +<f4 +\[2, 3, 16, 16, 4\]$", pulled.stdout, re.M), pulled.stdout
    assert re.search(r"^  prev_camera\.crop_offset +<i4 +\[2, 2\]$", pulled.stdout, re.M), pulled.stdout
    assert "15 batches, 30 frames" in pulled.stdout and "frames/s" in pulled.stdout
    # A puller of six batches of one epoch reported the first group's waits with its ack: the status says the
    # stream's stall.
    assert nbserve_cli("pull", "--control", shared_daemon.control, "--batches", "6", "--epoch", "0").returncode == 0
    after = nbserve_cli("status", "--control", shared_daemon.control)
    assert "consumed" in after.stdout, after.stdout
    assert re.search(r"; trainer waited \d+\.\d\d s, busy \d+\.\d\d s: stall \d+\.\d%$", after.stdout, re.M), after.stdout
    as_json = json.loads(nbserve_cli("status", "--control", shared_daemon.control, "--json").stdout)
    assert as_json["ok"] and as_json["world_size"] == 1
    missing = nbserve_cli("status", "--control", f"ipc://{tmp_path}/nobody.sock")
    assert missing.returncode == 1 and "nb-serve is not running" in missing.stderr and "nb-serve run" in missing.stderr


def test_pip_installs_the_typed_client_with_one_version(tmp_path):
    """`pip install ./clients/python` builds with flit-core (no download when flit-core is installed: CI's
    setup installs it) into a typed package whose metadata version is nbserve.__version__."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available to this interpreter")
    assert importlib.util.find_spec("flit_core") is not None, \
        "flit_core is not installed (scripts/setup.sh installs it; pip install flit_core)"
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(CLIENT_DIR)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("loader.py", "torch.py", "lightning.py", "py.typed"):
        assert (target / "nbserve" / name).exists(), name
    check = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m, nbserve; d = m.distribution('nbserve'); "
         "print(nbserve.__file__); print(d.version); print(d.requires); "
         "print([e.value for e in d.entry_points])"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    where, version, requires, scripts = check.stdout.splitlines()
    assert where.startswith(str(target))
    assert version == nbserve.__version__
    assert "pyzmq>=22" in requires and "numpy>=1.22" in requires and "extra == \"lightning\"" in requires
    assert scripts == "['nbserve.__main__:main']"


def test_every_function_of_the_client_is_annotated():
    """py.typed promises types: every function and method (public or not) annotates its arguments and its
    return."""
    import ast

    missing = []
    for path in sorted((CLIENT_DIR / "nbserve").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                unannotated = [a.arg for a in arguments if a.annotation is None and a.arg not in ("self", "cls")]
                unannotated += [f"*{a.arg}" for a in (node.args.vararg, node.args.kwarg) if a and a.annotation is None]
                if node.returns is None or unannotated:
                    missing.append(f"{path.name}:{node.lineno} {node.name} {unannotated or 'return'}")
    assert (CLIENT_DIR / "nbserve" / "py.typed").exists()
    assert not missing, "\n".join(missing)


# ----------------------------------------------------------------------------------------------------------
# torch and Lightning (run where installed; otherwise skipped and listed at the end of the run)


@requires_torch
def test_torch_loader_yields_noisebases_tensors_without_copying(shared_daemon, dataset):
    import torch
    from nbserve.torch import TrainingSampleLoader_v1

    loader = TrainingSampleLoader_v1(shared_daemon.control, get_epoch=lambda: 0, pin_memory=False,
                                     **nb_config(dataset))
    expected = oracle_epoch(dataset.config, "train", 0)
    assert len(loader) == len(expected)
    count = 0
    for number, batch in enumerate(loader):
        assert isinstance(batch["color"], torch.Tensor) and isinstance(batch["prev_camera"]["crop_offset"], torch.Tensor)
        assert batch["frame_index"].dtype == torch.int64 and batch["frame_index"].dim() == 0
        assert batch["color"].dtype == torch.float32 and batch["crop_offset"].dtype == torch.int32
        if number == 0:
            # torch.from_numpy over the frame: the tensor's memory is the numpy view's, which is the frame's
            assert batch["color"].data_ptr() == batch["color"].numpy().__array_interface__["data"][0]
            assert not batch["color"].numpy().flags.owndata
        assert_equal_to_noisebase(as_numpy(batch), expected[number], f"torch batch {number}")
        count += 1
    assert count == len(expected)
    loader.close()


@requires_torch
def test_torch_checkpoint_state_dict_resume(shared_daemon, dataset):
    from nbserve.torch import TrainingSampleLoader_v1

    expected = oracle_epoch(dataset.config, "train", 0)
    first = TrainingSampleLoader_v1(shared_daemon.control, pin_memory=False, **nb_config(dataset))
    for batch_idx, _ in enumerate(first):
        if first.batch_sampler.checkpoint(0, batch_idx) and batch_idx == FRAMES:
            state = first.state_dict()
            first.batch_sampler.cached_state = {}
            break
    first.close()
    assert state == {"start_epoch_idx": 0, "start_sequence_idx": BATCH}
    second = TrainingSampleLoader_v1(shared_daemon.control, pin_memory=False, device="cpu", **nb_config(dataset))
    second.load_state_dict(state)
    rest = [as_numpy(batch) for batch in second]
    assert_epoch_equals_noisebase(rest, expected[FRAMES:], "resumed torch epoch")
    second.close()


@requires_torch
@pytest.mark.parametrize("as_grid", [False, True])
def test_torch_backproject_equals_noisebase(as_grid):
    import torch
    from nbserve.torch import backproject_pixel_centers

    support.oracle.import_noisebase()  # noisebase itself, with stand-ins for what is missing (hydra, ...)
    import noisebase.torch.projective as projective

    motion, crop, prev = backproject_inputs()
    args = (torch.from_numpy(motion), torch.from_numpy(crop), torch.from_numpy(prev))
    theirs = projective.backproject_pixel_centers(*args, as_grid=as_grid)
    ours = backproject_pixel_centers(*args, as_grid=as_grid)
    assert torch.equal(ours, theirs)
    assert nbserve.backproject_pixel_centers_np(motion, crop, prev, as_grid=as_grid).tobytes() == theirs.numpy().tobytes()


@requires_torch
def test_example_train_ddp_runs_two_gloo_ranks(binary, dataset, tmp_path):
    config = support.merged_config(dataset.config, {"num_workers": 2})
    config["serve"] = {"world_size": 1, "endpoint": "tcp://127.0.0.1:{5560+rank}"}
    path = support.write_config(tmp_path / "example.yaml", config)
    result = subprocess.run(
        [sys.executable, str(support.REPO_ROOT / "examples" / "train_ddp.py"), "--config", str(path),
         "--nb-serve", str(binary), "--steps", "6", "--runtime-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "rank 0 step 5" in result.stdout and "rank 1 step 5" in result.stdout
    assert "parameters agree across ranks" in result.stdout


@requires_torch
def test_example_finds_nb_serve_on_path_or_in_the_release_build_or_says_what_to_do(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_ddp_example", support.REPO_ROOT / "examples" / "train_ddp.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.delenv("NB_SERVE", raising=False)
    checkout = tmp_path / "checkout"
    monkeypatch.setattr(example, "REPO", checkout)
    on_path = tmp_path / "bin" / "nb-serve"
    release = checkout / ".build" / "release" / "nb-serve"
    for binary in (on_path, release):
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{on_path.parent}:/usr/bin:/bin")
    assert example.find_nb_serve() == str(on_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert example.find_nb_serve() == str(release)
    release.unlink()
    with pytest.raises(SystemExit, match=r"nb-serve was not found.*swift build -c release --product nb-serve"):
        example.find_nb_serve()
    monkeypatch.setenv("NB_SERVE", "/opt/nb-serve")
    assert example.find_nb_serve() == "/opt/nb-serve"


@requires_lightning
def test_lightning_midepoch_checkpoint_resumes_exactly(shared_daemon, dataset, tmp_path):
    import lightning as L
    import torch
    from nbserve.lightning import MidepochCheckpoint, TrainingSampleLoader_v1

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 3, 1)
            self.seen, self.validated = [], []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, digest(as_numpy(batch))))
            color = batch["color"].mean(-1)
            return torch.nn.functional.mse_loss(self.net(color), batch["reference"])

        def validation_step(self, batch, batch_idx):
            self.validated.append((self.current_epoch, self.global_step, batch_idx))
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch["color"].mean(-1)), batch["reference"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def trainer(directory, epochs, save_top_k=-1, save_last=False):
        checkpoint = MidepochCheckpoint(dirpath=directory, every_n_train_steps=3, save_top_k=save_top_k,
                                        save_last=save_last, filename="{epoch}-{step}")
        # Validation also in the middle of each training epoch (after 6 of its 12 batches): the daemon streams
        # one epoch per rank, so the train stream is interrupted and continued.
        return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoint],
                         val_check_interval=6), checkpoint

    data = lambda: TrainingSampleLoader_v1(shared_daemon.control, pin_memory=False, **nb_config(dataset))
    whole_model = Tiny()
    whole, _ = trainer(tmp_path / "whole", 2)
    whole.fit(whole_model, datamodule=data())
    expected = {(e, b): d for e, b, d in whole_model.seen}
    assert len(expected) == 2 * 3 * FRAMES
    # validated mid-epoch (after step 6 of each epoch) and at each epoch's end, one val group of FRAMES each
    assert sorted({(e, step) for e, step, _ in whole_model.validated}) == [(0, 6), (0, 12), (1, 18), (1, 24)]
    assert len(whole_model.validated) == 4 * FRAMES
    with nbserve.Loader(shared_daemon.control) as reference:
        assert [d for _, _, d in whole_model.seen] == epoch_digests(reference) + epoch_digests(reference)

    # Saves fall due every 3 steps but wait for a sequence boundary (every FRAMES batches).
    files = sorted((tmp_path / "whole").glob("*.ckpt"))
    assert files and not list((tmp_path / "whole").glob(".*nbserve-tmp*"))
    mid_epoch = []
    for path in files:
        checkpoint = torch.load(path, weights_only=False)
        states = checkpoint["loops"]["fit_loop"]["state_dict"].get("combined_loader", [{}])
        state = states[0]
        if state:
            batch_idx = state["start_sequence_idx"] // BATCH * FRAMES
            assert checkpoint["global_step"] == state["start_epoch_idx"] * 3 * FRAMES + batch_idx, path.name
            mid_epoch.append((path, state))
    assert mid_epoch, f"no mid-epoch checkpoint among {[f.name for f in files]}"

    path, state = mid_epoch[0]
    resumed_model = Tiny()
    # This time keeping only the newest file and last.ckpt: both fall due at the same steps.
    resumed, _ = trainer(tmp_path / "resumed", 2, save_top_k=1, save_last=True)
    resumed.fit(resumed_model, datamodule=data(), ckpt_path=str(path))
    first_batch = state["start_sequence_idx"] // BATCH * FRAMES
    assert resumed_model.seen[0][:2] == (state["start_epoch_idx"], first_batch)
    assert [(e, b, d) for e, b, d in resumed_model.seen] == [
        (e, b, expected[(e, b)]) for e, b in sorted(expected) if (e, b) >= (state["start_epoch_idx"], first_batch)]
    # Older files were removed only after newer ones were on disk; both deferred saves were made (noisebase's
    # callback keeps one pending path, so last.ckpt would have replaced the top-k save).
    kept = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert kept == ["epoch=1-step=24.ckpt", "last.ckpt"], kept
    for name in kept:
        assert torch.load(tmp_path / "resumed" / name, weights_only=False)["global_step"] == 24
