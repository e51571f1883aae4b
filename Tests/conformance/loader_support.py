"""Machinery for test_loader.py: nb-serve's `plan` / `dump` beside noisebase 1.1.1's own loader code.

The oracle is noisebase's real ``TrainingSampleLoader_v1`` (its ``Shuffler``, ``VideoSampler`` and
``TrainingSampleDataset.__getitem__``), imported through Tests/fixtures/noisebase_oracle.py with the few torch
names it touches stubbed. Nothing here re-implements noisebase's semantics: batch order, sequence numbers and
orientations are read off the oracle's own sampler and its dataset's rng.

Environment:
  NB_SERVE   the binary under test (relative paths are taken from the repository root);
             default .build/debug/nb-serve
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO_ROOT / "Tests" / "fixtures"
DEFAULT_BINARY = ".build/debug/nb-serve"
RUN_TIMEOUT_S = 120

if str(FIXTURES_DIR) not in sys.path:
    sys.path.insert(0, str(FIXTURES_DIR))

import make_dataset
import noisebase_oracle as oracle

# ----------------------------------------------------------------------------------------------------------
# Keys and how they are compared

# nb-serve must give the very same bytes (compared as bytes, so -0.0 is not +0.0 and NaN payloads count): data
# movement, and the keys computed with the same float operations in the same order as noisebase's.
EXACT_KEYS = {"w_position", "w_motion", "w_normal", "diffuse", "reference", "crop_offset", "frame_index",
              "camera_position", "normal", "motion", "camera_forward", "camera_up", "camera_left", "view_proj_mat"}
# exp/log computed by a vector polynomial here and numpy's SIMD routines there: maximum relative error (see
# relative_error), the README's bound.
RELATIVE_KEYS = {"color", "depth"}
RELATIVE_TOLERANCE = 2.5e-7

ALL_BUFFERS = ["normal", "motion", "depth", "w_normal", "w_motion", "w_position", "diffuse", "color",
               "reference"]


def base_key(name: str) -> str:
    """'prev_camera.view_proj_mat' -> 'view_proj_mat'."""
    return name.rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------------------------------
# The binary


def binary_path() -> Path:
    configured = Path(os.environ.get("NB_SERVE", DEFAULT_BINARY))
    return configured if configured.is_absolute() else REPO_ROOT / configured


def require_binary() -> Path:
    path = binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"nb-serve binary not found at {path}: run `swift build` in {REPO_ROOT} (or set NB_SERVE)",
                    pytrace=False)
    return path


@dataclasses.dataclass
class Result:
    argv: list
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = "unknown signal"
            ending = f"killed by signal {-self.returncode} ({name})"
        else:
            ending = f"exit status {self.returncode}"
        return (f"`{' '.join(map(str, self.argv))}` ended with {ending}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


def run(binary: Path, *args, cwd=None) -> Result:
    argv = [str(binary), *map(str, args)]
    try:
        completed = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"`{' '.join(argv)}` did not finish within {RUN_TIMEOUT_S} s (stderr: {expired.stderr!r})")
    return Result(argv, completed.returncode, completed.stdout.decode("utf-8", "replace"),
                  completed.stderr.decode("utf-8", "replace"))


def run_ok(binary: Path, *args, cwd=None) -> Result:
    result = run(binary, *args, cwd=cwd)
    if result.returncode != 0:
        pytest.fail(result.describe(), pytrace=False)
    return result


# ----------------------------------------------------------------------------------------------------------
# Datasets and configs


@dataclasses.dataclass
class Dataset:
    name: str
    root: Path          # the directory holding scene0000.zip ... and dataset.yaml
    yaml_path: Path
    config: dict        # dataset.yaml as written by make_dataset


def generate_dataset(root: Path, name: str, *, workers: int = 2, **params) -> Dataset:
    yaml_path = Path(make_dataset.write_dataset(str(root), workers=workers, **params))
    with open(yaml_path) as fh:
        config = yaml.safe_load(fh)
    return Dataset(name, root, yaml_path, config)


# Chunkings and dtypes for `rewritten_dataset` that the format's own (per frame, every 4 samples, whole
# windows) does not use, so each decode path is compared with noisebase: decoded chunks read in place in
# pairs (normal) and singly (position: 3 samples per chunk; motion then pairs with it across chunk
# boundaries), region reads (diffuse, color, reference: chunks smaller than the window or the channels),
# float32 where the format stores float16 (diffuse).
REWRITTEN_LAYOUT = {
    "normal": {"chunks": lambda s: (1, 3, s[2], s[3], 4)},
    "position": {"chunks": lambda s: (1, 3, s[2], s[3], 3)},
    "motion": {"chunks": lambda s: (2, 3, s[2], s[3], 4)},
    "diffuse": {"chunks": lambda s: (2, 2, 10, 7, 3), "dtype": np.float32},
    "color": {"chunks": lambda s: (1, 4, s[2] // 2, s[3], 4)},
    "reference": {"chunks": lambda s: (1, 2, s[2], s[3])},
}

# IEEE half bit patterns numpy widens bit-exactly: signalling and quiet NaNs with payloads, infinities,
# subnormals, signed zeros, the largest finite value.
SPECIAL_HALVES = np.array([0x7c01, 0xfc01, 0x7e13, 0x7c00, 0xfc00, 0x0001, 0x83ff, 0x8000, 0x7bff], np.uint16)


def rewritten_dataset(source: Dataset, root: Path, name: str) -> Dataset:
    """`source` rewritten by zarr-python with `REWRITTEN_LAYOUT`'s chunkings and dtypes, special values in
    normal (float16), diffuse (float32) and position (which makes depth and motion NaN or infinite there),
    and one missing chunk of normal (zarr reads it as the fill value, NaN)."""
    import zarr

    root.mkdir(parents=True, exist_ok=True)
    specials32 = np.array([np.nan, -np.inf, np.inf, 1e-45, -0.0, 3.4e38], np.float32)
    specials32[0] = np.frombuffer(np.uint32(0x7fa00001).tobytes(), np.float32)[0]  # signalling NaN, payload
    for index in range(source.config["src"]["sequences"]):
        file = source.config["src"]["files"].format(index=index)
        memory = zarr.MemoryStore()
        out = zarr.group(store=memory)
        with zarr.ZipStore(str(source.root / file), mode="r") as zip_in:
            group = zarr.open_group(store=zip_in, mode="r")
            out.attrs.update(group.attrs.asdict())
            for key, array in group.arrays():
                data = array[...]
                layout = REWRITTEN_LAYOUT.get(key, {})
                dtype = layout.get("dtype", data.dtype)
                data = data.astype(dtype)
                flat = data.reshape(-1)
                if key == "normal":
                    flat.view(np.uint16)[index::97][:len(SPECIAL_HALVES)] = SPECIAL_HALVES
                elif key == "diffuse":
                    flat[index::89][:len(specials32)] = specials32
                elif key == "position":
                    flat[index * 7::211][:3] = [np.inf, np.nan, -np.inf]
                chunks = layout["chunks"](data.shape) if "chunks" in layout else array.chunks
                fill = np.nan if key == "normal" else array.fill_value
                out.create_dataset(key, data=data, chunks=chunks, dtype=dtype, compressor=array.compressor,
                                   fill_value=fill)
                out[key].attrs.update(array.attrs.asdict())
        del memory["normal/1.0.0.0.1"]
        with zarr.ZipStore(str(root / file), mode="w") as zip_out:
            for key in memory.keys():
                zip_out[key] = memory[key]
    config = copy.deepcopy(source.config)
    config["data_path"] = str(root)
    yaml_path = write_config(root / "dataset.yaml", config)
    return Dataset(name, root, yaml_path, config)


def merged_config(base: dict, overrides: dict | None) -> dict:
    """`base` with top-level keys replaced by `overrides`; `src` (and `serve`) dicts are merged, not replaced.

    A value of `DELETE` removes the key."""
    config = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is DELETE:
            config.pop(key, None)
        elif key in ("src", "serve") and isinstance(value, dict) and isinstance(config.get(key), dict):
            for sub, subvalue in value.items():
                if subvalue is DELETE:
                    config[key].pop(sub, None)
                else:
                    config[key][sub] = subvalue
        else:
            config[key] = value
    return config


class _Delete:
    def __repr__(self):
        return "DELETE"


DELETE = _Delete()


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, default_flow_style=False)
    return path


class ConfigFactory:
    """Writes each distinct config once (configs are identified by their content) into one directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: dict[str, Path] = {}

    def path(self, config: dict) -> Path:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in self.paths:
            self.paths[key] = write_config(self.directory / f"config{len(self.paths):04d}.yaml", config)
        return self.paths[key]


# ----------------------------------------------------------------------------------------------------------
# The oracle: noisebase's own loader, with ranks and resume states applied as noisebase would


def oracle_config(config: dict) -> dict:
    """What noisebase's TrainingSampleLoader_v1 is given: the config minus nb-serve's `serve:` section."""
    config = copy.deepcopy(config)
    config.pop("serve", None)
    return config


def build_oracle(config: dict, *, stage: str | None = None, world_size: int = 1, rank: int = 0,
                 start_epoch: int | None = None, start_sequence: int | None = None):
    """noisebase's loader for one rank.

    torch.distributed is not initialised here, so the ranks are emulated by setting on the VideoSampler exactly
    what its __init__ sets from dist.get_world_size() / dist.get_rank(): num_replicas, rank, max_sequence_idx
    (num_sequences // num_replicas * num_replicas) and batch_size (the full batch_size // num_replicas). A
    resume state is applied with the loader's own load_state_dict."""
    loader = oracle.build_loader(oracle_config(config), stage=stage)
    sampler = loader.batch_sampler
    if world_size != 1 or rank != 0:
        full_batch = config["batch_size"]
        sampler.num_replicas = world_size
        sampler.rank = rank
        sampler.max_sequence_idx = sampler.num_sequences // world_size * world_size
        sampler.batch_size = full_batch // world_size
    if start_epoch is not None or start_sequence is not None:
        loader.load_state_dict({"start_epoch_idx": start_epoch or 0, "start_sequence_idx": start_sequence or 0})
    return loader


def oracle_index_batches(loader, epoch: int):
    """The sampler's index lists for one epoch, with the epoch forced like a get_epoch override would."""
    sampler = loader.batch_sampler
    saved = sampler.get_epoch
    sampler.get_epoch = lambda: epoch
    try:
        return [list(batch) for batch in sampler]
    finally:
        sampler.get_epoch = saved


def oracle_orientation(dataset, epoch: int, position: int) -> int:
    """The orientation TrainingSampleDataset.__getitem__ uses, read off the dataset's own rng."""
    if dataset.flip_rotate:
        return int(dataset.rng.derive(epoch).integers(position, 0, 8))
    return 7


def oracle_plan(loader, epoch: int) -> list[dict]:
    """noisebase's batches for one epoch in nb-serve plan's schema."""
    dataset = loader.dataset
    frames = dataset.frames_per_sequence
    plan = []
    for number, idxs in enumerate(oracle_index_batches(loader, epoch)):
        assert all(item["epoch"] == epoch for item in idxs)
        positions = [item["idx"] // frames for item in idxs]
        frame_indices = {item["idx"] % frames for item in idxs}
        assert len(frame_indices) == 1, f"noisebase batch {number} mixes frames {frame_indices}"
        plan.append({
            "epoch": epoch,
            "batch": number,
            "frame_index": frame_indices.pop(),
            "sequences": [int(dataset.sqidxs[p]) for p in positions],
            "orientations": [oracle_orientation(dataset, epoch, p) for p in positions],
        })
    return plan


def oracle_batch(loader, epoch: int, batch: int) -> dict | None:
    """noisebase's collated batch number `batch` of `epoch` (numpy), or None past the end of the epoch."""
    nb = oracle.import_noisebase()
    index_batches = oracle_index_batches(loader, epoch)
    if batch >= len(index_batches):
        return None
    idxs = index_batches[batch]
    # noisebase's own collate_fixes (its default_collate is the oracle's numpy stand-in)
    return nb.training.collate_fixes(loader.dataset.__getitems__(idxs))


def flatten_batch(batch: dict) -> dict:
    """{'prev_camera': {...}} -> 'prev_camera.KEY'; the `file` list (not dumped by nb-serve) is dropped."""
    flat = {}
    for key, value in batch.items():
        if key == "file":
            continue
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = np.asarray(subvalue)
        else:
            flat[key] = np.asarray(value)
    return flat


# ----------------------------------------------------------------------------------------------------------
# nb-serve side


def cli_options(*, stage=None, epoch=None, rank=None, world_size=None, start_epoch=None, start_sequence=None):
    args = []
    if stage is not None:
        args += ["--stage", stage]
    if epoch is not None:
        args += ["--epoch", epoch]
    if rank is not None:
        args += ["--rank", rank]
    if world_size is not None:
        args += ["--world-size", world_size]
    if start_epoch is not None:
        args += ["--start-epoch", start_epoch]
    if start_sequence is not None:
        args += ["--start-sequence", start_sequence]
    return args


def parse_plan(result: Result) -> list[dict]:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    plan = []
    for number, line in enumerate(lines):
        try:
            plan.append(json.loads(line))
        except json.JSONDecodeError as error:
            pytest.fail(f"plan line {number} is not JSON ({error}): {line!r}\n{result.describe()}")
    return plan


def nb_plan(binary, config_path, **options) -> list[dict]:
    return parse_plan(run_ok(binary, "plan", "--config", config_path, *cli_options(**options)))


def load_dump(directory: Path) -> dict:
    arrays = {}
    for path in sorted(directory.glob("*.npy")):
        arrays[path.name[:-len(".npy")]] = np.load(path, allow_pickle=False)
    return arrays


# ----------------------------------------------------------------------------------------------------------
# Comparison


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Element-wise relative error, max over the tensor: max |actual - expected| / |expected|.

    An expected zero must be matched (almost) exactly: its denominator is 1e-30 times the tensor's largest
    |expected| (at least the smallest normal float64). NaNs and infinities must sit at the same places with
    the same values; a non-finite value where noisebase has a finite one is an infinite error."""
    a = actual.astype(np.float64)
    b = expected.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return float("inf")
    inf_b = np.isinf(b)
    if not np.array_equal(a[inf_b], b[inf_b]):
        return float("inf")
    finite = ~(nan_b | inf_b)
    a, b = a[finite], b[finite]
    if a.size == 0:
        return 0.0
    if np.any(~np.isfinite(a)):
        return float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    denominator = np.maximum(np.abs(b), max(scale * 1e-30, np.finfo(np.float64).tiny))
    return float(np.max(np.abs(a - b) / denominator))


def bitwise_differences(actual: np.ndarray, expected: np.ndarray) -> str:
    """How many elements differ in their bits (NaN payloads and signed zeros included), and the first."""
    bits = np.dtype(f"u{actual.dtype.itemsize}")
    differ = actual.view(bits) != expected.view(bits)
    index = tuple(int(i) for i in np.argwhere(differ)[0])
    width = 2 * actual.dtype.itemsize
    return (f"({int(np.count_nonzero(differ))} of {actual.size} elements), first at {index}: nb-serve "
            f"{actual[index]!r} (0x{int(actual.view(bits)[index]):0{width}x}), noisebase {expected[index]!r} "
            f"(0x{int(expected.view(bits)[index]):0{width}x})")


def worst_location(actual: np.ndarray, expected: np.ndarray) -> str:
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    difference = np.where(np.isnan(difference), np.inf, difference)
    if difference.size == 0:
        return "(empty)"
    index = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return f"at {tuple(int(i) for i in index)}: nb-serve {actual[index]!r}, noisebase {expected[index]!r}"


class ErrorLog:
    """Worst error per key over the whole run (relative for RELATIVE_KEYS, 0 for identical bytes)."""

    def __init__(self):
        self.worst: dict[str, dict] = {}
        self.orientations: set[int] = set()
        self.batches = 0

    def record(self, key: str, kind: str, error: float, case: str):
        entry = self.worst.get(key)
        if entry is None or error > entry["error"]:
            self.worst[key] = {"kind": kind, "error": error, "case": case}

    def merge(self, report: dict):
        """Adds another log's as_json() (e.g. one test's, sent from a pytest-xdist worker)."""
        self.batches += report["batches_compared"]
        self.orientations.update(report["orientations_seen"])
        for key, entry in report["worst"].items():
            self.record(key, entry["kind"], entry["error"], entry["case"])

    def as_json(self) -> dict:
        return {"batches_compared": self.batches, "orientations_seen": sorted(self.orientations),
                "worst": dict(sorted(self.worst.items()))}


def compare_batch(actual: dict, expected: dict, case: str, log: ErrorLog) -> list[str]:
    """All mismatches between nb-serve's dump and noisebase's batch (empty when they agree)."""
    problems = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing:
        problems.append(f"keys noisebase yields but nb-serve did not dump: {missing}")
    if extra:
        problems.append(f"keys nb-serve dumped but noisebase does not yield: {extra}")
    for key in sorted(set(expected) & set(actual)):
        a, b = actual[key], expected[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: nb-serve {a.dtype}{list(a.shape)}, noisebase {b.dtype}{list(b.shape)}")
            continue
        kind = base_key(key)
        if kind in EXACT_KEYS:
            same = a.tobytes() == b.tobytes()
            log.record(key, "exact", 0.0 if same else float("inf"), case)
            if not same:
                problems.append(f"{key}: bytes differ {bitwise_differences(a, b)}")
        elif kind in RELATIVE_KEYS:
            error = relative_error(a, b)
            log.record(key, "relative", error, case)
            if not error <= RELATIVE_TOLERANCE:
                problems.append(f"{key}: max relative error {error:.3e} > {RELATIVE_TOLERANCE:g} "
                                f"{worst_location(a, b)}")
        else:
            problems.append(f"{key}: no comparison rule for this key (test bug)")
    return problems
