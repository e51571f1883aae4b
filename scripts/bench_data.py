"""The benchmark dataset shared by scripts/bench_decode.py and scripts/bench_transport.py: crop 256, 32 stored
samples, all buffers, `samples: 8`, generated once with the test fixtures' generator (zarr-python)."""

import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "Tests", "fixtures"))

import make_dataset  # noqa: E402

DEFAULT_DATA = os.path.join(root, "bench-data")
DEFAULT_BINARY = os.path.join(root, ".build", "release", "nb-serve")


def ensure(data: str, binary: str) -> str:
    """The dataset's config path, generating the dataset first when it is absent; exits when `binary` is missing."""
    config = os.path.join(data, "dataset.yaml")
    if not os.path.exists(config):
        print(f"bench: generating the benchmark dataset in {data} (a few minutes, once)", file=sys.stderr)
        make_dataset.write_dataset(
            data, sequences=3, frames=4, crop=256, samples=32, height=540, width=960, seed=11, reference_samples=8,
            loader={"batch_size": 1, "val_split": 0.0, "samples": 8})
    if not os.path.exists(binary):
        sys.exit(f"bench: {binary} is missing; run `swift build -c release`")
    return config
