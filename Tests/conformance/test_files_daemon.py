"""The daemon against files that change, cannot be read, or lie: a data file rewritten in place while it
is served, unreadable sequence files, resume-state files it must refuse, temporary files a killed
checkpoint left behind, and names carrying terminal escape sequences.

Real daemons on ipc sockets, read with pyzmq as docs/protocol.md describes; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as pysocket
import stat
import subprocess
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import yaml
import zmq

import daemon_support
import loader_support as support

WAIT_S = daemon_support.WAIT_S


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("files-data")
    return support.generate_dataset(
        root, "files", sequences=4, frames=4, crop=16, samples=4, height=48, width=80, seed=5,
        reference_samples=4, loader={"batch_size": 2, "val_split": 0.25, "samples": 4})


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory()


def copied(dataset: support.Dataset, tmp_path: Path, name: str = "data", **serve) -> tuple[Path, Path]:
    """A private copy of the dataset (so tests may damage it) and a daemon config reading it."""
    copy = tmp_path / name
    shutil.copytree(dataset.root, copy)
    config = daemon_support.daemon_config(dataset, tmp_path, data_path=copy, **serve)
    return copy, config


def receive_epoch(daemon: daemon_support.DaemonProcess, epoch: int, rank: int = 0) -> list[dict]:
    """Asks for a train epoch and returns every header up to and including `end`, acknowledging batches."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(daemon.config["serve"]["endpoint"].replace("{rank}", str(rank)))
    try:
        reply = daemon.request({"cmd": "epoch", "rank": rank, "stage": "train", "epoch": epoch})
        assert reply["ok"], reply
        stream = reply.get("stream")
        headers = []
        batches = 0
        while True:
            assert socket.poll(WAIT_S * 1000), f"no message within {WAIT_S} s:\n{daemon.log_text()}"
            frames = socket.recv_multipart()
            header = json.loads(frames[0])
            if stream is not None and header.get("stream", stream) != stream:
                continue  # a message of an older stream (docs/protocol.md section 6)
            headers.append(header)
            if header["type"] == "end":
                return headers
            if header["type"] == "batch":
                batches += 1
                daemon.request({"cmd": "ack", "rank": rank, "stage": "train", "epoch": epoch, "batches": batches})
    finally:
        socket.close()


def entry_data_offset(zip_path: Path, info: zipfile.ZipInfo) -> int:
    with open(zip_path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(fh.read(4), "<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length)


def decodable_bit_flip(zip_path: Path, key: str) -> tuple[int, int]:
    """A (file offset, bit) whose flip leaves the chunk decodable by numcodecs' blosc but different:
    damage only a CRC can catch."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(key)
        original = archive.read(key)
    assert info.compress_type == zipfile.ZIP_STORED
    codec = numcodecs.Blosc()
    expected = codec.decode(original)
    for position in range(len(original) - 1, 15, -1):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[position] ^= 1 << bit
            try:
                decoded = codec.decode(bytes(damaged))
            except Exception:  # noqa: BLE001 - numcodecs raises several types for bad data
                continue
            if len(decoded) == len(expected) and bytes(decoded) != bytes(expected):
                return entry_data_offset(zip_path, info) + position, bit
    pytest.fail(f"no decodable single-bit flip found in {key}")


# ------------------------------------------------------------------------------------------------------
# A file changed in place under a running daemon


def test_bits_flipped_in_a_served_file_come_out_as_errors_naming_it(binary, dataset, daemons, tmp_path):
    copy, config = copied(dataset, tmp_path)
    # Epoch 2 after the change: the daemon decodes epoch 1's first batches ahead while epoch 0 is read, so
    # those carry the file as it was when they were decoded.
    plan = support.nb_plan(binary, config, epoch=2)
    victim_batch = plan[len(plan) // 2]
    sequence, frame = victim_batch["sequences"][0], victim_batch["frame_index"]
    scene = copy / f"scene{sequence:04d}.zip"
    key = f"reference/{frame}.0.0.0"
    offset, bit = decodable_bit_flip(scene, key)
    expected_errors = [p["batch"] for p in plan if sequence in p["sequences"] and p["frame_index"] == frame]

    # One worker: it reads every chunk in epoch 0, so in epoch 2 it holds CRCs it checked before.
    daemon = daemons(binary, config, "--workers", "1")
    # Epoch 0 reads every file once: the worker has checked the CRCs it will otherwise trust.
    first = receive_epoch(daemon, 0)
    assert not [h for h in first if h["type"] == "error"], first
    inode = scene.stat().st_ino
    with open(scene, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))
    assert scene.stat().st_ino == inode  # changed in place, not replaced

    second = receive_epoch(daemon, 2)
    errors = [h for h in second if h["type"] == "error"]
    assert sorted(h["batch"] for h in errors) == expected_errors, (errors, daemon.log_text())
    for header in errors:
        assert header["file"] == str(scene) and header["chunk"] == key and "CRC" in header["reason"], header
    assert second[-1]["type"] == "end" and second[-1]["batches"] == len(plan) - len(expected_errors)
    status = daemon.request({"cmd": "status"})
    assert any(str(scene) in text for text in status["errors"]), status["errors"]


def test_a_served_file_replaced_by_rename_is_read_anew(binary, dataset, daemons, tmp_path):
    copy, config = copied(dataset, tmp_path)
    daemon = daemons(binary, config, "--workers", "1")
    receive_epoch(daemon, 0)
    # Replace one sequence by a damaged copy (a new inode): the daemon must read the new file.
    plan = support.nb_plan(binary, config, epoch=2)  # (epoch 1 begins decoded ahead, from the old file)
    sequence, frame = plan[0]["sequences"][0], plan[0]["frame_index"]
    scene = copy / f"scene{sequence:04d}.zip"
    replacement = copy / "replacement.zip"
    shutil.copyfile(scene, replacement)
    key = f"reference/{frame}.0.0.0"
    offset, bit = decodable_bit_flip(replacement, key)
    with open(replacement, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))
    os.replace(replacement, scene)
    errors = [h for h in receive_epoch(daemon, 2) if h["type"] == "error"]
    assert errors and all(h["file"] == str(scene) and h["chunk"] == key for h in errors), errors


# ------------------------------------------------------------------------------------------------------
# Start-up checks


def test_unreadable_sequence_files_are_all_reported_at_start(binary, dataset, tmp_path):
    """Mode 000 files, checked by opening them as a user the mode applies to (root reads anything)."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run the daemon as another user")
    base = Path(tempfile_directory(tmp_path))
    copy, config = copied(dataset, base)
    for index in (1, 3):
        (copy / f"scene{index:04d}.zip").chmod(0)
    # The daemon user must reach everything else: the config, the data and a state directory.
    for path in [base, *base.rglob("*")]:
        if path.suffix != ".zip" or path.name not in ("scene0001.zip", "scene0003.zip"):
            path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IWOTH | (stat.S_IXOTH if path.is_dir() else 0))
    argv = [str(binary), "run", "--config", str(config)]
    if os.geteuid() == 0:
        os.chmod(binary, os.stat(binary).st_mode | stat.S_IXOTH)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "2 of 4 sequence files cannot be read" in result.stderr, result.stderr
    for index in (1, 3):
        assert f"{copy}/scene{index:04d}.zip: cannot open: Permission denied" in result.stderr, result.stderr
    assert "scene0000.zip" not in result.stderr and "scene0002.zip" not in result.stderr


def tempfile_directory(tmp_path: Path) -> str:
    """A directory every user can traverse (pytest's own temporary root is private to its user)."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="nb-serve-files-", dir="/tmp")
    os.chmod(directory, 0o755)
    (tmp_path / "cleanup").write_text(directory)
    return directory


@pytest.fixture(autouse=True)
def _remove_public_directories(tmp_path):
    yield
    marker = tmp_path / "cleanup"
    if marker.exists():
        shutil.rmtree(marker.read_text(), ignore_errors=True)


def test_a_fifo_or_socket_where_a_sequence_file_belongs_is_reported_at_start(binary, dataset, tmp_path):
    copy, config = copied(dataset, tmp_path)
    (copy / "scene0002.zip").unlink()
    os.mkfifo(copy / "scene0002.zip")
    (copy / "scene0000.zip").unlink()
    listener = pysocket.socket(pysocket.AF_UNIX)
    listener.bind(str(copy / "scene0000.zip"))
    result = support.run(binary, "run", "--config", str(config))
    assert result.returncode == 1, result.describe()
    assert "2 of 4 sequence files cannot be read" in result.stderr, result.describe()
    assert f"{copy}/scene0002.zip: not a regular file" in result.stderr, result.describe()
    assert f"{copy}/scene0000.zip: cannot open" in result.stderr, result.describe()
    listener.close()


def test_temporary_files_of_an_interrupted_checkpoint_are_removed_at_start(binary, dataset, daemons, tmp_path):
    copy, config = copied(dataset, tmp_path)
    crashing = daemons(binary, config, env={"NB_SERVE_TEST_FAULT": "crash-before-rename"})
    receive_epoch(crashing, 0)
    with pytest.raises(TimeoutError):
        crashing.request({"cmd": "checkpoint"}, timeout_s=3)
    crashing.process.wait(WAIT_S)
    assert crashing.process.returncode == -signal.SIGKILL
    state_dir = tmp_path / "state"
    left = [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")]
    assert left, "the killed checkpoint left no temporary file (the test hook did not fire)"
    unrelated = state_dir / "notes.tmp"
    unrelated.write_text("not ours")

    daemon = daemons(binary, config)
    assert [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")] == ["notes.tmp"]
    assert "left by an interrupted checkpoint" in daemon.log_text()


# ------------------------------------------------------------------------------------------------------
# Resume-state files that must be refused


def a_valid_state(binary, dataset, daemons, tmp_path) -> tuple[Path, dict]:
    copy, config = copied(dataset, tmp_path)
    daemon = daemons(binary, config)
    receive_epoch(daemon, 0)
    path = Path(daemon.request({"cmd": "checkpoint"})["path"])
    daemon.stop()
    return config, json.loads(path.read_text())


@pytest.fixture
def valid_state(binary, dataset, daemons, tmp_path):
    return a_valid_state(binary, dataset, daemons, tmp_path)


REFUSED = {
    "version 99": (lambda s: {**s, "version": 99}, "format version 99"),
    "world_size 0": (lambda s: {**s, "world_size": 0}, "world_size 0"),
    "negative epoch": (lambda s: {**s, "start_epoch_idx": -1}, "start_epoch_idx -1"),
    "negative sequence": (lambda s: {**s, "start_sequence_idx": -2}, "start_sequence_idx -2"),
    "another seed": (lambda s: {**s, "seed": s["seed"] + 1}, "seed"),
    "unknown key": (lambda s: {**s, "rank": 0}, "unknown key 'rank'"),
    "bool for an integer": (lambda s: {**s, "world_size": True}, "world_size"),
    "missing key": (lambda s: {k: v for k, v in s.items() if k != "seed"}, "seed"),
    "not JSON": (None, "not a resume state"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_bad_resume_states_are_refused_naming_the_file(binary, valid_state, tmp_path, case):
    config, state = valid_state
    change, words = REFUSED[case]
    path = tmp_path / "bad-state.json"
    path.write_text(json.dumps(change(state)) if change else "{ this is not json")
    result = support.run(binary, "run", "--config", str(config), "--resume-from", str(path))
    assert result.returncode != 0, result.describe()
    assert f"{path}: " in result.stderr and words in result.stderr, result.describe()


def test_missing_resume_state_names_the_file(binary, dataset, tmp_path):
    copy, config = copied(dataset, tmp_path)
    path = tmp_path / "nowhere" / "state.json"
    result = support.run(binary, "run", "--config", str(config), "--resume-from", str(path))
    assert result.returncode != 0 and f"{path}: cannot read" in result.stderr, result.describe()


# ------------------------------------------------------------------------------------------------------
# Names with escape sequences reach protocol errors, logs and `ctl status` escaped


def test_escape_sequences_in_paths_reach_the_trainer_and_status_escaped(binary, dataset, daemons, tmp_path):
    copy, config = copied(dataset, tmp_path, name="data\x1b[31m\x07")
    plan = support.nb_plan(binary, config, epoch=0)
    scene = copy / f"scene{plan[0]['sequences'][0]:04d}.zip"
    daemon_support.corrupt_first_chunk(scene, "color")
    daemon = daemons(binary, config)
    errors = [h for h in receive_epoch(daemon, 0) if h["type"] == "error"]
    assert errors
    for header in errors:
        assert "\x1b" not in header["file"] and "\x07" not in header["file"], header
        assert "data\\x1b[31m\\x07" in header["file"], header
    status = daemon.request({"cmd": "status"})
    assert status["errors"] and not any("\x1b" in text for text in status["errors"]), status["errors"]
    log = daemon.log_text()
    assert "data\\x1b[31m" in log and "\x1b" not in log, log


def test_a_served_file_whose_array_metadata_changed_is_refused_not_misread(binary, dataset, daemons, tmp_path):
    copy, config = copied(dataset, tmp_path)
    daemon = daemons(binary, config, "--workers", "1")
    receive_epoch(daemon, 0)
    plan = support.nb_plan(binary, config, epoch=2)  # (epoch 1 begins decoded ahead, from the old file)
    sequence = plan[0]["sequences"][0]
    scene = copy / f"scene{sequence:04d}.zip"
    # zarr-python's layout with another fill value for `reference`, written as a new file over the old.
    rewritten = copy / "rewritten.zip"
    with zipfile.ZipFile(scene) as source, zipfile.ZipFile(rewritten, "w") as target:
        for info in source.infolist():
            body = source.read(info)
            if info.filename == "reference/.zarray":
                meta = json.loads(body)
                meta["fill_value"] = 7.0
                body = json.dumps(meta, indent=4, sort_keys=True).encode()
            target.writestr(info, body)
    os.replace(rewritten, scene)
    errors = [h for h in receive_epoch(daemon, 2) if h["type"] == "error"]
    assert errors, "batches were decoded with the old .zarray of a rewritten file"
    for header in errors:
        assert header["file"] == str(scene) and header["array"] == "reference", header
        assert "changed since the file was opened" in header["reason"], header
