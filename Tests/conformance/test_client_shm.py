"""The Python client (nbserve) over the shared-memory transport (docs/protocol.md section 7), against real daemons:
batches as read-only views of the daemon's memory, equal to `nb-serve dump` and to the ZeroMQ transport; what a
trainer keeps stays its own (and is visible in the daemon's `held_leases`) until it lets go; crashes on either
side; the choice between the transports; `python -m nbserve bench`.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import daemon_support
import loader_support as support
from test_client import HAVE_TORCH, _torch_notice, requires_torch  # noqa: F401  (the NOT RUN notice)
from test_daemon import dumped

CLIENT_DIR = support.REPO_ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

import nbserve  # noqa: E402  (the working copy in clients/python)
from nbserve._shm import _View  # noqa: E402

WAIT_S = daemon_support.WAIT_S
FRAMES = 4


@pytest.fixture(scope="module")
def binary() -> Path:
    return support.require_binary()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("client-shm-data")
    return support.generate_dataset(
        root, "clientshm", sequences=6, frames=FRAMES, crop=16, samples=4, height=48, width=80, seed=7,
        reference_samples=4, loader={"batch_size": 2, "val_split": 0.34, "samples": 4})


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory()


def tensors(batch: dict) -> dict:
    """{'prev_camera.KEY': array or tensor, ...} (the `file` list dropped)."""
    out = {}
    for key, value in batch.items():
        if key == "file":
            continue
        for sub, item in (value.items() if isinstance(value, dict) else [(None, value)]):
            out[key if sub is None else f"{key}.{sub}"] = item
    return out


def flat(batch: dict) -> dict[str, np.ndarray]:
    """tensors(batch) as numpy arrays (torch tensors as views of the same memory)."""
    return {name: value if isinstance(value, np.ndarray) else value.numpy() for name, value in tensors(batch).items()}


def digest(batch: dict) -> str:
    import hashlib
    hasher = hashlib.sha256()
    for name, array in sorted(flat(batch).items()):
        hasher.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()


def zmq_digests(control: str, epoch: int = 0) -> list[str]:
    with nbserve.Loader(control, get_epoch=lambda: epoch, transport="zmq", timeout=WAIT_S) as loader:
        return [digest(batch) for batch in loader]


def await_held(daemon, expected: int, rank: int = 0) -> dict:
    """The rank's status once the daemon reports `expected` held leases (releases are asynchronous)."""
    deadline = time.monotonic() + WAIT_S
    while (status := daemon.rank_status(rank))["held_leases"] != expected:
        assert time.monotonic() < deadline, f"held_leases stays {status['held_leases']}, expected {expected}"
        time.sleep(0.02)
    return status


def shm_view(value) -> bool:
    """Whether a numpy array is a read-only view of the daemon's shared memory (never a copy), or a torch
    tensor lies in it."""
    if not isinstance(value, np.ndarray):
        return any(s.address <= value.data_ptr() < s.address + s.size for s in _sessions())
    base = value
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, _View) and not value.flags.owndata and not value.flags.writeable


def _sessions():
    from nbserve._transport import Channel
    return [channel.session for channel in Channel._registry.values() if channel.session is not None]


# ----------------------------------------------------------------------------------------------------------
# Bytes


def test_every_batch_over_shared_memory_equals_dump_and_the_zmq_transport(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    shm_before = set(os.listdir("/dev/shm"))
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S) as loader:
        assert loader.transport == "shm"
        status = daemon.rank_status()
        assert status["shm_session"] and status["transport"] == "zmq"  # no shm stream asked for yet
        numbers = []
        for batch in loader:
            assert isinstance(batch, nbserve.Batch)
            assert daemon.rank_status()["transport"] == "shm"
            number = loader.last_header["batch"]
            numbers.append(number)
            reference = dumped(binary, config, tmp_path, epoch=0, batch=number)
            arrays = flat(batch)
            assert set(arrays) == set(reference)
            for name, array in arrays.items():
                assert shm_view(array), f"{name} is not a read-only view of the shared memory"
                assert array.dtype == reference[name].dtype and array.shape == reference[name].shape, name
                assert array.tobytes() == reference[name].tobytes(), (number, name)
        assert numbers == list(range(len(loader))) and numbers
        del batch, arrays, array  # the loop's variables referenced the last batch
        await_held(daemon, 0)
        # `nb-serve ctl status` shows the rank's transport and what it holds.
        ctl = json.loads(support.run_ok(binary, "ctl", "status", "--control", daemon.control, "--json").stdout)
        rank = next(r for r in ctl["ranks"] if r["rank"] == 0)
        assert (rank["transport"], rank["held_leases"]) == ("shm", 0)
        shared = [digest(batch) for batch in loader]  # epoch 0 again
    assert zmq_digests(daemon.control, 0) == shared
    assert set(os.listdir("/dev/shm")) == shm_before, "something was named in /dev/shm"


# ----------------------------------------------------------------------------------------------------------
# Lifetime


@pytest.mark.parametrize("kind", ["numpy", pytest.param("torch", marks=requires_torch)])
def test_a_kept_batch_keeps_its_bytes_while_the_epoch_goes_on(binary, dataset, daemons, tmp_path, kind):
    # Few leases and little prefetch: the daemon reuses every other buffer many times during the epoch.
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path, prefetch=1, leases=3))
    reference = zmq_digests(daemon.control)
    keep = 2
    if kind == "torch":
        from nbserve.torch import TrainingSampleLoader_v1
        loader = TrainingSampleLoader_v1(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S)
    else:
        loader = nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S)
    try:
        assert loader.transport == "shm"
        kept, seen = None, []
        for number, batch in enumerate(loader):
            seen.append(digest(batch))
            if number == keep:
                kept = tensors(batch)  # only the arrays (or tensors) are kept, not the batch
        del batch
        gc.collect()
        assert len(seen) == len(reference) > keep + 3
        assert seen == reference
        status = await_held(daemon, 1)
        assert status["transport"] == "shm"
        assert all(type(value).__name__ == ("Tensor" if kind == "torch" else "ndarray") for value in kept.values())
        assert all(shm_view(value) for value in kept.values())
        assert digest(kept) == reference[keep], "a kept batch's memory was reused"
        del kept
        await_held(daemon, 0)
    finally:
        loader.close()


@requires_torch
def test_one_kept_tensor_keeps_its_batch_and_torch_tensors_are_views(binary, dataset, daemons, tmp_path):
    import torch
    from nbserve.torch import TrainingSampleLoader_v1
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    loader = TrainingSampleLoader_v1(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S)
    try:
        iterator = iter(loader)
        batch = next(iterator)
        assert isinstance(batch, nbserve.Batch)
        color = batch["color"]
        assert all(isinstance(t, torch.Tensor) and shm_view(t) for t in tensors(batch).values())
        expected = color.clone()
        del batch
        gc.collect()
        rest = sum(1 for _ in iterator)  # each batch dropped at once
        assert rest > 0
        await_held(daemon, 1)  # the tensor alone keeps its batch
        assert torch.equal(color, expected)
        del color
        await_held(daemon, 0)
    finally:
        loader.close()


def test_release_and_context_manager_give_batches_back(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S) as loader:
        kept = []
        for number, batch in enumerate(loader):
            if number == 0:
                kept.append(flat(batch))  # referenced: only release() gives it back
                assert not batch.released
                batch.release()
                batch.release()  # idempotent
                assert batch.released
            elif number == 1:
                with batch as same:
                    assert same is batch
                    kept.append(flat(batch))
                assert batch.released
            elif number == 2:
                unreleased = flat(batch)
        del batch, same
        # Everything was received: the daemon holds for the trainer only what it still references unreleased.
        await_held(daemon, 1)
        assert all(kept)
        del unreleased
        await_held(daemon, 0)


def test_a_trainer_holding_every_lease_is_told_so(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path, prefetch=1, leases=2))
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S) as loader:
        iterator = iter(loader)
        kept = [next(iterator), next(iterator)]
        started = time.monotonic()
        with pytest.raises(nbserve.LeaseLimit, match=r"serve.leases: 2"):
            next(iterator)
        assert time.monotonic() - started < WAIT_S / 2, "the limit was found only at the timeout"
        del kept


def test_validation_mid_epoch_is_not_starved_by_training_batches_already_sent(binary, dataset, daemons, tmp_path):
    """The daemon may send a stage as far ahead as the rank's leases allow; when validation is asked for, those
    training batches hold every lease. The client copies them out of shared memory (they were not handed out
    yet) and gives their leases back, so validation runs, and training then goes on with the same bytes."""
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path, leases=3))
    with nbserve.Loader(daemon.control, "val", get_epoch=lambda: 0, transport="zmq", timeout=WAIT_S) as loader:
        expected_val = [digest(batch) for batch in loader]
    expected_train = zmq_digests(daemon.control)
    train = nbserve.Loader(daemon.control, "train", get_epoch=lambda: 0, transport="shm", timeout=WAIT_S)
    val = nbserve.Loader(daemon.control, "val", get_epoch=lambda: 0, transport="shm", timeout=WAIT_S)
    try:
        iterator = iter(train)
        head = [digest(next(iterator))]
        deadline = time.monotonic() + WAIT_S
        while (status := daemon.rank_status())["train"]["sent"] < 1 + 3 or status["held_leases"] < 3:
            assert time.monotonic() < deadline, f"the daemon did not send three batches ahead: {status}"
            time.sleep(0.02)
        assert [digest(batch) for batch in val] == expected_val
        kept = train._channel.kept["train"]
        assert kept and all(type(payload).__name__ == "Copied" for _, payload in kept)
        assert head + [digest(batch) for batch in iterator] == expected_train
    finally:
        train.close()
        val.close()


# ----------------------------------------------------------------------------------------------------------
# Crashes

TRAINER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import nbserve
    loader = nbserve.Loader(sys.argv[1], get_epoch=lambda: 0, transport="shm", timeout=30)
    iterator = iter(loader)
    held = [next(iterator), next(iterator)]
    print("holding", flush=True)
    sys.stdin.read()
""")


def test_a_trainer_killed_while_holding_batches_gives_them_back(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    reference = zmq_digests(daemon.control)
    status = daemon_support.kill_trainer_holding_leases(daemon, [sys.executable, "-c", TRAINER, daemon.control, str(CLIENT_DIR)])
    assert status["held_leases"] >= 2 and status["shm_session"] and status["transport"] == "shm"
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S) as loader:
        assert [digest(batch) for batch in loader] == reference


KILLED_UNDER = textwrap.dedent("""
    import hashlib, sys, time
    sys.path.insert(0, sys.argv[2])
    import nbserve
    loader = nbserve.Loader(sys.argv[1], get_epoch=lambda: 0, transport="shm", timeout=float(sys.argv[3]))
    iterator = iter(loader)
    batch = next(iterator)
    before = hashlib.sha256(batch["color"].tobytes()).hexdigest()
    print("holding", flush=True)
    sys.stdin.readline()  # the daemon is killed meanwhile
    started = time.monotonic()
    try:
        for _ in iterator:
            pass
    except nbserve.DaemonUnavailable as error:
        print("raised", time.monotonic() - started, error)
    # The mapping outlives the daemon: what the trainer holds is still readable (no SIGBUS).
    print("same" if hashlib.sha256(batch["color"].tobytes()).hexdigest() == before else "changed")
""")


def test_a_daemon_killed_under_a_trainer_is_a_clear_error_within_the_timeout(binary, dataset, daemons, tmp_path):
    """In a trainer process of its own: a SIGBUS or an abort there is this test's failure, not the suite's end."""
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    timeout = 3.0
    trainer = subprocess.Popen([sys.executable, "-c", KILLED_UNDER, daemon.control, str(CLIENT_DIR), str(timeout)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "holding"
        daemon.stop(signal.SIGKILL)
        out, err = trainer.communicate("go\n", timeout=timeout + 10)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, f"the trainer ended with {trainer.returncode}: {err[-2000:]}"
    raised, same = out.strip().splitlines()
    word, seconds, message = raised.split(" ", 2)
    assert word == "raised" and float(seconds) < timeout + 5
    assert "did not come back within 3 s" in message and "nb-serve run" in message
    assert same == "same"


def test_a_daemon_restart_reopens_the_session(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    reference = zmq_digests(daemon.control)
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, transport="shm", timeout=WAIT_S) as loader:
        iterator = iter(loader)
        seen = [digest(next(iterator)) for _ in range(FRAMES + 1)]
        session = loader.session
        assert daemon.stop(signal.SIGTERM) == 0
        restarted = daemons(binary, config)
        seen += [digest(batch) for batch in iterator]
        assert seen == reference
        assert loader.session is not None and loader.session is not session
        status = restarted.rank_status()
        assert status["shm_session"] and status["transport"] == "shm"


# ----------------------------------------------------------------------------------------------------------
# Choosing the transport


def test_auto_picks_shared_memory_on_this_host_and_frames_without_it(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "on"))
    with nbserve.Loader(daemon.control, get_epoch=lambda: 0, timeout=WAIT_S) as loader:
        assert (loader.transport, loader.transport_reason) == ("shm", None)
        assert shm_view(next(iter(loader))["color"])
    off = daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "off", shm_socket=""))
    assert off.request({"cmd": "status"})["shm_socket"] is None
    with nbserve.Loader(off.control, get_epoch=lambda: 0, timeout=WAIT_S) as loader:
        assert loader.transport == "zmq" and "shm_socket" in loader.transport_reason
        assert [digest(batch) for batch in loader] == zmq_digests(daemon.control)
        assert off.rank_status()["transport"] == "zmq"
    with pytest.raises(nbserve.ShmUnavailable, match=r"transport='shm' cannot be used .*shm_socket"):
        nbserve.Loader(off.control, transport="shm", timeout=WAIT_S)
    with pytest.raises(ValueError, match="'auto', 'shm', 'zmq'"):
        nbserve.Loader(off.control, transport="tcp", timeout=WAIT_S)


def test_a_second_process_of_the_same_rank_falls_back_or_fails_clearly(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    with nbserve.Loader(daemon.control, transport="shm", timeout=WAIT_S):
        script = textwrap.dedent("""
            import sys
            sys.path.insert(0, sys.argv[2])
            import nbserve
            loader = nbserve.Loader(sys.argv[1], timeout=30)
            print(loader.transport, loader.transport_reason)
            try:
                nbserve.Loader(sys.argv[1], transport="shm", timeout=30)
            except nbserve.ShmUnavailable as error:
                print(error)
        """)
        result = subprocess.run([sys.executable, "-c", script, daemon.control, str(CLIENT_DIR)],
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 0, result.stderr
        auto, refused = result.stdout.splitlines()
        assert auto.startswith("zmq ") and "already" in auto
        assert "transport='shm' cannot be used" in refused and "already" in refused


# ----------------------------------------------------------------------------------------------------------
# python -m nbserve bench


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_bench_json_for_both_transports(binary, dataset, daemons, tmp_path, transport):
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "nbserve", "bench", "--control", daemon.control, "--batches", "10", "--json",
         "--transport", transport], capture_output=True, text=True, timeout=WAIT_S * 2,
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transport"] == transport and report["device"] == "cpu"
    assert report["batches"] == 10 and report["frames"] == 10 * 2
    assert report["frames_per_s"] > 0 and report["mb_per_s"] > 0 and 0 < report["first_batch_s"] < WAIT_S
    await_held(daemon, 0)
