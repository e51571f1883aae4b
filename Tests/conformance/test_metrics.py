"""Operations: the daemon's Prometheus endpoint, scraped with prometheus_client's own parser during and after
real epochs served to the real trainer client, and checked against what that trainer received and what it
did (a trainer that sleeps a known time per batch; one that does nothing but read). Also: `serve.metrics`
defaults and errors, the HTTP surface, and that the example Grafana dashboard asks only for series the
daemon exports.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support
import loader_support as support
from daemon_support import WAIT_S, daemon_config, sample, scrape

sys.path.insert(0, str(support.REPO_ROOT / "clients" / "python"))

import nbserve  # noqa: E402  (the working copy in clients/python)

FRAMES = 4
BATCH = 2
# How far the daemon's figures may be from the trainer's own measurement: the client measures a batch's wait
# from its iterator's resumption to its hand-over, the test from just before `next()` to just after it; the
# difference is Python's generator overhead, far below a millisecond a batch, plus whatever a loaded machine
# preempts inside those few instructions (once in a run, at most a scheduler time slice).
PER_BATCH_S = 0.002
PREEMPTION_S = 0.03


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    return daemon_support.trainer_dataset(tmp_path_factory, "metrics", seed=5, frames=FRAMES, batch=BATCH)


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory()


def metrics_url(daemon) -> str:
    url = daemon.request({"cmd": "status"})["metrics"]
    assert isinstance(url, str) and re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), url
    return url


def leaf_bytes(value) -> int:
    """Bytes of every array in a (nested) batch."""
    if isinstance(value, dict):
        return sum(leaf_bytes(item) for item in value.values())
    return value.nbytes


def timed_epoch(loader, sleep_s: float, on_batch=None) -> tuple[list, list[float], float]:
    """Reads one epoch as a trainer whose step takes `sleep_s`: ([batch sizes and bytes], the wait the test
    itself measured around each `next()`, and the time it spent between them)."""
    received, waits, busy = [], [], 0.0
    iterator = iter(loader)
    while True:
        asked = time.monotonic()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        got = time.monotonic()
        waits.append(got - asked)
        received.append((len(getattr(loader, "loader", loader).last_header["sequences"]), leaf_bytes(batch)))
        if on_batch:
            on_batch(len(received), batch)
        del batch
        if sleep_s:
            time.sleep(sleep_s)
        busy += time.monotonic() - got
    return received, waits, busy


def scrape_until(url: str, check, what: str, timeout_s: float = 5.0) -> dict:
    """Scrapes until `check(families)` holds (gauges refresh four times a second); returns that scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        families = scrape(url)
        if check(families):
            return families
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_metrics_count_what_the_trainer_received_and_the_time_it_reported(binary, dataset, daemons, tmp_path, transport):
    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics="127.0.0.1:0"))
    url = metrics_url(daemon)
    before = scrape(url)
    assert sample(before, "nbserve_batches_sent_total", rank=0, stage="train") == 0
    assert sample(before, "nbserve_epoch", rank=0, stage="train") == -1
    assert sample(before, "nbserve_shared_memory_bytes") > 0
    assert abs(sample(before, "nbserve_start_time_seconds") - time.time()) < 120

    # Prometheus' naming conventions: one prefix, help on every family, counters (`_total`), base units.
    for family in before.values():
        assert family.name.startswith("nbserve_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), family
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "counter":  # the parser names the family without the suffix every sample has
            assert family.samples and all(each.name == family.name + "_total" for each in family.samples), family
    assert {"rank", "stage"} <= set(before["nbserve_trainer_wait_seconds"].samples[0].labels)

    sleep_s = 0.03
    mid = {}
    loader = nbserve.Loader(daemon.control, transport=transport)
    assert loader.transport == transport

    def halfway(count, batch):
        if count == 3:
            mid.update(scrape(url))
    received, waits, busy = timed_epoch(loader, sleep_s, halfway)
    n = len(received)
    assert n == 8 * 0.75 // BATCH * FRAMES  # 6 training sequences, 3 groups of 2 (drop_last) x 4 frames
    assert 3 <= sample(mid, "nbserve_batches_sent_total", rank=0, stage="train") <= n

    after = scrape(url)
    # What the trainer received, exactly.
    assert sample(after, "nbserve_batches_sent_total", rank=0, stage="train") == n
    assert sample(after, "nbserve_frames_sent_total", rank=0, stage="train") == sum(size for size, _ in received)
    assert sample(after, "nbserve_sent_bytes_total", rank=0, stage="train") == sum(nbytes for _, nbytes in received)
    assert sample(after, "nbserve_batches_sent_total", rank=0, stage="val") == 0
    for kind in ("decode", "worker_crash"):
        assert sample(after, "nbserve_errors_total", rank=0, stage="train", kind=kind) == 0
    # What it reported: a wait per batch, and its sleeps as busy time.
    assert sample(after, "nbserve_trainer_wait_seconds_count", rank=0, stage="train") == n
    wait_sum = sample(after, "nbserve_trainer_wait_seconds_sum", rank=0, stage="train")
    assert abs(wait_sum - sum(waits)) <= n * PER_BATCH_S + PREEMPTION_S, (wait_sum, sum(waits))
    reported_busy = sample(after, "nbserve_trainer_busy_seconds_total", rank=0, stage="train")
    assert n * sleep_s <= reported_busy <= busy + n * PER_BATCH_S + PREEMPTION_S, (reported_busy, busy)
    stall = sample(after, "nbserve_data_stall_ratio", rank=0, stage="train")
    assert stall == pytest.approx(wait_sum / (wait_sum + reported_busy), abs=1e-5)
    assert stall == pytest.approx(sum(waits) / (sum(waits) + busy), abs=0.05)
    buckets = [s for s in after["nbserve_trainer_wait_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["stage"] == "train"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == n
    assert all(a.value <= b.value for a, b in zip(buckets, buckets[1:])), "cumulative buckets"
    # The trainer's own view of the same.
    stats = loader.stats()
    assert stats["batches"] == n and stats["transport"] == transport
    assert stats["wait_s"] == pytest.approx(wait_sum, abs=n * 1e-6)
    assert stats["stall"] == pytest.approx(stall, abs=1e-4)
    assert stats["wait_p50_s"] <= stats["wait_p99_s"] <= stats["wait_max_s"]
    # Every frame sent was decoded by a worker (and the next epoch's first batches, decoded ahead).
    assert sample(after, "nbserve_decode_seconds_count", rank=0, stage="train") >= sum(size for size, _ in received)
    assert sample(after, "nbserve_decode_seconds_sum", rank=0, stage="train") > 0
    # The gauges, refreshed by the loop.
    scraped = scrape_until(url, lambda s: sample(s, "nbserve_epoch_batches_consumed", rank=0, stage="train") == n,
                           "the consumed gauge reaches the epoch's end")
    assert sample(scraped, "nbserve_epoch", rank=0, stage="train") == 0
    assert sample(scraped, "nbserve_epoch_batches", rank=0, stage="train") == n
    assert sample(scraped, "nbserve_workers") == 2
    assert sample(scraped, "nbserve_worker_restarts_total") == 0
    # Resident memory is read once a second: the first reading may predate the workers' start.
    scrape_until(url, lambda s: sample(s, "nbserve_resident_memory_bytes", process="daemon") > 1e6
                 and sample(s, "nbserve_resident_memory_bytes", process="workers") > 2 * 1e6, "resident memory of both")
    assert sample(scraped, "nbserve_ready_batches", rank=0, stage="train") >= 0
    scrape_until(url, lambda s: sample(s, "nbserve_held_leases", rank=0) == 0, "every lease released")
    # ctl status carries the epoch's figures too.
    trainer = daemon.rank_status()["train"]["trainer"]
    assert trainer["batches"] == n and trainer["stall"] == pytest.approx(stall, abs=1e-9)
    loader.close()

    # The example dashboard asks only for series that exist.
    dashboard = json.loads((support.REPO_ROOT / "config" / "grafana-dashboard.json").read_text())
    exported = set()
    for family in scraped.values():
        exported |= {each.name for each in family.samples} | {family.name}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\bnbserve_[a-z_]+", expr):
            assert name in exported, f"the dashboard's {expr!r} asks for {name}, which the daemon does not export"


def test_stall_follows_a_trainer_that_only_reads(binary, dataset, daemons, tmp_path):
    """A trainer that does nothing but read waits for every batch to be decoded: a high stall, as the trainer
    itself measures it, and again after a checkpoint-free second epoch (figures are per epoch)."""
    config = daemon_config(dataset, tmp_path, metrics="127.0.0.1:0")
    daemon = daemons(binary, config)
    url = metrics_url(daemon)
    loader = nbserve.Loader(daemon.control)
    for epoch in range(2):
        received, waits, busy = timed_epoch(loader, 0.0)
        n = len(received)
        own = sum(waits) / (sum(waits) + busy)
        scraped = scrape(url)
        stall = sample(scraped, "nbserve_data_stall_ratio", rank=0, stage="train")
        assert stall == pytest.approx(own, abs=0.1), (stall, own, waits, busy)
        assert sample(scraped, "nbserve_trainer_wait_seconds_count", rank=0, stage="train") == (epoch + 1) * n
        trainer = daemon.rank_status()["train"]["trainer"]
        assert trainer["batches"] == n, "per-epoch figures in ctl status"
    loader.close()


def test_a_poisoned_frame_counts_as_a_worker_crash_error(binary, dataset, daemons, tmp_path):
    """Error messages sent in place of batches are counted by kind: here workers die on every frame of one
    sequence (a debug-build hook), so each of its batches goes out as a `worker_crash` error."""
    import zmq

    config = daemon_config(dataset, tmp_path, metrics="127.0.0.1:0")
    plan = support.nb_plan(binary, config, epoch=0)
    poison = plan[0]["sequences"][0]
    daemon = daemons(binary, config, env={"NB_SERVE_TEST_FAULT": f"poison-sequence={poison}"})
    url = metrics_url(daemon)
    # A reader of docs/protocol.md: one epoch, errors included, to its end message.
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(daemon.config["serve"]["endpoint"].replace("{rank}", "0"))
    try:
        stream = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0})["stream"]
        kinds = []
        while True:
            assert pull.poll(WAIT_S * 1000), daemon.log_text()
            header = json.loads(pull.recv_multipart()[0])
            if header["stream"] != stream:
                continue
            if header["type"] == "end":
                break
            kinds.append(header["type"])
    finally:
        pull.close()
    poisoned = sum(poison in p["sequences"] for p in plan)
    assert kinds.count("error") == poisoned > 0 and kinds.count("batch") == len(plan) - poisoned
    scraped = scrape(url)
    assert sample(scraped, "nbserve_errors_total", rank=0, stage="train", kind="worker_crash") == poisoned
    assert sample(scraped, "nbserve_errors_total", rank=0, stage="train", kind="decode") == 0
    assert sample(scraped, "nbserve_batches_sent_total", rank=0, stage="train") == len(plan) - poisoned
    scrape_until(url, lambda s: sample(s, "nbserve_worker_restarts_total") == daemon.request({"cmd": "status"})["worker_restarts"] > 0,
                 "the restart counter follows ctl status")


def test_the_http_surface(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics="127.0.0.1:0"))
    host, port = re.match(r"http://([^:]+):(\d+)/metrics", metrics_url(daemon)).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    try:
        # Several requests on one keep-alive connection.
        for method, path, status in [("GET", "/metrics", 200), ("HEAD", "/metrics", 200), ("GET", "/", 404),
                                     ("POST", "/metrics", 405), ("GET", "/metrics?x=1", 200)]:
            connection.request(method, path)
            response = connection.getresponse()
            body = response.read()
            assert response.status == status, (method, path, response.status)
            if status == 200 and method == "GET":
                assert b"# TYPE nbserve_batches_sent_total counter" in body
            if method == "HEAD":
                assert body == b"" and int(response.headers["Content-Length"]) > 0
            if status == 405:
                assert response.headers["Allow"] == "GET, HEAD"
    finally:
        connection.close()


def test_metrics_addresses_are_checked_and_an_explicit_one_must_bind(binary, dataset, tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        taken = f"127.0.0.1:{blocker.getsockname()[1]}"
        for value, message in [(taken, f"serve.metrics: {taken} is in use by another process"),
                               ("localhost", "serve.metrics: 'localhost' is not an address: it is not HOST:PORT"),
                               ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
                               ("[::1", "an IPv6 address is written [ADDRESS]:PORT")]:
            directory = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
            directory.mkdir()
            result = support.run(binary, "run", "--config", str(daemon_config(dataset, directory, metrics=value)))
            assert result.returncode != 0, value
            assert message in result.stderr, (value, result.stderr)
            assert not list(directory.glob("*.sock")), "socket files left behind after a start-up error"
    finally:
        blocker.close()


def test_an_empty_address_turns_the_endpoint_off(binary, dataset, daemons, tmp_path):
    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics=""))
    assert daemon.request({"cmd": "status"})["metrics"] is None
    assert "metrics:" not in daemon.log_text()


NAMESPACE_SCRIPT = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    import zmq
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    binary, config, control = sys.argv[1:4]

    def start():
        process = subprocess.Popen([binary, "run", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        context = zmq.Context.instance()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            request = context.socket(zmq.REQ)
            request.setsockopt(zmq.LINGER, 0)
            request.connect(control)
            request.send_json({"cmd": "status"})
            if request.poll(500):
                status = request.recv_json()
                request.close()
                stop = context.socket(zmq.REQ)
                stop.setsockopt(zmq.LINGER, 0)
                stop.connect(control)
                stop.send_json({"cmd": "stop"})
                stop.poll(5000)
                stop.close()
                output = process.communicate(timeout=30)[0]
                return {"metrics": status["metrics"], "exit": process.returncode, "log": output}
            request.close()
            if process.poll() is not None:
                break
        process.kill()
        return {"metrics": None, "exit": process.wait(), "log": process.communicate()[0]}

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 9464))
    blocker.listen()
    taken = start()
    blocker.close()
    free = start()
    print(json.dumps({"taken": taken, "free": free}))
""")


def test_the_default_port_taken_is_logged_and_the_daemon_serves_on(binary, dataset, tmp_path):
    """In a network namespace of its own (so no other daemon on the machine holds or takes 127.0.0.1:9464): with
    the default port taken the daemon says so and serves without the endpoint; with it free it serves there."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0 or shutil.which("ip") is None:
        pytest.skip(f"needs a private network namespace (unshare --net: {probe.stderr.strip() or 'no ip command'})")
    config = daemon_config(dataset, tmp_path)
    control = daemon_support.yaml.safe_load(open(config))["serve"]["control"]
    script = tmp_path / "namespace.py"
    script.write_text(NAMESPACE_SCRIPT)
    result = subprocess.run(["unshare", "--net", sys.executable, str(script), str(binary), str(config), control],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    taken, free = outcome["taken"], outcome["free"]
    assert taken["exit"] == 0 and taken["metrics"] is None, taken
    assert "the default address 127.0.0.1:9464 is in use" in taken["log"], taken["log"]
    assert free["exit"] == 0 and free["metrics"] == "http://127.0.0.1:9464/metrics", free


def test_two_trainers_on_one_rank_are_visible_and_logged(binary, dataset, daemons, tmp_path):
    """Batches go out only while exactly one trainer is connected to a rank's socket: a second connection held
    open pauses the rank, which `status`, the metrics and (after 3 s) the log all say; when it goes, the rank
    goes on."""
    import zmq

    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics="127.0.0.1:0"))
    url = metrics_url(daemon)
    endpoint = daemon.config["serve"]["endpoint"].replace("{rank}", "0")
    context = zmq.Context.instance()
    first, second = context.socket(zmq.PULL), context.socket(zmq.PULL)
    for each in (first, second):
        each.setsockopt(zmq.LINGER, 0)
        each.connect(endpoint)
    try:
        stream = daemon.request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": 0})["stream"]
        scrape_until(url, lambda s: sample(s, "nbserve_connected_trainers", rank=0) == 2, "two connections counted")
        assert daemon.rank_status()["connected"] == 2
        assert not first.poll(1000) and not second.poll(0), "a rank with two trainers sent a message"
        deadline = time.monotonic() + WAIT_S
        while "rank 0: 2 trainers are connected" not in daemon.log_text():
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
        second.close()
        assert first.poll(WAIT_S * 1000), "the rank did not go on once one trainer was left"
        assert json.loads(first.recv_multipart()[0])["stream"] == stream
        scrape_until(url, lambda s: sample(s, "nbserve_connected_trainers", rank=0) == 1, "one connection left")
        assert "rank 0: one trainer connected again; sending resumes" in daemon.log_text()
    finally:
        first.close()
        second.close()


def test_the_torch_and_lightning_loaders_report_and_expose_the_same(binary, dataset, daemons, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs it)")
    import nbserve.torch

    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics="127.0.0.1:0"))
    url = metrics_url(daemon)
    loader = nbserve.torch.TrainingSampleLoader_v1(daemon.control)

    def tensors(count, batch):
        assert isinstance(batch["color"], torch.Tensor)
    _, waits, _ = timed_epoch(loader, 0.0, tensors)
    stats = loader.stats()
    n = stats["batches"]
    assert n == len(waits) > 0
    scraped = scrape(url)
    assert sample(scraped, "nbserve_trainer_wait_seconds_count", rank=0, stage="train") == n
    assert sample(scraped, "nbserve_trainer_wait_seconds_sum", rank=0, stage="train") == pytest.approx(stats["wait_s"], abs=n * 1e-6)
    # The torch loader's conversion is part of each wait, as the trainer sees it from outside.
    assert abs(stats["wait_s"] - sum(waits)) <= n * PER_BATCH_S + PREEMPTION_S
    loader.close()

    pytest.importorskip("lightning", reason="lightning is not installed (scripts/setup.sh installs it)")
    import nbserve.lightning

    module = nbserve.lightning.TrainingSampleLoader_v1(daemon.control)
    with pytest.raises(RuntimeError, match="no train loader has been made yet"):
        module.stats()
    train = module.train_dataloader()
    assert module.stats()["batches"] == 0 and module.stats("train")["stage"] == "train"
    train.close()


def test_loader_stats_quantiles_are_within_five_percent_of_numpys():
    """`loader.stats()` keeps its wait quantiles in a constant-size histogram (5% buckets), so a long run costs
    neither memory nor time per call; numpy's exact quantiles of the same waits are the oracle."""
    import numpy as np

    from nbserve._stats import Timing

    rng = np.random.default_rng(7)
    waits = np.concatenate([rng.lognormal(np.log(0.0007), 0.4, 5000), rng.uniform(0.01, 0.2, 200)])
    timing = Timing()
    for wait in waits:
        timing.asked()
        timing._asked -= wait  # the batch took `wait` to arrive
        timing.handed(1, 1)
    stats = timing.stats()
    assert stats["batches"] == len(waits)
    assert stats["wait_max_s"] == pytest.approx(waits.max(), rel=1e-3)
    for key, q in (("wait_p50_s", 0.5), ("wait_p90_s", 0.9), ("wait_p99_s", 0.99)):
        exact = np.quantile(waits, q, method="inverted_cdf")
        assert exact <= stats[key] * 1.0001 and stats[key] <= exact * 1.05 + 1e-5, (key, stats[key], exact)


def test_the_lightning_callback_logs_the_stall_next_to_the_loss(binary, dataset, daemons, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs it)")
    pytest.importorskip("lightning", reason="lightning is not installed (scripts/setup.sh installs it)")
    import csv

    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from nbserve.lightning import DataStallMonitor, TrainingSampleLoader_v1

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 3, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(0.01)  # a training step the loader keeps up with
            loss = torch.nn.functional.mse_loss(self.net(batch["color"].mean(-1)), batch["reference"])
            self.log("loss", loss, on_step=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    daemon = daemons(binary, daemon_config(dataset, tmp_path, metrics="127.0.0.1:0"))
    logger = CSVLogger(tmp_path / "logs", name="run")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[DataStallMonitor(every_n_train_steps=4)])
    trainer.fit(Tiny(), datamodule=TrainingSampleLoader_v1(daemon.control, pin_memory=False))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("data/stall")]
    n = 8 * 0.75 // BATCH * FRAMES
    # Logged at every 4th step (Lightning's CSV logger repeats a step-logged value on the rows after it).
    assert int(rows[0]["step"]) == 3, rows
    windows = {row["data/wait_s"]: row for row in rows}
    assert len(windows) == n // 4, rows
    for row in windows.values():
        assert 0 <= float(row["data/stall"]) < 0.5, row  # 10 ms steps: the loader keeps up
        assert 0 < float(row["data/wait_p50_s"]) <= float(row["data/wait_p99_s"])
        assert float(row["data/frames_per_s"]) > 0 and row["loss"]
    assert sample(scrape(metrics_url(daemon)), "nbserve_trainer_wait_seconds_count", rank=0, stage="train") == n
