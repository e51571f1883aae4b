#!/usr/bin/env python3
"""Worker scaling and GPU feed: issue 9's table, in one script that needs only the nb-serve binary, numpy and
pyzmq (and torch for `--device cuda`), so that it runs on a lent machine with nothing installed from the network.

1. Writes a benchmark dataset natively (`nb-serve demo --generate-only` with a crop-256 config: 16 sequences of
   8 frames, 8 stored samples, all nine buffers, `batch_size: 8`), unless it is there already.
2. For each worker count: `nb-serve bench --workers N --transport shm` (the daemon with N workers, batches read
   from its shared memory): frames/s, scaling efficiency against one worker (frames/s ÷ (N × frames/s at 1)),
   first batch after the request, the daemon's own CPU per frame.
3. With the largest worker count, the real Python client as a trainer (`python -m nbserve bench`) into
   `--device` (`cuda`: every batch copied into GPU memory, GB/s), over shared memory.
4. Where noisebase (and torch) can be imported, noisebase's own torch loader on the same files with as many
   DataLoader workers (`scripts/bench_noisebase_torch.py`), for the side-by-side figure.

Prints a Markdown table (and `--json` a JSON object). Ratios taken in one run are what to compare.

    scripts/bench_scaling.py [--binary .build/release/nb-serve] [--workers 1,2,4,8,16] [--batches 160]
                             [--device cpu|cuda] [--data bench-data/scaling] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "clients", "python")

DATASET = """\
# nb-serve's worker-scaling benchmark dataset (scripts/bench_scaling.py), written by `nb-serve demo`.
data_path: .
src:
  sequences: 16
  files: scene{{index:04d}}.zip
  frames_per_sequence: 8
  crop: 256
  samples: 8
  rendering_height: 540
  rendering_width: 960
buffers: [normal, motion, depth, w_normal, w_motion, w_position, diffuse, color, reference]
samples: 8
flip_rotate: true
batch_size: 8
num_workers: {workers}
shuffle: true
drop_last: true
val_split: 0.0
seed: 42
stage: train
serve:
  world_size: 1
  endpoint: "ipc://{sockets}/rank{{rank}}.sock"
  control: "ipc://{sockets}/control.sock"
  metrics: ""
  prefetch: 4
"""


def config_text(workers: int, sockets: str) -> str:
    return DATASET.format(workers=workers, sockets=sockets)


def ensure_dataset(binary: str, data: str, sockets: str) -> str:
    """The dataset's config (with this run's socket directory), writing the dataset first when it is absent."""
    os.makedirs(data, exist_ok=True)
    config = os.path.join(data, "scaling.yaml")
    with open(config, "w") as f:
        f.write(config_text(1, sockets))
    if not os.path.exists(os.path.join(data, "scene0015.zip")):
        print(f"bench_scaling: writing the dataset to {data}", file=sys.stderr)
        started = time.monotonic()
        subprocess.run([binary, "demo", "--generate-only", "--config", config], check=True)
        print(f"bench_scaling: dataset written in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return config


def bench(binary: str, config: str, workers: int, batches: int) -> dict:
    out = subprocess.run([binary, "bench", "--config", config, "--workers", str(workers), "--batches", str(batches),
                          "--transport", "shm", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def client_bench(binary: str, config: str, workers: int, batches: int, device: str, control: str) -> dict:
    """`python -m nbserve bench` against a daemon with `workers` workers."""
    sys.path.insert(0, CLIENT)
    from nbserve import ControlClient

    daemon = subprocess.Popen([binary, "run", "--config", config, "--workers", str(workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ControlClient(control, 1.0).request({"cmd": "status"})
                break
            except Exception:  # not answering yet (DaemonUnavailable, TimeoutError, a lost connection)
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench_scaling: the daemon did not start: {daemon.stderr.read()}")
                time.sleep(0.2)
        env = {**os.environ, "PYTHONPATH": CLIENT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run([sys.executable, "-m", "nbserve", "bench", "--control", control, "--batches", str(batches),
                              "--transport", "shm", "--device", device, "--json"],
                             check=True, capture_output=True, text=True, env=env)
        return json.loads(out.stdout)
    finally:
        try:
            ControlClient(control, 5.0).request({"cmd": "stop"})
            daemon.wait(30)
        except Exception:
            daemon.kill()
            daemon.wait()


def noisebase_bench(config: str, workers: int, batches: int) -> dict | None:
    """noisebase's own torch loader on the same files, where it can be imported."""
    probe = subprocess.run([sys.executable, "-c", "import noisebase.loaders.torch, yaml"], capture_output=True)
    if probe.returncode != 0:
        return None
    # noisebase takes a relative data_path from its working directory.
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_noisebase_torch.py"), config,
                          "--workers", str(workers), "--batches", str(batches)], capture_output=True, text=True,
                         cwd=os.path.dirname(config))
    if out.returncode != 0:
        print(f"bench_scaling: noisebase's loader failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "nb-serve"),
                        help="the nb-serve binary (default: the release build)")
    parser.add_argument("--workers", default=",".join(str(n) for n in (1, 2, 4, 8, 12, 16) if n <= (os.cpu_count() or 1)),
                        help="worker counts, comma-separated (default: 1, 2, 4, 8, 12, 16 up to this machine's CPUs)")
    parser.add_argument("--batches", type=int, default=160, help="batches per measurement (of 8 frames each)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the Python client puts batches")
    parser.add_argument("--data", default=os.path.join(ROOT, "bench-data", "scaling"), help="the dataset's directory")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"bench_scaling: {args.binary} is missing; run `swift build -c release`")
    counts = sorted({int(n) for n in args.workers.split(",")})

    # ipc socket paths must be short (about 100 bytes): a temporary directory, not the dataset's.
    sockets = tempfile.mkdtemp(prefix="nbs-")
    try:
        config = ensure_dataset(args.binary, args.data, sockets)
        rows = []
        for workers in counts:
            result = bench(args.binary, config, workers, args.batches)
            rows.append({"workers": workers, **result})
            print(f"bench_scaling: {workers} workers: {result['frames_per_s']:.1f} frames/s", file=sys.stderr)
        base = next((row["frames_per_s"] for row in rows if row["workers"] == 1), None)
        for row in rows:
            row["efficiency"] = row["frames_per_s"] / (row["workers"] * base) if base else None
        client = client_bench(args.binary, config, counts[-1], args.batches, args.device, f"ipc://{sockets}/control.sock")
        baseline = noisebase_bench(config, counts[-1], min(args.batches, 48))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)

    print(f"| workers | frames/s | efficiency vs 1 worker | first batch after the request | daemon CPU per frame |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        efficiency = f"{row['efficiency']:.2f}" if row["efficiency"] is not None else "—"
        print(f"| {row['workers']} | {row['frames_per_s']:.1f} | {efficiency} | "
              f"{row['first_batch_after_ready_s'] * 1e3:.1f} ms | {row['daemon_cpu_ms_per_frame']:.2f} ms |")
    print()
    print(f"Python client, {counts[-1]} workers, into {client['device']} over {client['transport']}: "
          f"{client['frames_per_s']:.1f} frames/s, {client['mb_per_s'] / 1e3:.2f} GB/s, first batch "
          f"{client['first_batch_s']:.3f} s")
    if baseline is not None:
        print(f"noisebase's torch loader, {counts[-1]} DataLoader workers: {baseline['frames_per_s']:.1f} frames/s "
              f"({client['frames_per_s'] / baseline['frames_per_s']:.1f}x for nb-serve's client)")
    else:
        print("noisebase's torch loader: not run (noisebase, yaml or torch cannot be imported here)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": rows, "client": client, "noisebase": baseline, "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
