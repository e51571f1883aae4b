#!/usr/bin/env python3
"""Transport benchmark: what reaches a trainer end to end, against what one thread decodes, in one script.

On the decode benchmark's dataset (crop 256, 32 stored samples, all nine buffers, ``samples: 8``; generated
once, as ``scripts/bench_decode.py`` does), runs one after another:

* ``nb-serve bench --decode-only``: one thread decoding the train plan's frames (no daemon, no sockets),
  sustained over as many frames as the end-to-end runs pull (one round: no best-of-rounds);
* the same in ``--workers`` processes at once: what this machine can decode in parallel (its cores may share
  memory bandwidth, so this is the ceiling for any number of workers);
* ``nb-serve bench --transport shm``: the daemon with ``--workers`` workers, batches read straight from its
  shared memory, as same-host trainers read them;
* ``nb-serve bench --transport zmq``: the same, batches copied through the rank's ZeroMQ socket.

Prints frames/s and the ratios (the machine is shared: only ratios taken in one run are meaningful), and the
daemon process's own CPU per frame (its loop and libzmq's threads; the workers are other processes).

    scripts/bench_transport.py [--workers 2] [--batches 480] [--data bench-data] [--nb-serve .build/release/nb-serve] [--json]
"""

import argparse
import json
import subprocess

import bench_data  # noqa: E402  (beside this script)


def run(binary: str, *args: str) -> dict:
    return json.loads(subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True).stdout)


def parallel_decode(binary: str, config: str, processes: int, frames: int) -> float:
    """Frames/s of `processes` single-thread decoders running at the same time, added up."""
    argv = [binary, "bench", "--config", config, "--decode-only", "--frames", str(frames), "--rounds", "1", "--json"]
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(json.loads(process.communicate()[0])["frames_per_s"] for process in running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=480)
    parser.add_argument("--data", default=bench_data.DEFAULT_DATA)
    parser.add_argument("--nb-serve", default=bench_data.DEFAULT_BINARY)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    config = bench_data.ensure(args.data, args.nb_serve)

    decode = run(args.nb_serve, "bench", "--config", config, "--decode-only", "--frames", str(args.batches), "--rounds", "1")
    ceiling = parallel_decode(args.nb_serve, config, args.workers, args.batches)
    shm = run(args.nb_serve, "bench", "--config", config, "--batches", str(args.batches), "--workers", str(args.workers),
              "--transport", "shm")
    zmq = run(args.nb_serve, "bench", "--config", config, "--batches", str(args.batches), "--workers", str(args.workers),
              "--transport", "zmq")
    result = {
        "workers": args.workers,
        "decode_one_thread_frames_per_s": decode["frames_per_s"],
        "decode_parallel_frames_per_s": ceiling,
        "shm": shm,
        "zmq": zmq,
        "shm_vs_one_thread": shm["frames_per_s"] / decode["frames_per_s"],
        "shm_vs_zmq": shm["frames_per_s"] / zmq["frames_per_s"],
        "shm_vs_parallel_decode": shm["frames_per_s"] / ceiling,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"| end to end, {args.workers} workers (crop 256, all buffers, samples 8) | frames/s | MB/s | "
          f"vs 1 decode thread | daemon CPU ms/frame | first batch after request (s) | epoch gap (s) | batch interval (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| decode only, 1 thread | {decode['frames_per_s']:.1f} | {decode['mb_per_s']:.0f} | 1.00× | – | – | – | – |")
    print(f"| decode only, {args.workers} processes at once (added up) | {ceiling:.1f} | – | "
          f"{ceiling / decode['frames_per_s']:.2f}× | – | – | – | – |")
    for name, report in (("shared memory", shm), ("ZeroMQ frames", zmq)):
        gap = report["epoch_gap_s"]
        print(f"| {name} | {report['frames_per_s']:.1f} | {report['mb_per_s']:.0f} | "
              f"{report['frames_per_s'] / decode['frames_per_s']:.2f}× | {report['daemon_cpu_ms_per_frame']:.3f} | "
              f"{report['first_batch_after_ready_s']:.3f} | {'–' if gap is None else f'{gap:.3f}'} | {report['batch_interval_s']:.3f} |")
    print(f"\nshared memory / ZeroMQ: {result['shm_vs_zmq']:.2f}×; shared memory / parallel decode: "
          f"{result['shm_vs_parallel_decode']:.2f}×")


if __name__ == "__main__":
    main()
