"""The daemon over real sockets and real processes: `nb-serve run` against `nb-serve dump`.

Every test starts its own daemon on ipc sockets in a temporary directory, talks to it with pyzmq exactly
as docs/protocol.md describes, and bounds every wait. The batches a trainer receives must be exactly the
batches `nb-serve dump` writes (which test_loader.py holds equal to noisebase's own loader).
"""

from __future__ import annotations

import hashlib
import json
import re
import os
import shutil
import signal
import socket as pysocket
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

import daemon_support
import loader_support as support

WAIT_S = daemon_support.WAIT_S


# ----------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("daemon-data")
    return support.generate_dataset(
        root, "daemon", sequences=6, frames=4, crop=16, samples=4, height=48, width=80, seed=3,
        reference_samples=4, loader={"batch_size": 2, "val_split": 0.34, "samples": 4})


daemon_config = daemon_support.daemon_config


class Daemon(daemon_support.DaemonProcess):
    """A daemon plus the trainer's side of the data sockets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.context = zmq.Context()
        self.sockets: dict[int, zmq.Socket] = {}
        self.stale = 0  # messages of abandoned streams dropped by `epoch`

    def pull(self, rank: int) -> zmq.Socket:
        if rank not in self.sockets:
            socket = self.context.socket(zmq.PULL)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.config["serve"]["endpoint"].replace("{rank}", str(rank)))
            self.sockets[rank] = socket
        return self.sockets[rank]

    def reconnect(self, rank: int):
        """Drops the rank's PULL socket (a trainer that went away); the next pull connects anew."""
        self.sockets.pop(rank).close()

    def epoch(self, rank: int, epoch: int, stage: str = "train", *, state: dict | None = None,
              stop_after: int | None = None, on_batch=None, continuing: bool = False,
              already: int = 0) -> tuple[list, dict | None]:
        """Asks for an epoch and receives it: ([(header, arrays)] incl. error headers, end header). Messages of
        other streams (stale ones) are dropped, as docs/protocol.md section 6 says a reader must; each kept
        header's `stream` is checked against the reply and then removed, so tests compare the rest."""
        socket = self.pull(rank)
        request = {"cmd": "epoch", "rank": rank, "stage": stage, "epoch": epoch}
        if state is not None:
            request["state"] = state
        if continuing:
            request["continue"] = True
        reply = self.request(request)
        assert reply["ok"], reply
        self.last_stream = reply["stream"]
        received = []
        while stop_after is None or len(received) < stop_after:
            if not socket.poll(WAIT_S * 1000):
                raise AssertionError(f"no message within {WAIT_S} s after {len(received)}:\n{self.log_text()}")
            frames = socket.recv_multipart(copy=False)
            header = json.loads(bytes(frames[0].buffer))
            assert header["v"] == 1
            if header.pop("stream") != reply["stream"]:
                self.stale += 1
                continue
            if header["type"] == "end":
                return received, header
            arrays = {}
            if header["type"] == "batch":
                for spec, frame in zip(header["tensors"], frames[1:], strict=True):
                    arrays[spec["name"]] = np.frombuffer(frame.buffer, dtype=spec["dtype"]).reshape(spec["shape"])
            received.append((header, arrays))
            self.request({"cmd": "ack", "rank": rank, "stage": stage, "epoch": epoch, "batches": already + len(received),
                          "stream": reply["stream"]})
            if on_batch:
                on_batch(len(received))
        return received, None

    def stop(self, sig=signal.SIGTERM) -> int:
        for socket in self.sockets.values():
            socket.close()
        self.sockets.clear()
        self.context.term()
        return super().stop(sig)


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory(Daemon)


def digest(arrays: dict) -> str:
    hasher = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def dumped(binary: Path, config: Path, tmp: Path, *, epoch: int, batch: int, stage: str = "train",
           rank: int = 0, world_size: int = 1, state: dict | None = None) -> dict:
    out = tmp / f"dump-{stage}-{epoch}-{rank}-{world_size}-{batch}-{state and state['start_sequence_idx']}"
    args = ["dump", "--config", str(config), "--stage", stage, "--epoch", str(epoch), "--batch", str(batch),
            "--rank", str(rank), "--world-size", str(world_size), "--out", str(out)]
    if state:
        args += ["--start-epoch", str(state["start_epoch_idx"]), "--start-sequence", str(state["start_sequence_idx"])]
    support.run_ok(binary, *args)
    return support.load_dump(out)


def pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


# ----------------------------------------------------------------------------------------------------------
# Streams


@pytest.mark.parametrize("stage", ["train", "val"])
def test_epoch_stream_equals_dump(binary, dataset, daemons, tmp_path, stage):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    for epoch in (0, 1):
        received, end = daemon.epoch(0, epoch, stage)
        plan = support.nb_plan(binary, config, stage=stage, epoch=epoch)
        assert end == {"v": 1, "type": "end", "stage": stage, "epoch": epoch, "batches": len(plan)}
        assert len(received) == len(plan) > 0
        for (header, arrays), expected in zip(received, plan):
            assert header["type"] == "batch"
            assert (header["batch"], header["frame_index"], header["sequences"], header["orientations"]) == (
                expected["batch"], expected["frame_index"], expected["sequences"], expected["orientations"])
            reference = dumped(binary, config, tmp_path, epoch=epoch, batch=header["batch"], stage=stage)
            assert set(arrays) == set(reference)
            for name, array in arrays.items():
                assert array.dtype == reference[name].dtype and array.shape == reference[name].shape, name
                assert array.tobytes() == reference[name].tobytes(), f"{stage} epoch {epoch} batch {header['batch']} {name}"
    length = daemon.request({"cmd": "length", "stage": stage, "rank": 0, "epoch": 0})
    assert length["batches"] == len(support.nb_plan(binary, config, stage=stage, epoch=0))


def test_two_daemons_splitting_ranks_equal_one_daemon(binary, dataset, daemons, tmp_path):
    one = daemons(binary, daemon_config(dataset, tmp_path / "one", world_size=2))
    both = {rank: [digest(a) for _, a in one.epoch(rank, 0)[0]] for rank in (0, 1)}
    split = {}
    for rank in (0, 1):
        daemon = daemons(binary, daemon_config(dataset, tmp_path / f"rank{rank}", world_size=2, ranks=[rank]))
        split[rank] = [digest(a) for _, a in daemon.epoch(rank, 0)[0]]
    assert split == both
    assert all(both.values())
    # The two ranks together cover the epoch's sequence groups once each.
    assert not set(both[0]) & set(both[1])


def test_worker_killed_mid_epoch_changes_nothing(binary, dataset, daemons, tmp_path):
    reference = [digest(a) for _, a in daemons(binary, daemon_config(dataset, tmp_path / "a")).epoch(0, 0)[0]]
    daemon = daemons(binary, daemon_config(dataset, tmp_path / "b", prefetch=1))
    victims = [worker["pid"] for worker in daemon.request({"cmd": "status"})["workers"]]

    def kill_workers(count):
        if count in (2, 5):
            for pid in pids_alive(victims):
                os.kill(pid, signal.SIGKILL)

    received, end = daemon.epoch(0, 0, on_batch=kill_workers)
    assert [digest(a) for _, a in received] == reference
    assert end["batches"] == len(reference)
    status = daemon.request({"cmd": "status"})
    assert status["worker_restarts"] >= 2
    assert not pids_alive(victims)
    assert "requeued" in daemon.log_text()


def test_reconnecting_trainer_continues_at_its_consumed_position(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    reference = daemons(binary, daemon_config(dataset, tmp_path / "reference")).epoch(0, 0)[0]
    daemon = daemons(binary, config)
    first, _ = daemon.epoch(0, 0, stop_after=5)
    daemon.reconnect(0)
    rest, end = daemon.epoch(0, 0, continuing=True, already=5)
    assert [h["batch"] for h, _ in rest] == list(range(5, len(reference)))
    assert [digest(a) for _, a in first + rest] == [digest(a) for _, a in reference]
    assert end["batches"] == len(reference)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint and resume


def test_checkpoint_kill_restart_resumes_exactly(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    uninterrupted = daemons(binary, daemon_config(dataset, tmp_path / "reference"))
    full = uninterrupted.epoch(0, 0)[0]
    frames = dataset.config["src"]["frames_per_sequence"]

    daemon = daemons(binary, config)
    # Consume one whole sequence group and part of the next.
    daemon.epoch(0, 0, stop_after=frames + 2)
    reply = daemon.request({"cmd": "checkpoint"})
    assert reply["ok"], reply
    assert reply["state"]["start_epoch_idx"] == 0
    assert reply["state"]["start_sequence_idx"] == 2  # one group of batch_size 2 fully consumed
    state_file = Path(reply["path"])
    assert json.loads(state_file.read_text())["start_sequence_idx"] == 2
    workers = [worker["pid"] for worker in daemon.request({"cmd": "status"})["workers"]]
    daemon.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_alive(workers), "workers outlived a killed daemon"

    resumed = daemons(binary, config, "--resume")
    received, end = resumed.epoch(0, 0)
    assert [digest(a) for _, a in received] == [digest(a) for _, a in full[frames:]]
    assert [h["sequences"] for h, _ in received] == [h["sequences"] for h, _ in full[frames:]]
    # The next epoch is whole again.
    assert [digest(a) for _, a in resumed.epoch(0, 1)[0]] == [digest(a) for _, a in uninterrupted.epoch(0, 1)[0]]


def test_checkpoint_during_validation_keeps_the_training_position(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_config(dataset, tmp_path))
    frames = dataset.config["src"]["frames_per_sequence"]
    daemon.epoch(0, 0, stop_after=frames + 1)
    daemon.epoch(0, 0, "val")
    state = daemon.request({"cmd": "checkpoint"})["state"]
    assert (state["start_epoch_idx"], state["start_sequence_idx"]) == (0, 2)
    status = daemon.request({"cmd": "status"})
    assert status["frames_per_sequence"] == frames and status["batch_size"] == 2
    assert status["resume_state"] == {"start_epoch_idx": 0, "start_sequence_idx": 2}


def test_resume_with_another_world_size(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path / "one")
    daemon = daemons(binary, config)
    frames = dataset.config["src"]["frames_per_sequence"]
    daemon.epoch(0, 0, stop_after=frames + 1)
    state = daemon.request({"cmd": "checkpoint"})["state"]
    assert state["start_sequence_idx"] == 2
    daemon.stop()
    # Two ranks of half the batch each, resumed from the one-rank state.
    two = daemon_config(dataset, tmp_path / "two", world_size=2, state_dir=str(tmp_path / "one" / "state"))
    resumed = daemons(binary, two, "--resume")
    for rank in (0, 1):
        received, _ = resumed.epoch(rank, 0)
        plan = support.nb_plan(binary, two, epoch=0, rank=rank, world_size=2, start_epoch=0, start_sequence=2)
        assert [h["sequences"] for h, _ in received] == [p["sequences"] for p in plan] and plan
        reference = dumped(binary, two, tmp_path, epoch=0, batch=len(plan) - 1, rank=rank, world_size=2,
                           state={"start_epoch_idx": 0, "start_sequence_idx": 2})
        assert digest(received[-1][1]) == digest(reference)


def test_trainer_state_dict_selects_the_stream(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    state = {"start_epoch_idx": 1, "start_sequence_idx": 2}
    received, _ = daemon.epoch(0, 1, state=state)
    plan = support.nb_plan(binary, config, epoch=1, start_epoch=1, start_sequence=2)
    assert [h["sequences"] for h, _ in received] == [p["sequences"] for p in plan]
    first = dumped(binary, config, tmp_path, epoch=1, batch=0, state=state)
    assert digest(received[0][1]) == digest(first)


def test_checkpoint_survives_a_crash_during_the_write(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    frames = dataset.config["src"]["frames_per_sequence"]
    daemon.epoch(0, 0, stop_after=frames)
    first = daemon.request({"cmd": "checkpoint"})
    daemon.stop()
    before = Path(first["path"]).read_text()

    crashing = daemons(binary, config, env={"NB_SERVE_TEST_FAULT": "crash-before-rename"})
    crashing.epoch(0, 1, stop_after=2 * frames)
    with pytest.raises(TimeoutError):
        crashing.request({"cmd": "checkpoint"}, timeout_s=3)
    crashing.process.wait(WAIT_S)
    assert crashing.process.returncode == -signal.SIGKILL
    assert Path(first["path"]).read_text() == before
    assert json.loads(before)["start_sequence_idx"] == 2


def test_resume_state_of_another_config_is_refused(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    daemon.epoch(0, 0, stop_after=1)
    path = daemon.request({"cmd": "checkpoint"})["path"]
    daemon.stop()
    other = yaml.safe_load(open(config))
    other["seed"] = 7
    other_path = support.write_config(tmp_path / "other.yaml", other)
    result = support.run(binary, "run", "--config", str(other_path), "--resume-from", path)
    assert result.returncode == 1
    assert "another configuration" in result.stderr and path in result.stderr


# ----------------------------------------------------------------------------------------------------------
# Faults and operations


corrupt_first_chunk = daemon_support.corrupt_first_chunk


def test_corrupt_chunk_reaches_the_trainer_and_the_daemon_stays_up(binary, dataset, daemons, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset.root, copy)
    config = yaml.safe_load(open(daemon_config(dataset, tmp_path)))
    config["data_path"] = str(copy)
    config_path = support.write_config(tmp_path / "corrupt.yaml", config)
    plan = support.nb_plan(binary, config_path, epoch=0)
    victim = plan[0]["sequences"][0]
    scene = copy / f"scene{victim:04d}.zip"
    key = corrupt_first_chunk(scene, "color")

    daemon = daemons(binary, config_path)
    received, end = daemon.epoch(0, 0)
    errors = [h for h, _ in received if h["type"] == "error"]
    assert errors, "no error message for the corrupt chunk"
    error = errors[0]
    assert error["file"] == str(scene) and error["array"] == "color" and error["chunk"] == key
    assert error["reason"]
    batches = [h for h, _ in received if h["type"] == "batch"]
    assert end["batches"] == len(batches) == len(plan) - len(errors)
    status = daemon.request({"cmd": "status"})
    assert any(str(scene) in text for text in status["errors"])
    # Still serving.
    assert daemon.request({"cmd": "length", "stage": "val", "rank": 0})["ok"]


def test_missing_files_are_all_listed_at_start(binary, dataset, tmp_path):
    config = yaml.safe_load(open(daemon_config(dataset, tmp_path)))
    config["src"]["sequences"] = 9
    path = support.write_config(tmp_path / "missing.yaml", config)
    result = support.run(binary, "run", "--config", str(path))
    assert result.returncode == 1
    assert "3 of 9 sequence files are missing" in result.stderr
    for index in (6, 7, 8):
        assert f"scene{index:04d}.zip" in result.stderr


def test_bad_config_exits_2_naming_the_key(binary, dataset, tmp_path):
    config = yaml.safe_load(open(daemon_config(dataset, tmp_path)))
    config["serve"]["prefetch"] = "many"
    path = support.write_config(tmp_path / "bad.yaml", config)
    result = support.run(binary, "run", "--config", str(path))
    assert result.returncode == 2
    assert "serve.prefetch" in result.stderr


def test_sigterm_and_ctl_stop_leave_nothing_behind(binary, dataset, daemons, tmp_path):
    for how in ("sigterm", "ctl"):
        directory = tmp_path / how
        config = daemon_config(dataset, directory)
        daemon = daemons(binary, config)
        frames = dataset.config["src"]["frames_per_sequence"]
        daemon.epoch(0, 0, stop_after=frames + 1)
        workers = [worker["pid"] for worker in daemon.request({"cmd": "status"})["workers"]]
        started = time.monotonic()
        if how == "ctl":
            result = support.run(binary, "ctl", "--config", str(config), "stop")
            assert result.returncode == 0, result.stderr
            daemon.process.wait(WAIT_S)
        code = daemon.stop()
        assert code == 0, daemon.log_text()
        assert time.monotonic() - started < 5
        assert not pids_alive(workers)
        assert not list(directory.glob("*.sock"))
        state = json.loads((directory / "state" / "resume-state.json").read_text())
        assert (state["start_epoch_idx"], state["start_sequence_idx"]) == (0, 2)


def test_ctl_status_and_checkpoint(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    daemon.epoch(0, 0, stop_after=3)
    status = json.loads(support.run_ok(binary, "ctl", "--config", str(config), "status", "--json").stdout)
    rank = status["ranks"][0]
    assert rank["train"]["phase"] in ("streaming", "ending", "ended") and rank["on_wire"] in ("train", None)
    assert (rank["train"]["epoch"], rank["train"]["consumed"], rank["val"]["phase"]) == (0, 3, "idle")
    assert rank["train"]["sent"] >= 3 and rank["train"]["produced"] >= rank["train"]["sent"]
    assert len(status["workers"]) == 2 and status["rss_mb"] > 0 and status["frames_per_s"] > 0
    text = support.run_ok(binary, "ctl", "--control", daemon.control, "status").stdout
    assert "rank 0" in text and "consumed 3" in text
    checkpoint = json.loads(support.run_ok(binary, "ctl", "--config", str(config), "checkpoint").stdout)
    assert checkpoint["state"]["start_sequence_idx"] == 0 and Path(checkpoint["path"]).exists()
    missing = support.run(binary, "ctl", "--control", f"ipc://{tmp_path}/nobody.sock", "status", "--timeout", "0.5")
    assert missing.returncode == 1 and "no answer" in missing.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "control.sock").st_mode) == 0o600


def test_systemd_notification(binary, dataset, daemons, tmp_path):
    listener = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    listener.bind(path)
    listener.settimeout(WAIT_S)
    try:
        daemon = daemons(binary, daemon_config(dataset, tmp_path), env={"NOTIFY_SOCKET": path})
        assert b"READY=1" in listener.recv(4096)
        assert daemon.stop() == 0
        # STATUS= lines may come between.
        while not (message := listener.recv(4096)).startswith(b"STOPPING=1"):
            assert message.startswith(b"STATUS="), message
    finally:
        listener.close()


def test_memory_stays_bounded_over_epochs(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_config(dataset, tmp_path))
    daemon.epoch(0, 0)
    after_first = daemon.request({"cmd": "status"})["rss_mb"]
    for epoch in (1, 2):
        daemon.epoch(0, epoch)
    after_third = daemon.request({"cmd": "status"})["rss_mb"]
    assert after_third < after_first * 1.2 + 8, (after_first, after_third)


# ----------------------------------------------------------------------------------------------------------
# Strict control requests, streams per (rank, stage), faults in the daemon itself


def documented_reader():
    """The `Reader` class of docs/protocol.md section 4, run exactly as printed."""
    document = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    code = document.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "docs/protocol.md", "exec"), namespace)
    return namespace["Reader"]


def raw_request(control: str, payload: bytes, timeout_s: float = WAIT_S) -> dict | None:
    """Sends `payload` as it is (not necessarily JSON); the reply, or None when none comes in time."""
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(control)
    try:
        socket.send(payload)
        if not socket.poll(int(timeout_s * 1000)):
            return None
        return socket.recv_json()
    finally:
        socket.close()


def test_bad_control_requests_are_refused_by_name_and_never_crash_the_daemon(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    raw = yaml.safe_load(open(config))
    raw.update(shuffle=False, flip_rotate=False)
    config = support.write_config(config, raw)
    daemon = daemons(binary, config)
    base = {"cmd": "epoch", "rank": 0, "stage": "train"}
    refusals = [
        ({**base, "epoch": 2**63 - 1}, '"epoch" 9223372036854775807 is out of range'),
        ({**base, "epoch": 2**64}, '"epoch" 18446744073709551616 is out of range'),
        ({**base, "epoch": -1}, '"epoch" -1 is out of range'),
        ({**base, "epoch": True}, '"epoch" must be a JSON integer, not a bool'),
        ({**base, "epoch": 1.5}, '"epoch" must be a JSON integer'),
        ({**base, "epoch": 1.0}, '"epoch" must be a JSON integer'),
        ({"cmd": "epoch", "rank": False, "stage": "train", "epoch": 0}, '"rank" must be a JSON integer, not a bool'),
        ({"cmd": "epoch", "rank": 2**64, "stage": "train", "epoch": 0}, '"rank" 18446744073709551616 is out of range'),
        ({"cmd": "epoch", "rank": 7, "stage": "train", "epoch": 0}, "rank 7 is not served here"),
        ({**base, "stage": 3, "epoch": 0}, '"stage" must be a string'),
        ({**base, "epoch": 0, "state": {"start_epoch_idx": 0, "start_sequence_idx": -1}}, '"start_sequence_idx" -1 is out of range'),
        ({**base, "epoch": 0, "rewind": True}, 'unknown key "rewind" in a "epoch" request'),
        ({"cmd": "ack", "rank": 0, "stage": "test", "epoch": 0, "batches": 1}, '"stage" "test" is not train, val or validation'),
        ({"cmd": "ack", "rank": 0, "stage": "val", "epoch": 0, "batches": 1}, "rank 0 has no val stream to acknowledge"),
        ({"cmd": "checkpoint", "dir": str(tmp_path / "elsewhere")}, 'unknown key "dir" in a "checkpoint" request'),
        ({"cmd": "shutdown"}, 'unknown command "shutdown"'),
    ]
    for request, expected in refusals:
        reply = daemon.request(request)
        assert reply["ok"] is False and expected in reply["error"], (request, reply)
    assert not (tmp_path / "elsewhere").exists(), "checkpoint wrote outside serve.state_dir"
    # Not JSON, and too long: refused without echoing the request (or Foundation's wording).
    for payload, expected in [(b"\xff{not json", "not valid JSON"), (b'{"cmd":"status","x":"' + b"y" * 200_000 + b'"}', "requests are at most 65536 bytes")]:
        reply = raw_request(daemon.control, payload)
        assert reply == {"ok": False, "error": reply["error"]} and expected in reply["error"], reply
        assert "yyyy" not in reply["error"]
    # A 100 MB request never reaches the loop: libzmq drops that peer, and the daemon answers the next one at once.
    started = time.monotonic()
    assert raw_request(daemon.control, b"{" + b" " * 100_000_000 + b"}", timeout_s=2) is None
    assert daemon.request({"cmd": "status"}, timeout_s=5)["ok"]
    assert time.monotonic() - started < 15
    # The sequence that used to trap on overflow: the largest epoch a request may name, acknowledged, then status.
    largest = 2**31 - 1
    reply = daemon.request({**base, "epoch": largest})
    assert reply["ok"], reply
    received, end = daemon.epoch(0, largest, stop_after=1)
    status = daemon.request({"cmd": "status"})
    assert status["ok"] and status["ranks"][0]["train"]["epoch"] == largest
    # noisebase's meaning of a start position beyond the epoch: the slice is empty, the epoch has no batches.
    _, end = daemon.epoch(0, 0, state={"start_epoch_idx": 0, "start_sequence_idx": 10**6})
    assert end["batches"] == 0
    assert daemon.stop() == 0


def test_reconnecting_trainer_gets_no_stale_batch(binary, dataset, daemons, tmp_path):
    """Messages queued for a trainer's old connection carry the old stream id; the documented reader drops
    them, so a continued stream is exactly the unacknowledged rest of the epoch."""
    Reader = documented_reader()
    config = daemon_config(dataset, tmp_path, prefetch=4)
    reference = daemons(binary, daemon_config(dataset, tmp_path / "reference")).epoch(0, 0)[0]
    daemon = daemons(binary, config)
    first, _ = daemon.epoch(0, 0, stop_after=2)
    daemon.reconnect(0)
    socket = daemon.pull(0)
    raw_streams = []
    reader = Reader(socket)
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "continue": True})
    assert reply["ok"] and reply["continues_at"] == 2 and reply["stream"] != daemon.last_stream
    reader.started("train", reply)
    original = socket.recv_multipart

    def recording(*args, **kwargs):
        frames = original(*args, **kwargs)
        raw_streams.append(json.loads(bytes(frames[0].buffer))["stream"])
        return frames

    socket.recv_multipart = recording
    socket.setsockopt(zmq.RCVTIMEO, WAIT_S * 1000)
    rest = list(reader.read_epoch("train"))
    assert [h["batch"] for h, _ in rest] == list(range(2, len(reference)))
    assert [digest(a) for _, a in first] + [digest(a) for _, a in rest] == [digest(a) for _, a in reference]
    assert set(raw_streams) <= {daemon.last_stream, reply["stream"]}


def test_validation_mid_epoch_leaves_the_training_stream_where_it_is(binary, dataset, daemons, tmp_path):
    Reader = documented_reader()
    config = daemon_config(dataset, tmp_path)
    reference = daemons(binary, daemon_config(dataset, tmp_path / "reference"))
    train_reference = [digest(a) for _, a in reference.epoch(0, 0)[0]]
    val_reference = [digest(a) for _, a in reference.epoch(0, 0, "val")[0]]
    daemon = daemons(binary, config)
    socket = daemon.pull(0)
    socket.setsockopt(zmq.RCVTIMEO, WAIT_S * 1000)
    reader = Reader(socket)
    reader.started("train", daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0}))
    train = reader.read_epoch("train")
    seen = [digest(next(train)[1]) for _ in range(3)]
    daemon.request({"cmd": "ack", "rank": 0, "stage": "train", "epoch": 0, "batches": 3})
    reader.started("val", daemon.request({"cmd": "epoch", "rank": 0, "stage": "validation", "epoch": 0}))
    assert [digest(a) for _, a in reader.read_epoch("val")] == val_reference
    checkpoint = daemon.request({"cmd": "checkpoint"})
    assert checkpoint["ok"] and checkpoint["state"]["start_epoch_idx"] == 0
    # The training stream goes on without a new request: nothing decoded twice, nothing skipped.
    seen += [digest(a) for _, a in train]
    assert seen == train_reference
    status = daemon.rank_status()
    assert status["train"]["sent"] == len(train_reference) and status["val"]["phase"] == "ended"
    assert daemon.log_text().count("train epoch 0") == 1


def test_an_error_in_the_main_loop_still_shuts_down_cleanly(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config, env={"NB_SERVE_TEST_FAULT": "fail-loop-on-ack"})
    socket = daemon.pull(0)
    assert daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0})["ok"]
    assert socket.poll(WAIT_S * 1000)
    with pytest.raises(TimeoutError):
        daemon.request({"cmd": "ack", "rank": 0, "stage": "train", "epoch": 0, "batches": 0}, timeout_s=5)
    daemon.process.wait(WAIT_S)
    assert daemon.process.returncode == 1
    log = daemon.log_text()
    assert "the main loop failed: injected fault" in log and "wrote resume state" in log and "stopped" in log
    assert not list(tmp_path.glob("*.sock")), "socket files left behind"
    assert json.loads((tmp_path / "state" / "resume-state.json").read_text())["start_epoch_idx"] == 0


def test_a_poison_frame_becomes_an_error_and_other_batches_flow(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    plan = support.nb_plan(binary, config, epoch=0)
    reference = [digest(a) for _, a in daemons(binary, daemon_config(dataset, tmp_path / "reference")).epoch(0, 0)[0]]
    poison = plan[0]["sequences"][0]
    daemon = daemons(binary, config, env={"NB_SERVE_TEST_FAULT": f"poison-sequence={poison}"})
    received, end = daemon.epoch(0, 0)
    assert len(received) == len(plan)
    for (header, arrays), expected, digest_expected in zip(received, plan, reference):
        if poison in expected["sequences"]:
            assert header["type"] == "error", header
            assert header["file"].endswith(f"scene{poison:04d}.zip") and "workers died" in header["reason"]
        else:
            assert header["type"] == "batch" and digest(arrays) == digest_expected
    poisoned = sum(poison in p["sequences"] for p in plan)
    assert end["batches"] == len(plan) - poisoned
    status = daemon.request({"cmd": "status"})
    # Each poisoned task costs at most two deaths, never a loop: this epoch's, and those of the next epoch's
    # first batches, which the daemon decodes ahead into the stream's buffers (prefetch + 1 of them).
    ahead = support.nb_plan(binary, config, epoch=1)[:daemon.config["serve"]["prefetch"] + 1]
    assert 0 < status["worker_restarts"] <= 2 * (poisoned + sum(poison in p["sequences"] for p in ahead))
    # Replacements come back after their backoff (at most WorkerPool.maximumBackoff).
    deadline = time.monotonic() + 15
    while len(status["workers"]) + status["workers_starting"] < 2 or status["workers_starting"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
        status = daemon.request({"cmd": "status"})
    assert daemon.stop() == 0


def test_an_edited_config_file_does_not_reach_replacement_workers(binary, dataset, daemons, tmp_path):
    config = daemon_config(dataset, tmp_path)
    reference = [digest(a) for _, a in daemons(binary, daemon_config(dataset, tmp_path / "reference")).epoch(0, 0)[0]]
    daemon = daemons(binary, config)
    edited = yaml.safe_load(open(config))
    edited["src"]["crop"] = edited["src"]["crop"] // 2
    edited["flip_rotate"] = not edited.get("flip_rotate", True)
    support.write_config(config, edited)
    victims = [worker["pid"] for worker in daemon.request({"cmd": "status"})["workers"]]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    received, _ = daemon.epoch(0, 0)
    assert [digest(a) for _, a in received] == reference, daemon.log_text()
    # The deaths are seen when the loop next polls the workers' pipes; the epoch may have been decoded ahead.
    deadline = time.monotonic() + WAIT_S
    while daemon.request({"cmd": "status"})["worker_restarts"] < len(victims):
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.05)


def test_stop_fails_when_the_resume_state_cannot_be_written(binary, dataset, daemons, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for how in ("sigterm", "ctl"):
        config = daemon_config(dataset, tmp_path / how, state_dir=str(blocker / "state"))
        daemon = daemons(binary, config)
        daemon.epoch(0, 0, stop_after=1)
        if how == "ctl":
            assert daemon.request({"cmd": "stop"})["ok"]
            daemon.process.wait(WAIT_S)
        assert daemon.stop() == 1, how
        assert "resume state could not be written" in daemon.log_path.read_text()


def test_bench_end_to_end_reports_first_batch_and_epoch_gap(binary, dataset, tmp_path):
    """`nb-serve bench --json` end to end: the batches asked for, across an epoch boundary, with the timing
    fields the README's table is made of (their values are measurements, checked only for sanity here)."""
    config = daemon_config(dataset, tmp_path)
    per_epoch = len(support.nb_plan(binary, config, epoch=0))
    for transport in ("shm", "zmq"):
        result = support.run_ok(binary, "bench", "--config", str(config), "--batches", str(per_epoch + 3), "--workers", "2",
                                "--transport", transport, "--json")
        report = json.loads(result.stdout)
        assert report["batches"] == per_epoch + 3 and report["transport"] == transport
        assert report["frames_per_s"] > 0 and report["batch_interval_s"] > 0
        assert report["epoch_gap_s"] is not None and report["epoch_gap_s"] > 0
        assert 0 < report["first_batch_after_ready_s"] <= report["first_batch_s"] + 30
        assert report["daemon_cpu_ms_per_frame"] >= 0


def test_logs_carry_journald_priorities_under_systemd(binary, dataset, tmp_path):
    """With stderr being the journal stream systemd names (JOURNAL_STREAM), every line starts with its syslog
    priority and carries no timestamp; elsewhere lines are timestamped with a level word."""
    import subprocess
    config = daemon_config(dataset, tmp_path, state_dir=str(tmp_path / "blocked" / "state"))
    (tmp_path / "blocked").write_text("")  # the resume state cannot be written: an error-level line
    log_path = tmp_path / "journal.log"
    with open(log_path, "w") as log:
        info = os.fstat(log.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        process = subprocess.Popen([str(binary), "run", "--config", str(config)], stderr=log, stdout=log, env=env)
        try:
            control = yaml.safe_load(open(config))["serve"]["control"]
            deadline = time.monotonic() + WAIT_S
            while raw_request(control, b'{"cmd":"status"}', timeout_s=0.5) is None:
                assert time.monotonic() < deadline and process.poll() is None
            assert raw_request(control, b'{"cmd":"epoch","rank":0,"stage":"train","epoch":0}')["ok"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(WAIT_S) == 1
        finally:
            if process.poll() is None:
                process.kill()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(re.match(r"<[0-7]>nb-serve", line) for line in lines), lines
    assert any(line.startswith("<6>nb-serve: serving ranks") for line in lines), lines
    assert any(line.startswith("<3>nb-serve: could not write the resume state") for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", line) for line in lines), lines


def test_watchdog_pings_while_the_loop_turns_and_stop_when_it_is_wedged(binary, dataset, daemons, tmp_path):
    """With systemd's WatchdogSec (WATCHDOG_USEC) the main loop itself sends WATCHDOG=1 at half the interval,
    with STATUS= lines; a loop wedged by a test hook (debug builds only) sends none, so systemd would restart it."""
    listener = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    listener.bind(path)
    listener.settimeout(WAIT_S)

    def messages_for(seconds: float) -> list[bytes]:
        received, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                received.append(listener.recv(4096))
            except TimeoutError:
                break
        return received

    try:
        daemon = daemons(binary, daemon_config(dataset, tmp_path),
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "NB_SERVE_TEST_FAULT": "wedge-on-stop"})
        healthy = messages_for(1.5)
        pings = [m for m in healthy if m == b"WATCHDOG=1"]
        assert 5 <= len(pings) <= 25, healthy  # every 0.1 s, give or take a loaded machine
        assert any(m.startswith(b"STATUS=waiting for a trainer; 0 frames/s, 2 workers") for m in healthy), healthy
        daemon.epoch(0, 0, stop_after=2)
        # The trainer's reported timing (ack) makes the STATUS line say its stall: 0.1 s waited of 0.5 s.
        assert daemon.request({"cmd": "ack", "rank": 0, "stage": "train", "epoch": 0, "batches": 2,
                               "wait_s": [0.05, 0.05], "busy_s": 0.4})["ok"]
        statuses = [m for m in messages_for(5.5) if m.startswith(b"STATUS=")]
        assert any(m.startswith(b"STATUS=rank 0 train epoch 0: batch ") and b", stall 20%; " in m for m in statuses), statuses
        with pytest.raises(TimeoutError):
            daemon.request({"cmd": "stop"}, timeout_s=1)  # the hook wedges the loop before it replies
        messages_for(0.3)  # whatever was sent before the wedge
        assert b"WATCHDOG=1" not in messages_for(1.5), "a wedged loop kept pinging the watchdog"
        assert daemon.process.poll() is None
    finally:
        listener.close()


def test_ctl_status_watch_redraws_on_a_terminal_and_prints_plain_lines_elsewhere(binary, dataset, daemons, tmp_path):
    import pty

    config = daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    daemon.epoch(0, 0, stop_after=3)
    # A trainer that waited 0.5 s of its 2 s (as reported with its acks): stall 25%.
    assert daemon.request({"cmd": "ack", "rank": 0, "stage": "train", "epoch": 0, "batches": 3,
                           "wait_s": [0.25, 0.125, 0.125], "busy_s": 1.5})["ok"]
    argv = [str(binary), "ctl", "--control", daemon.control, "status", "--watch", "--count", "2"]
    plain = support.run_ok(binary, "ctl", "--control", daemon.control, "status", "--watch", "--count", "2").stdout
    assert "\x1b[" not in plain, "escape sequences on a pipe"
    assert plain.count("nb-serve pid") == 2, plain
    rank_lines = [line for line in plain.splitlines() if line.startswith("rank 0 train epoch 0")]
    assert len(rank_lines) == 2 and "3/" in rank_lines[0] and "[" in rank_lines[0], plain
    assert "frames/s" in rank_lines[1] and "left" in rank_lines[1], plain  # a rate from the second refresh on
    assert all("stall 25.0%" in line for line in rank_lines), plain
    # Under a pseudo-terminal the view is redrawn in place.
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    output = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode()
    assert text.count("\x1b[H\x1b[J") == 2, text
    assert "rank 0 train epoch 0 [" in text and "workers: 2" in text, text
    bad = support.run(binary, "ctl", "--control", daemon.control, "stop", "--watch")
    assert bad.returncode == 2 and "--watch goes with status" in bad.stderr
