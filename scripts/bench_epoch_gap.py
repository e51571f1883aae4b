#!/usr/bin/env python3
"""Epoch-boundary benchmark: how long a trainer that asks for the next epoch at once waits for its first batch.

Starts `nb-serve run` (release build) on the benchmark dataset (scripts/bench_data.py) with `--workers`
workers and reads `--epochs` train epochs over shared memory from Python, written from docs/protocol.md
alone (no client package), releasing each batch at once. For each epoch it prints the request's round trip,
the time from the request to the epoch's first batch, and the mean interval between its batches. A consumer
this fast is limited by decoding, so the daemon can be at most a few batches ahead: the first epoch was
decoded ahead at start-up, later ones only while the previous epoch was read.

    scripts/bench_epoch_gap.py [--workers 2] [--epochs 8] [--data bench-data] [--nb-serve .build/release/nb-serve] [--json]
"""

import argparse
import json
import mmap
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import yaml
import zmq

import bench_data  # noqa: E402  (beside this script)


class Session:
    """The shared-memory session of rank 0 (docs/protocol.md section 7)."""

    def __init__(self, path: str):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.connect(path)
        self.send({"hello": 1, "rank": 0})
        header, fds, _, _ = socket.recv_fds(self.socket, 4, 1)
        reply = json.loads(self.socket.recv(struct.unpack("<I", header)[0]))
        self.memory = mmap.mmap(fds[0], reply["bytes"], prot=mmap.PROT_READ)

    def send(self, body: dict):
        data = json.dumps(body).encode()
        self.socket.sendall(struct.pack("<I", len(data)) + data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data", default=bench_data.DEFAULT_DATA)
    parser.add_argument("--nb-serve", default=bench_data.DEFAULT_BINARY)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config_path = bench_data.ensure(args.data, args.nb_serve)

    directory = tempfile.mkdtemp(prefix="nb-serve-gap-")
    config = yaml.safe_load(open(config_path))
    config["data_path"] = os.path.abspath(args.data)
    config["num_workers"] = args.workers
    config["serve"] = {"endpoint": f"ipc://{directory}/rank{{rank}}.sock", "control": f"ipc://{directory}/control.sock"}
    with open(f"{directory}/config.yaml", "w") as fh:
        yaml.safe_dump(config, fh)
    daemon = subprocess.Popen([args.nb_serve, "run", "--config", f"{directory}/config.yaml"], stderr=subprocess.DEVNULL)
    context = zmq.Context()
    control = context.socket(zmq.REQ)
    control.setsockopt(zmq.RCVTIMEO, 30000)
    control.connect(f"ipc://{directory}/control.sock")

    def request(body: dict) -> dict:
        control.send_json(body)
        return control.recv_json()

    rows = []
    try:
        status = request({"cmd": "status"})
        while not (status["ranks"][0]["train"]["ahead"] or {}).get("ready"):
            status = request({"cmd": "status"})  # the start-up lookahead has its first batch
        session = Session(status["shm_socket"])
        data = context.socket(zmq.PULL)
        data.setsockopt(zmq.RCVTIMEO, 30000)
        data.connect(f"ipc://{directory}/rank0.sock")
        for epoch in range(args.epochs):
            asked = time.perf_counter()
            reply = request({"cmd": "epoch", "rank": 0, "stage": "train", "epoch": epoch, "transport": "shm"})
            answered = time.perf_counter()
            arrivals = []
            while True:
                header = json.loads(data.recv())
                if header["stream"] != reply["stream"]:
                    continue
                if header["type"] == "end":
                    break
                arrivals.append(time.perf_counter())
                session.send({"release": [header["lease"]]})
            interval = (arrivals[-1] - arrivals[0]) / max(1, len(arrivals) - 1)
            rows.append({"epoch": epoch, "request_ms": 1000 * (answered - asked),
                         "first_batch_ms": 1000 * (arrivals[0] - asked), "interval_ms": 1000 * interval})
        request({"cmd": "stop"})
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    if args.json:
        print(json.dumps(rows))
        return
    print("| epoch | request round trip (ms) | first batch after the request (ms) | mean batch interval (ms) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['epoch']} | {row['request_ms']:.1f} | {row['first_batch_ms']:.1f} | {row['interval_ms']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
