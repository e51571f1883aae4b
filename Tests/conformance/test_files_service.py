"""The systemd unit's sandbox against what the daemon really does.

There is no systemd to run the unit under here, so the daemon runs under strace through a whole working
life (start, an epoch over ipc, a worker killed and replaced, checkpoint, `stop`) and every system call it
and its workers make must be allowed by the unit's `SystemCallFilter=` lines, as `systemd-analyze
syscall-filter` defines the groups; every /proc path it opens must be one `ProcSubset=pid` keeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import zmq

import daemon_support
import loader_support as support

UNIT = support.REPO_ROOT / "systemd" / "nb-serve.service"
WAIT_S = daemon_support.WAIT_S


def expand(group: str, seen: set | None = None) -> set[str]:
    """The system calls of a `@group` (recursively) or the call itself."""
    if not group.startswith("@"):
        return {group}
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    listing = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item, seen)
    return calls


def allowed_system_calls(unit_text: str) -> set[str]:
    """Applies the unit's SystemCallFilter= lines in order, as systemd does: the first line is an allow
    list (or, starting with ~, a deny list over everything), later lines add to it or take from it."""
    lines = [line.split("=", 1)[1].strip() for line in unit_text.splitlines() if line.startswith("SystemCallFilter=")]
    assert lines and not lines[0].startswith("~"), "the unit's first SystemCallFilter= must be an allow list"
    allowed: set[str] = set()
    for value in lines:
        deny = value.startswith("~")
        names = set().union(*(expand(item) for item in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("service-data")
    return support.generate_dataset(
        root, "service", sequences=3, frames=2, crop=8, samples=2, height=24, width=40, seed=4,
        reference_samples=2, loader={"batch_size": 1, "val_split": 0.34, "samples": 2})


def test_the_daemon_stays_inside_the_units_system_call_filter_and_proc_subset(dataset, tmp_path):
    strace = shutil.which("strace")
    assert strace, "strace is missing (scripts/setup.sh installs it)"
    binary = support.require_binary()
    # As config/sampleset_v1.yaml: sockets with a group (here this process's own), and the shared-memory
    # transport beside ZMQ frames, so every call those make is traced too.
    import grp
    # The metrics endpoint too (its own event-loop thread, an HTTP scrape).
    config = daemon_support.daemon_config(dataset, tmp_path, socket_mode="0660", socket_group=grp.getgrgid(os.getgid()).gr_name,
                                          metrics="127.0.0.1:0")
    trace = tmp_path / "trace"
    log = open(tmp_path / "daemon.log", "w")
    process = subprocess.Popen([strace, "-f", "-qq", "-o", str(trace), "-e", "trace=all", "-e", "signal=none",
                                str(binary), "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    control = f"ipc://{tmp_path}/control.sock"

    def request(body: dict, timeout_s: float = WAIT_S) -> dict:
        socket = zmq.Context.instance().socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(control)
        try:
            socket.send_json(body)
            if not socket.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"no reply to {body}")
            return socket.recv_json()
        finally:
            socket.close()

    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                assert request({"cmd": "status"}, timeout_s=0.5)["ok"]
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the daemon under strace never answered"
        socket = zmq.Context.instance().socket(zmq.PULL)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(f"ipc://{tmp_path}/rank0.sock")
        reply = request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0})
        assert reply["ok"], reply
        received = 0
        while True:
            assert socket.poll(WAIT_S * 1000), "no batch within the deadline"
            header = json.loads(socket.recv_multipart()[0])
            if header["type"] == "end":
                break
            received += 1
            request({"cmd": "ack", "rank": 0, "stage": "train", "epoch": 0, "batches": received})
        from test_shm import Session
        session = Session(request({"cmd": "status"})["shm_socket"])
        reply = request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 1, "transport": "shm"})
        assert reply["ok"], reply
        while True:
            assert socket.poll(WAIT_S * 1000), "no lease within the deadline"
            header = json.loads(socket.recv_multipart()[0])
            if header["type"] == "end" and header["stream"] == reply["stream"]:
                break
            if header["type"] == "lease":
                session.release(header["lease"])
        session.close()
        socket.close()
        status = request({"cmd": "status"})
        assert "nbserve_batches_sent" in daemon_support.scrape(status["metrics"])
        worker = status["workers"][0]["pid"]
        os.kill(worker, signal.SIGKILL)
        assert request({"cmd": "checkpoint"})["ok"]
        request({"cmd": "status"})
        assert request({"cmd": "stop"})["ok"]  # (a SIGTERM would reach strace, not the daemon)
        process.wait(WAIT_S)
        assert process.returncode == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    text = trace.read_text()
    used = set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", text, flags=re.M))
    used |= set(re.findall(r"<\.\.\. ([a-z_0-9]+) resumed>", text))
    assert {"execve", "openat", "mmap"} <= used, sorted(used)  # the trace is real
    allowed = allowed_system_calls(UNIT.read_text())
    outside = sorted(used - allowed)
    assert not outside, f"system calls outside the unit's filter: {outside}"
    proc_paths = set(re.findall(r'"(/proc/[^"]*)"', text))
    hidden = sorted(p for p in proc_paths if not re.match(r"/proc/(self|thread-self|\d+)(/|$)", p))
    assert not hidden, f"/proc paths that ProcSubset=pid hides: {hidden}"
