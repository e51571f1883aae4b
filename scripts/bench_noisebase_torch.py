#!/usr/bin/env python3
"""noisebase's own torch loader (TrainingSampleLoader_v1, its DataLoader workers) on the same files as
`nb-serve bench`: frames/s over N batches after the first, for the README's side-by-side table.
Needs torch (and noisebase 1.1.1); run it where torch is installed.

    scripts/bench_noisebase_torch.py bench-data/dataset.yaml --workers 2 --batches 48
"""

import argparse
import json
import time

import yaml
from noisebase.loaders.torch import TrainingSampleLoader_v1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=48)
    args = parser.parse_args()
    config = yaml.safe_load(open(args.config))
    config.update(num_workers=args.workers, stage="train")
    for key in ("name", "framework", "data_remote", "type", "serve"):
        config.pop(key, None)
    loader = TrainingSampleLoader_v1(get_epoch=lambda: 0, **config)
    start = time.perf_counter()
    first = None
    frames = 0
    count = 0
    while count < args.batches:
        for batch in loader:
            count += 1
            if first is None:
                first = time.perf_counter()
            else:
                frames += batch["crop_offset"].shape[0]
            if count >= args.batches:
                break
    elapsed = time.perf_counter() - first
    print(json.dumps({"workers": args.workers, "batches": count, "frames_per_s": frames / elapsed,
                      "first_batch_s": first - start}))


if __name__ == "__main__":
    main()
