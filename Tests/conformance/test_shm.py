"""The shared-memory transport (docs/protocol.md section 7) against real daemons: a trainer on the daemon's
host reads batches straight from the memory the workers decoded into, with leases bounding what it holds.

The trainer side here is written from the protocol document alone: a unix socket session (hello, the memory's
descriptor by SCM_RIGHTS, releases), `lease` messages on the rank's data socket, numpy views of a read-only
mapping. Every batch must equal `nb-serve dump`'s.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket as pysocket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import daemon_support
import loader_support as support
from test_daemon import Daemon, digest, dumped

WAIT_S = daemon_support.WAIT_S


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("shm-data")
    return support.generate_dataset(
        root, "shm", sequences=6, frames=4, crop=16, samples=4, height=48, width=80, seed=5,
        reference_samples=4, loader={"batch_size": 2, "val_split": 0.34, "samples": 4})


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory(Daemon)


class Session:
    """One trainer's shared-memory session: the memory mapped read-only, leases released on demand."""

    def __init__(self, path: str, rank: int = 0):
        self.socket = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        self.socket.settimeout(WAIT_S)
        self.socket.connect(path)
        self.send({"hello": 1, "rank": rank})
        reply, fds = self.receive()
        assert reply["ok"], reply
        assert len(fds) == 1
        self.reply = reply
        self.memory = mmap.mmap(fds[0], reply["bytes"], prot=mmap.PROT_READ)
        self.fd = fds[0]

    def send(self, body: dict):
        data = json.dumps(body).encode()
        self.socket.sendall(struct.pack("<I", len(data)) + data)

    def receive(self):
        header, fds, _, _ = pysocket.recv_fds(self.socket, 4, 1)
        assert len(header) == 4, "session closed"
        (length,) = struct.unpack("<I", header)
        body = b""
        while len(body) < length:
            chunk = self.socket.recv(length - len(body))
            assert chunk, "session closed"
            body += chunk
        return json.loads(body), fds

    def release(self, *leases: int):
        self.send({"release": list(leases)})

    def arrays(self, header: dict) -> dict:
        return {t["name"]: np.frombuffer(self.memory, np.dtype(t["dtype"]), int(np.prod(t["shape"], dtype=np.int64)),
                                         t["offset"]).reshape(t["shape"]) for t in header["tensors"]}

    def close(self):
        self.socket.close()


def shm_path(daemon: Daemon) -> str:
    return daemon.request({"cmd": "status"})["shm_socket"]


def read_stream(daemon: Daemon, session: Session, stream: int, *, release: bool = True, stop_after: int | None = None):
    """[(header, arrays copied out)] of `stream` until its end (stale messages dropped)."""
    socket = daemon.pull(0)
    received = []
    while stop_after is None or len(received) < stop_after:
        assert socket.poll(WAIT_S * 1000), daemon.log_text()
        header = json.loads(socket.recv())
        if header["stream"] != stream:
            continue
        if header["type"] == "end":
            return received, header
        assert header["type"] == "lease", header
        received.append((header, {k: v.copy() for k, v in session.arrays(header).items()}))
        if release:
            session.release(header["lease"])
    return received, None


def test_every_batch_over_shared_memory_equals_dump_and_the_zmq_stream(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    shm_before = set(os.listdir("/dev/shm"))
    daemon = daemons(binary, config)
    session = Session(shm_path(daemon))
    assert session.reply["leases"] == daemon.config["serve"]["prefetch"] + 4
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"})
    assert reply["ok"], reply
    received, end = read_stream(daemon, session, reply["stream"])
    assert end["batches"] == len(received) > 0
    for header, arrays in received:
        reference = dumped(binary, config, tmp_path, epoch=0, batch=header["batch"])
        assert set(arrays) == set(reference)
        for name, array in arrays.items():
            assert array.dtype == reference[name].dtype and array.shape == reference[name].shape, name
            assert array.tobytes() == reference[name].tobytes(), (header["batch"], name)
    over_zmq, _ = daemon.epoch(0, 1)
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 1, "transport": "shm"})
    shared, _ = read_stream(daemon, session, reply["stream"])
    assert [digest(a) for _, a in shared] == [digest(a) for _, a in over_zmq]
    status = daemon.rank_status()
    assert status["shm_session"] and status["transport"] == "shm" and status["held_leases"] == 0
    assert set(os.listdir("/dev/shm")) == shm_before, "something was named in /dev/shm"
    session.close()
    assert daemon.stop() == 0
    assert set(os.listdir("/dev/shm")) == shm_before


def test_a_kept_batch_keeps_its_bytes_and_leases_bound_what_a_trainer_holds(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path, prefetch=1, leases=2)
    reference = [digest(a) for _, a in daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "ref")).epoch(0, 0)[0]]
    daemon = daemons(binary, config)
    session = Session(shm_path(daemon))
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"})
    socket = daemon.pull(0)

    def next_lease(timeout_s=WAIT_S):
        if not socket.poll(int(timeout_s * 1000)):
            return None
        header = json.loads(socket.recv())
        assert header["stream"] == reply["stream"] and header["type"] == "lease", header
        return header

    first, second = next_lease(), next_lease()
    kept = session.arrays(first)  # views straight into the daemon's memory, never copied
    assert next_lease(timeout_s=1.5) is None, "a third lease went out while two were held"
    assert daemon.rank_status()["held_leases"] == 2
    session.release(second["lease"])
    seen = [digest({k: v.copy() for k, v in session.arrays(second).items()})]
    while (header := next_lease()) is not None and header["type"] == "lease":
        seen.append(digest({k: v.copy() for k, v in session.arrays(header).items()}))
        session.release(header["lease"])
        if len(seen) == len(reference) - 1:
            break
    # Every other batch of the epoch went through, and the one still held was never overwritten.
    assert digest(kept) == reference[0]
    assert seen == reference[1:]
    session.release(first["lease"])
    deadline = time.monotonic() + WAIT_S
    while daemon.rank_status()["held_leases"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


TRAINER = textwrap.dedent("""
    import json, mmap, os, socket, struct, sys, zmq
    path, control, endpoint = sys.argv[1:4]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
    body = json.dumps({"hello": 1, "rank": 0}).encode(); s.sendall(struct.pack("<I", len(body)) + body)
    header, fds, _, _ = socket.recv_fds(s, 4, 1)
    reply = s.recv(struct.unpack("<I", header)[0])
    memory = mmap.mmap(fds[0], json.loads(reply)["bytes"], prot=mmap.PROT_READ)
    ctx = zmq.Context(); pull = ctx.socket(zmq.PULL); pull.connect(endpoint)
    req = ctx.socket(zmq.REQ); req.connect(control)
    req.send_json({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"}); req.recv_json()
    held = 0
    while held < 2:
        if json.loads(pull.recv())["type"] == "lease":
            held += 1
    print("holding", flush=True)
    sys.stdin.read()
""")


def test_a_killed_trainer_gives_back_what_it_held(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    reference = [digest(a) for _, a in daemons(binary, daemon_support.daemon_config(dataset, tmp_path / "ref")).epoch(0, 0)[0]]
    daemon = daemons(binary, config)
    endpoint = daemon.config["serve"]["endpoint"].replace("{rank}", "0")
    holding = daemon_support.kill_trainer_holding_leases(daemon, [sys.executable, "-c", TRAINER, shm_path(daemon), daemon.control, endpoint])
    assert holding["held_leases"] >= 2
    session = Session(shm_path(daemon))
    daemon.reconnect(0) if 0 in daemon.sockets else None
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"})
    received, _ = read_stream(daemon, session, reply["stream"])
    assert [digest(a) for _, a in received] == reference


def test_a_killed_daemon_leaves_the_trainer_its_memory_and_a_clear_end(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    session = Session(shm_path(daemon))
    reply = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"})
    (header, _), = read_stream(daemon, session, reply["stream"], release=False, stop_after=1)[0]
    views = session.arrays(header)
    before = digest({k: v.copy() for k, v in views.items()})
    daemon.stop(signal.SIGKILL)
    # The mapping outlives the daemon (no SIGBUS: the memory file lives while it is mapped) ...
    assert digest({k: v.copy() for k, v in views.items()}) == before
    # ... and the session says the daemon is gone at once.
    session.socket.settimeout(5)
    assert session.socket.recv(4) == b""


def test_session_and_request_misuse_is_refused_by_name(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config)
    refused = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"})
    assert not refused["ok"] and "rank 0 has no shared-memory session" in refused["error"]
    path = shm_path(daemon)
    assert os.stat(path).st_mode & 0o777 == 0o600
    for body, expected in [({"hello": 1, "rank": 5}, '"rank" must be an integer naming a rank served here'),
                           ({"hello": 2, "rank": 0}, '"hello" must be 1'),
                           ({"hello": 1, "rank": 0, "debug": True}, 'unknown key "debug" in a hello'),
                           ({"release": [1]}, "lease 1 is not held by this session")]:
        raw = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        raw.settimeout(WAIT_S)
        raw.connect(path)
        data = json.dumps(body).encode()
        raw.sendall(struct.pack("<I", len(data)) + data)
        (length,) = struct.unpack("<I", raw.recv(4))
        reply = json.loads(raw.recv(length))
        assert reply["ok"] is False and expected in reply["error"], reply
        assert raw.recv(1) == b"", "the session stays open after a refusal"
        raw.close()
    first = Session(path)
    with pytest.raises(AssertionError):
        Session(path)  # a second session for the same rank
    first.close()
    assert daemon.request({"cmd": "status"})["ok"]


def test_the_whole_region_is_reserved_at_start_up(binary, dataset, tmp_path):
    """Too little room for the batch memory is a start-up error naming the size, never a SIGBUS later (here the
    room is limited with RLIMIT_FSIZE, which a memory file obeys like any file)."""
    import resource
    config = daemon_support.daemon_config(dataset, tmp_path, prefetch=200, leases=200)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = subprocess.run([str(binary), "run", "--config", str(config)], capture_output=True, text=True,
                            timeout=WAIT_S, preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    assert "MiB) failed" in result.stderr and "shared batch memory" in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.sock")), "sockets left behind by a refused start"


def test_serves_with_a_64_mb_dev_shm(binary, dataset, tmp_path):
    """Nothing goes through /dev/shm: in a private mount namespace with a 64 MB tmpfs over it, the daemon
    starts and serves a whole epoch over shared memory."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare -m: {probe.stderr.decode().strip()})")
    config = daemon_support.daemon_config(dataset, tmp_path)
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(f"""
        import json, subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import daemon_support
        from test_shm import Session
        from test_daemon import Daemon
        import loader_support as support
        daemon = Daemon(support.require_binary(), __import__("pathlib").Path({str(config)!r}))
        session = Session(daemon.request({{"cmd": "status"}})["shm_socket"])
        reply = daemon.request({{"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0, "transport": "shm"}})
        socket = daemon.pull(0)
        count = 0
        while True:
            assert socket.poll(30000)
            header = json.loads(socket.recv())
            if header["type"] == "end":
                break
            session.release(header["lease"])
            count += 1
        print("served", count, header["batches"])
        daemon.stop()
    """))
    command = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, result.stderr
    served = result.stdout.split()
    assert served[0] == "served" and int(served[1]) == int(served[2]) > 0, result.stdout
