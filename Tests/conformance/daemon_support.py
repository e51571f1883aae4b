"""Starting, talking to and stopping real `nb-serve run` daemons in tests (test_daemon.py, test_client.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np

import yaml
import zmq

import loader_support as support

WAIT_S = 30


def daemon_config(dataset: support.Dataset, directory: Path, data_path: Path | None = None, **serve) -> Path:
    """The dataset's config with ipc sockets and a state directory under `directory` (plus `serve` keys)."""
    config = support.merged_config(dataset.config, {"num_workers": 2})
    if data_path is not None:
        config["data_path"] = str(data_path)
    config["serve"] = {
        "world_size": 1,
        "endpoint": f"ipc://{directory}/rank{{rank}}.sock",
        "control": f"ipc://{directory}/control.sock",
        "prefetch": 3,
        "state_dir": str(directory / "state"),
        **serve,
    }
    return support.write_config(directory / "config.yaml", config)


class DaemonProcess:
    """A running `nb-serve run`: started, awaited until its control socket answers, stopped and reaped."""

    def __init__(self, binary: Path, config: Path, *extra: str, env: dict | None = None):
        self.config_path = config
        self.config = yaml.safe_load(open(config))
        self.control = self.config["serve"]["control"]
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(binary), "run", "--config", str(config), *extra], stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                self.request({"cmd": "status"}, timeout_s=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def request(self, body: dict, timeout_s: float = WAIT_S) -> dict:
        """One control request on a fresh REQ socket; TimeoutError when the daemon does not answer."""
        socket = zmq.Context.instance().socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.control)
        try:
            socket.send_json(body)
            if not socket.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"no reply to {body}")
            return socket.recv_json()
        finally:
            socket.close()

    def rank_status(self, rank: int = 0) -> dict:
        return next(r for r in self.request({"cmd": "status"})["ranks"] if r["rank"] == rank)

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signals the daemon (unless it already exited) and waits; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"daemon did not stop within {WAIT_S} s:\n{self.log_text()}")
        self.log.close()
        return self.process.returncode


def corrupt_first_chunk(zip_path: Path, array: str) -> str:
    """Overwrites 16 bytes in the middle of the first stored chunk of `array` in a ZipStore; returns its key."""
    with zipfile.ZipFile(zip_path) as archive:
        info = next(i for i in archive.infolist()
                    if i.filename.startswith(array + "/") and not i.filename.endswith(".zarray"))
    with open(zip_path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(fh.read(4), "<u2")
        fh.seek(info.header_offset + 30 + name_length + extra_length + info.compress_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 4)
    return info.filename


def daemon_factory(cls=DaemonProcess):
    """For a fixture: yields `start(...)`, and kills whatever is still running afterwards."""
    started = []

    def start(*args, **kwargs):
        daemon = cls(*args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)
        elif not daemon.log.closed:
            daemon.stop()


def kill_trainer_holding_leases(daemon: DaemonProcess, argv: list[str], rank: int = 0) -> dict:
    """Starts a trainer process (`argv`) that prints "holding" once it holds shared-memory leases, kills it with
    SIGKILL, and waits until the daemon has taken back its session and every lease; returns the rank's status
    as it was while the trainer held them."""
    trainer = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "holding"
        holding = daemon.rank_status(rank)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(WAIT_S)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    deadline = time.monotonic() + WAIT_S
    while (status := daemon.rank_status(rank))["held_leases"] or status["shm_session"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    return holding


def scrape(url: str) -> dict:
    """The daemon's /metrics parsed by prometheus_client's own text parser: {family name: family}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels) -> float:
    """The value of the one sample `name` with exactly these labels (a family's own name, or a histogram's
    `_count`/`_sum`/`_bucket` sample, or a counter's `_total`)."""
    for family in families.values():
        for each in family.samples:
            if each.name == name and each.labels == {key: str(value) for key, value in labels.items()}:
                return each.value
    raise AssertionError(f"no sample {name}{labels} in the scrape")


def trainer_dataset(tmp_path_factory, name: str, seed: int, frames: int = 4, batch: int = 2) -> support.Dataset:
    """The small dataset the trainer-client suites share: 8 sequences of `frames` frames, val_split 0.25, so 6
    training sequences (three groups of `batch`: 12 batches an epoch with the defaults) and 2 validation ones."""
    root = tmp_path_factory.mktemp(f"{name}-data")
    return support.generate_dataset(
        root, name, sequences=8, frames=frames, crop=16, samples=4, height=48, width=80, seed=seed,
        reference_samples=4, loader={"batch_size": batch, "val_split": 0.25, "samples": 4})
