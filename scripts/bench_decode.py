#!/usr/bin/env python3
"""Decode benchmark: nb-serve against noisebase's own ``__getitem__`` on the same files, in one script.

Generates (once) a Sample Training Format v1 dataset at the benchmark geometry — crop 256, 32 stored
samples, all buffers, ``samples: 8`` — then times, one thread each, the same frames of the train plan:

* noisebase 1.1.1's ``TrainingSampleDataset.__getitem__`` (its numpy code, torch stubbed where absent);
* ``nb-serve bench --decode-only --json``, which also measures its floor: decompressing the chunks the
  frames need plus writing the output once.

Prints a Markdown table of frames/s and the ratios (the machine is shared: only ratios are meaningful).

    scripts/bench_decode.py [--frames 24] [--data bench-data] [--nb-serve .build/release/nb-serve] [--json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import bench_data  # noqa: E402  (beside this script)
import noisebase_oracle as oracle  # noqa: E402


def noisebase_frames_per_s(config: str, frames: int) -> float:
    loader = oracle.build_loader(config, stage="train", get_epoch=lambda: 0)
    items = [item for batch in loader.batch_sampler for item in batch]
    items = (items * (frames // len(items) + 1))[:frames]
    loader.dataset[items[0]]  # warm-up: imports, first file open
    start = time.perf_counter()
    for item in items:
        loader.dataset[item]
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--data", default=bench_data.DEFAULT_DATA)
    parser.add_argument("--nb-serve", default=bench_data.DEFAULT_BINARY)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    config = bench_data.ensure(args.data, args.nb_serve)

    ours = json.loads(subprocess.run(
        [args.nb_serve, "bench", "--config", config, "--decode-only", "--frames", str(args.frames), "--json"],
        check=True, capture_output=True, text=True).stdout)
    theirs = noisebase_frames_per_s(config, args.frames)
    result = {
        "frames": args.frames,
        "noisebase_frames_per_s": theirs,
        "nb_serve_frames_per_s": ours["frames_per_s"],
        "nb_serve_mb_per_s": ours["mb_per_s"],
        "floor_frames_per_s": ours["floor_frames_per_s"],
        "speedup_vs_noisebase": ours["frames_per_s"] / theirs,
        "times_floor": ours["times_floor"],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"| decoder (1 thread, crop 256, 8 of 32 samples, all buffers) | frames/s | vs noisebase |")
    print(f"| --- | --- | --- |")
    print(f"| noisebase 1.1.1 `__getitem__` | {theirs:.1f} | 1.00× |")
    print(f"| nb-serve | {ours['frames_per_s']:.1f} | {result['speedup_vs_noisebase']:.2f}× |")
    print(f"| floor: decompress needed chunks + write output once | {ours['floor_frames_per_s']:.1f} | "
          f"{ours['floor_frames_per_s'] / theirs:.2f}× |")
    print(f"\nnb-serve takes {ours['times_floor']:.2f}× the floor's time; {ours['mb_per_s']:.0f} MB/s of output.")


if __name__ == "__main__":
    main()
