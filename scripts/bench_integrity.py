#!/usr/bin/env python3
"""What noticing a changed dataset file costs, per decoded frame, for the two designs of issue 10 item 7:

* **signature**: before each chunk read, stat the file (device, inode, size, mtime, ctime) and compare it
  with the mapped version; CRC-32 only on an entry's first read and after a change (what nb-serve does);
* **CRC every read**: CRC-32 of every stored entry on every read.

Both costs are measured on the benchmark dataset's real files with the same libc `stat` and zlib `crc32`
that nb-serve calls (through Python's thin wrappers; the per-call overhead of Python is measured and
subtracted for `stat`), and set against the time `nb-serve bench --decode-only` takes per frame on the
same frames. Counts per frame (chunk reads, stored bytes) come from the frames' chunk keys.

    scripts/bench_integrity.py [--data bench-data] [--nb-serve .build/release/nb-serve] [--frames 24]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import timeit
import zipfile
import zlib

import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_frame_reads(config: dict, data: str) -> tuple[int, int]:
    """Chunk reads and stored bytes for one frame, averaged over the dataset's frames: every chunk of
    each buffer's arrays that holds samples 0..<samples of the frame (as the decoder reads them)."""
    samples = config["samples"]
    buffers = config["buffers"]
    arrays = {"normal": ["normal"], "motion": ["motion", "position"], "depth": ["position"], "w_normal": ["normal"],
              "w_motion": ["motion"], "w_position": ["position"], "diffuse": ["diffuse"], "color": ["color"],
              "reference": ["reference"]}
    names = sorted({a for b in buffers for a in arrays.get(b, [b])})
    reads = stored = frames = 0
    for index in range(config["src"]["sequences"]):
        path = os.path.join(data, f"scene{index:04d}.zip")
        with zipfile.ZipFile(path) as archive:
            entries = {i.filename: i for i in archive.infolist()}
            for name in names:
                meta = json.loads(archive.read(f"{name}/.zarray"))
                per_frame_chunks = []
                chunks = meta["chunks"]
                shape = meta["shape"]
                for key, info in entries.items():
                    if not key.startswith(name + "/") or key.endswith(".zarray"):
                        continue
                    index_parts = [int(p) for p in key[len(name) + 1:].split(".")]
                    if index_parts[0] != 0:
                        continue  # frame 0's chunks stand for every frame's
                    if len(shape) == 5 and index_parts[4] * chunks[4] >= samples:
                        continue
                    per_frame_chunks.append(info.compress_size)
                reads += len(per_frame_chunks)
                stored += sum(per_frame_chunks)
        frames += 1
    return reads // frames, stored // frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(root, "bench-data"))
    parser.add_argument("--nb-serve", default=os.path.join(root, ".build", "release", "nb-serve"))
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    config_path = os.path.join(args.data, "dataset.yaml")
    if not os.path.exists(config_path):
        sys.exit(f"bench: {config_path} is missing; scripts/bench_decode.py generates it")
    config = yaml.safe_load(open(config_path))
    reads, stored = per_frame_reads(config, args.data)
    path = os.path.join(args.data, "scene0000.zip")

    # stat: the fastest of several rounds, minus Python's own per-call overhead (a no-op call).
    rounds = 20000
    stat_s = min(timeit.repeat(lambda: os.stat(path), number=rounds, repeat=7)) / rounds
    noop_s = min(timeit.repeat(lambda: len(path), number=rounds, repeat=7)) / rounds
    stat_s = max(stat_s - noop_s, 0.0)

    # crc32 over the real stored entries (the bytes a frame's reads cover), fastest of several passes.
    with zipfile.ZipFile(path) as archive:
        blobs = []
        with open(path, "rb") as fh:
            raw = fh.read()
        for info in archive.infolist():
            if info.compress_type == zipfile.ZIP_STORED and info.file_size > 4096:
                start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                blobs.append(memoryview(raw)[start:start + info.compress_size])
    total = sum(len(b) for b in blobs)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for blob in blobs:
            zlib.crc32(blob)
        best = min(best, time.perf_counter() - started)
    crc_bytes_per_s = total / best

    bench = json.loads(subprocess.run(
        [args.nb_serve, "bench", "--config", config_path, "--decode-only", "--frames", str(args.frames), "--json"],
        check=True, capture_output=True, text=True).stdout)
    frame_s = 1 / bench["frames_per_s"]
    signature = 2 * reads * stat_s  # the archive's check and the array's check of its .zarray
    every = stored / crc_bytes_per_s
    print("| per decoded frame (crop 256, 8 samples, all buffers) | time | share of the decode |")
    print("| --- | --- | --- |")
    print(f"| decode + augment (`bench --decode-only`, {bench['frames_per_s']:.1f} frames/s) | {frame_s * 1e3:.2f} ms | 100% |")
    print(f"| signature: {2 * reads} `stat` calls ({stat_s * 1e6:.2f} µs each) | {signature * 1e3:.3f} ms | "
          f"{signature / frame_s * 100:.2f}% |")
    print(f"| CRC every read: {stored / 1e6:.2f} MB of stored entries at {crc_bytes_per_s / 1e9:.2f} GB/s | "
          f"{every * 1e3:.2f} ms | {every / frame_s * 100:.1f}% |")


if __name__ == "__main__":
    main()
