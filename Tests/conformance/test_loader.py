"""nb-serve's loader semantics against noisebase 1.1.1's own TrainingSampleLoader_v1.

The oracle is noisebase's real code (Tests/fixtures/noisebase_oracle.py imports it with torch stubbed): the
validation split, the epoch order, the rank shards, the resume slicing and the orientations come from its
Shuffler / VideoSampler / dataset rng, the tensors from TrainingSampleDataset.__getitem__ and collate_fixes.
Datasets are rendered once per session by Tests/fixtures/make_dataset.py into pytest's temporary directory.

1. `nb-serve plan` equals noisebase's batches (order, sequence numbers, frame index, orientations) over a grid
   of seeds, batch sizes, world sizes and ranks, stages, shuffle / drop_last / flip_rotate, epochs, val_split
   values (round-half-even, the batch_size floor) and resume states.
2. `nb-serve dump` equals noisebase's collated batch key by key: same keys (noisebase's `file` aside), shapes
   and dtypes; identical bytes (signed zeros and NaN payloads included) for every key but `color` and `depth`,
   which must be within 2.5e-7 relative. The worst error per key is written to
   <pytest basetemp>/loader_conformance_errors.json (and to $NB_SERVE_LOADER_ERRORS when set) and printed at the
   end of the run (conftest.py).
3. Config errors, noisebase's own dataset YAML, `--stage validation`, batches past the end, missing files.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loader_support as ls
from loader_support import DELETE

# ----------------------------------------------------------------------------------------------------------
# Datasets (rendered once per session)

# "main": 12 sequences of 5 frames, 24 px crops of a 48 x 80 rendering, 8 samples stored (two chunks of 4).
# "odd":  7 sequences of 4 frames, 18 px crops of a 45 x 71 rendering (odd sides, even sum), 6 samples stored
#         (a partial second chunk), zstd instead of blosc; 18 is not a multiple of the decode kernels' 4-pixel
#         blocks or 16-pixel tiles, so their edges are compared too.
# "rewritten": "main" rewritten with other chunkings and dtypes, special values and a missing chunk
#         (loader_support.rewritten_dataset).
DATASETS = {
    "main": {"sequences": 12, "frames": 5, "crop": 24, "samples": 8, "height": 48, "width": 80, "seed": 11,
             "reference_samples": 4},
    "odd": {"sequences": 7, "frames": 4, "crop": 18, "samples": 6, "height": 45, "width": 71, "seed": 5,
            "reference_samples": 4, "compressor": "zstd"},
}


@pytest.fixture(scope="session")
def nb_binary():
    return ls.require_binary()


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-datasets")
    workers = min(2, os.cpu_count() or 1)
    datasets = {name: ls.generate_dataset(root / name, name, workers=workers, **params)
                for name, params in DATASETS.items()}
    datasets["rewritten"] = ls.rewritten_dataset(datasets["main"], root / "rewritten", "rewritten")
    return datasets


@pytest.fixture(scope="session")
def configs(tmp_path_factory):
    return ls.ConfigFactory(tmp_path_factory.mktemp("loader-configs"))


@pytest.fixture
def error_log(request):
    """This test's worst errors per key, handed to conftest's end-of-run summary as a user property (which
    pytest-xdist carries from its workers to the process that prints the report)."""
    log = ls.ErrorLog()
    yield log
    request.node.user_properties.append(("loader_errors", log.as_json()))


def config_for(datasets, dataset: str, overrides: dict) -> dict:
    return ls.merged_config(datasets[dataset].config, overrides)


# ----------------------------------------------------------------------------------------------------------
# 1. plan


@dataclass(frozen=True)
class PlanCase:
    name: str
    overrides: dict = field(hash=False)
    stage: str
    epoch: int
    world_size: int = 1
    rank: int = 0
    start_epoch: int | None = None
    start_sequence: int | None = None
    world_from_config: bool = False  # pass the world size as serve.world_size instead of --world-size
    dataset: str = "main"

    def __str__(self):
        return self.name


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _plan_grid() -> list[PlanCase]:
    seeds = [42, 7, 2024]
    batch_world = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 3), (4, 1), (4, 2), (6, 1), (6, 2), (6, 3)]
    # (sequences, val_split): 12 * 0.125 = 1.5 -> 2 and 10 * 0.25 = 2.5 -> 2 (half to even), 11 * 0.5 = 5.5
    # -> 6, 7 * 0.5 = 3.5 -> 4, 10 * 0.45 = 4.5 -> 4, 9 * 0.35 = 3.15 -> 3; 12 * 0.05 = 0.6 -> 1 and
    # 12 * 0.0 = 0 are raised to batch_size by the max(..., batch_size) floor.
    splits = [(12, 0.125), (10, 0.25), (12, 0.05), (11, 0.5), (7, 0.5), (10, 0.45), (12, 0.0), (9, 0.35)]
    toggles = list(itertools.product([True, False], repeat=3))  # shuffle, drop_last, flip_rotate
    epochs = [0, 1, 5]
    cases = []
    for b, (batch_size, world) in enumerate(batch_world):
        for stage in ("train", "val"):
            for t, (shuffle, drop_last, flip_rotate) in enumerate(toggles):
                seed = seeds[(t + b) % len(seeds)]
                sequences, val_split = splits[(t + 3 * b + (stage == "val")) % len(splits)]
                epoch = epochs[(t + b + (stage == "val")) % len(epochs)]
                overrides = {"seed": seed, "batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last,
                             "flip_rotate": flip_rotate, "val_split": val_split, "src": {"sequences": sequences}}
                for rank in range(world):
                    name = (f"grid-n{sequences}-vs{val_split}-s{seed}-bs{batch_size}-w{world}r{rank}-{stage}"
                            f"-sh{_flag(shuffle)}dl{_flag(drop_last)}fr{_flag(flip_rotate)}-e{epoch}")
                    cases.append(PlanCase(name, overrides, stage, epoch, world, rank))
    return cases


def _plan_resume() -> list[PlanCase]:
    # main with val_split 0.25: 3 validation and 9 training sequences.
    cases = []
    batch_world = [(1, 1), (2, 1), (2, 2), (3, 3), (4, 2), (6, 3)]
    epoch_pairs = [(0, 0), (1, 1), (5, 5), (1, 0), (5, 2)]  # (epoch, start_epoch): same and different
    for b, (batch_size, world) in enumerate(batch_world):
        validation = max(round(12 * 0.25), batch_size)  # only to pick interesting start indices
        for stage, length in (("train", 12 - validation), ("val", validation)):
            starts = [0, 1, 4, length, length + 5] if stage == "train" else [0, 1, length, length + 2]
            for s, start in enumerate(starts):
                epoch, start_epoch = epoch_pairs[(s + b) % len(epoch_pairs)]
                if stage == "val" and batch_size > 3:
                    continue  # the floor would make every sequence a validation one
                overrides = {"seed": 42 + b, "batch_size": batch_size, "val_split": 0.25,
                             "drop_last": bool((s + b) % 2), "shuffle": True, "flip_rotate": True}
                for rank in range(world):
                    name = (f"resume-bs{batch_size}-w{world}r{rank}-{stage}-e{epoch}"
                            f"-start{start_epoch}.{start}-dl{_flag(overrides['drop_last'])}")
                    cases.append(PlanCase(name, overrides, stage, epoch, world, rank, start_epoch, start))
                # the other epoch of the pair: the resume state must not slice it
                if start not in (0,) and epoch == start_epoch:
                    other = epoch + 1
                    name = f"resume-bs{batch_size}-w{world}r0-{stage}-e{other}-start{start_epoch}.{start}-later"
                    cases.append(PlanCase(name, overrides, stage, other, world, 0, start_epoch, start))
    return cases


def _plan_misc() -> list[PlanCase]:
    cases = []
    # serve.world_size in the config instead of --world-size
    for world, batch_size in ((2, 4), (3, 6)):
        for rank in range(world):
            overrides = {"batch_size": batch_size, "val_split": 0.1, "serve": {"world_size": world}}
            cases.append(PlanCase(f"serve-world{world}-r{rank}-bs{batch_size}", overrides, "train", 1, world,
                                  rank, world_from_config=True))
    # no stage override on the command line: the config's `stage`
    for stage in ("train", "val"):
        cases.append(PlanCase(f"config-stage-{stage}", {"stage": stage, "batch_size": 2, "val_split": 0.3},
                              None, 1))
    # noisebase's format defaults (batch_size 8, val_split 0.05, seed 42): val = max(round(0.6), 8) = 8
    for stage in ("train", "val"):
        for drop_last in (True, False):
            cases.append(PlanCase(f"defaults-bs8-{stage}-dl{_flag(drop_last)}", {"drop_last": drop_last}, stage,
                                  0))
    # the odd dataset's 7 sequences
    for batch_size, world in ((1, 1), (2, 2), (3, 1)):
        for rank in range(world):
            for epoch in (0, 1, 5):
                overrides = {"batch_size": batch_size, "val_split": 0.3, "seed": 3, "drop_last": False}
                cases.append(PlanCase(f"odd-bs{batch_size}-w{world}r{rank}-e{epoch}", overrides, "train", epoch,
                                      world, rank, dataset="odd"))
    return cases


PLAN_CASES = _plan_grid() + _plan_resume() + _plan_misc()
assert len({case.name for case in PLAN_CASES}) == len(PLAN_CASES), "duplicate plan case names"


def _first_difference(actual: list, expected: list) -> str:
    for number, (a, b) in enumerate(zip(actual, expected)):
        if a != b:
            return f"first difference at batch {number}:\n  nb-serve:  {a}\n  noisebase: {b}"
    longer, who = (actual, "nb-serve") if len(actual) > len(expected) else (expected, "noisebase")
    common = min(len(actual), len(expected))
    return (f"nb-serve gives {len(actual)} batches, noisebase {len(expected)}; {who}'s first extra one: "
            f"{longer[common] if len(longer) > common else None}")


@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_plan_matches_noisebase(nb_binary, datasets, configs, case):
    config = config_for(datasets, case.dataset, case.overrides)
    path = configs.path(config)
    loader = ls.build_oracle(config, stage=case.stage, world_size=case.world_size, rank=case.rank,
                             start_epoch=case.start_epoch, start_sequence=case.start_sequence)
    expected = ls.oracle_plan(loader, case.epoch)
    actual = ls.nb_plan(nb_binary, path, stage=case.stage, epoch=case.epoch, rank=case.rank,
                        world_size=None if case.world_from_config else case.world_size,
                        start_epoch=case.start_epoch, start_sequence=case.start_sequence)
    for line in actual:
        assert set(line) == {"epoch", "batch", "frame_index", "sequences", "orientations"}, line
    assert actual == expected, _first_difference(actual, expected)


def test_plan_grid_covers_what_it_should(datasets):
    """The grid really exercises the interesting splits, partial batches, empty stages and every orientation."""
    split_sizes = set()
    partial = empty = 0
    orientations = set()
    for case in PLAN_CASES:
        config = config_for(datasets, case.dataset, case.overrides)
        loader = ls.build_oracle(config, stage=case.stage, world_size=case.world_size, rank=case.rank,
                                 start_epoch=case.start_epoch, start_sequence=case.start_sequence)
        n, split = config["src"]["sequences"], config["val_split"]
        split_sizes.add((n, split, config["batch_size"], len(loader.dataset.sqidxs) if case.stage == "val"
                         else n - len(loader.dataset.sqidxs)))
        plan = ls.oracle_plan(loader, case.epoch)
        per_rank = config["batch_size"] // case.world_size
        partial += any(len(b["sequences"]) < per_rank for b in plan)
        empty += not plan
        for b in plan:
            orientations.update(b["orientations"])
    sizes = {(n, split, bs): size for n, split, bs, size in split_sizes}
    assert sizes.get((12, 0.125, 1)) == 2 and sizes.get((10, 0.25, 1)) == 2  # round half to even
    assert any(n == 12 and split == 0.05 and bs > 1 and size == bs for (n, split, bs), size in sizes.items())
    assert partial > 0 and empty > 0
    assert orientations == set(range(8))


# ----------------------------------------------------------------------------------------------------------
# 2. dump


@dataclass(frozen=True)
class DumpCase:
    name: str
    overrides: dict = field(hash=False)
    batches: tuple
    stage: str = "train"
    epoch: int = 0
    world_size: int = 1
    rank: int = 0
    start_epoch: int | None = None
    start_sequence: int | None = None
    dataset: str = "main"

    def __str__(self):
        return self.name


# main, val_split 0.25: 3 validation and 9 training sequences; 5 frames each, so batch 5k is a frame 0.
_MAIN = {"val_split": 0.25}
DUMP_CASES = [
    DumpCase("all-bs2-e0", {**_MAIN, "batch_size": 2}, (0, 1, 4, 5, 13), epoch=0),
    DumpCase("all-bs3-e1", {**_MAIN, "batch_size": 3}, (0, 2, 7, 14), epoch=1),
    DumpCase("all-bs4-w2r1-e5", {**_MAIN, "batch_size": 4}, (0, 3, 6), epoch=5, world_size=2, rank=1),
    DumpCase("all-bs3-w3r2-e2", {**_MAIN, "batch_size": 3, "seed": 9}, (1, 5, 12), epoch=2, world_size=3,
             rank=2),
    DumpCase("all-bs1-e3", {**_MAIN, "batch_size": 1, "seed": 1}, (0, 8, 21, 44), epoch=3),
    DumpCase("all-val", {**_MAIN, "batch_size": 2}, (0, 1, 4), stage="val", epoch=1),
    DumpCase("all-val-w2r1", {**_MAIN, "batch_size": 2}, (0, 3), stage="val", epoch=5, world_size=2, rank=1),
    DumpCase("all-noflip", {**_MAIN, "batch_size": 2, "flip_rotate": False}, (2, 5), epoch=1),
    DumpCase("all-noshuffle", {**_MAIN, "batch_size": 2, "shuffle": False}, (0, 6), epoch=4),
    DumpCase("all-partial-last", {**_MAIN, "batch_size": 2, "drop_last": False}, (19, 20, 24), epoch=1),
    DumpCase("all-resume", {**_MAIN, "batch_size": 2}, (0, 1, 5), epoch=1, start_epoch=1, start_sequence=3),
    DumpCase("all-resume-w3r1", {**_MAIN, "batch_size": 3}, (0, 4, 5), epoch=2, world_size=3, rank=1,
             start_epoch=2, start_sequence=2),
    DumpCase("all-samples3", {**_MAIN, "batch_size": 2, "samples": 3}, (0, 1), epoch=6),
    DumpCase("all-samples4", {**_MAIN, "batch_size": 2, "samples": 4}, (5, 7), epoch=7),
    DumpCase("all-samples1", {**_MAIN, "batch_size": 3, "samples": 1}, (3,), epoch=0),
    DumpCase("motion", {**_MAIN, "batch_size": 2, "buffers": ["motion"]}, (0, 3, 6), epoch=2),
    DumpCase("depth", {**_MAIN, "batch_size": 2, "buffers": ["depth"]}, (0, 4), epoch=3),
    DumpCase("color-reference", {**_MAIN, "batch_size": 2, "buffers": ["color", "reference"]}, (1, 5), epoch=4),
    DumpCase("w_normal-normal", {**_MAIN, "batch_size": 2, "buffers": ["w_normal", "normal"]}, (2, 10),
             epoch=5),
    DumpCase("normal", {**_MAIN, "batch_size": 3, "buffers": ["normal"]}, (1,), epoch=6, world_size=3, rank=1),
    DumpCase("w_normal", {**_MAIN, "batch_size": 2, "buffers": ["w_normal"]}, (3,), epoch=7),
    DumpCase("w_motion", {**_MAIN, "batch_size": 2, "buffers": ["w_motion"]}, (0, 2), epoch=8),
    DumpCase("w_position", {**_MAIN, "batch_size": 2, "buffers": ["w_position"]}, (4,), epoch=9),
    DumpCase("diffuse", {**_MAIN, "batch_size": 2, "buffers": ["diffuse"]}, (6,), epoch=10),
    DumpCase("reference", {**_MAIN, "batch_size": 2, "buffers": ["reference"]}, (7,), epoch=11),
    DumpCase("color", {**_MAIN, "batch_size": 2, "buffers": ["color"]}, (8, 15), epoch=12, world_size=2, rank=1),
    DumpCase("motion-depth-w_position", {**_MAIN, "batch_size": 2, "buffers": ["w_position", "depth", "motion"]},
             (1, 11), epoch=13),
    DumpCase("reordered-buffers", {**_MAIN, "batch_size": 2, "buffers": list(reversed(ls.ALL_BUFFERS))},
             (1,), epoch=14),
    DumpCase("odd-all-bs2", {"val_split": 0.3, "batch_size": 2, "samples": 5, "seed": 3}, (0, 1, 3, 4, 6),
             epoch=0, dataset="odd"),
    DumpCase("odd-all-bs2-e5-w2r1", {"val_split": 0.3, "batch_size": 2, "samples": 6, "seed": 3}, (0, 2, 5),
             epoch=5, world_size=2, rank=1, dataset="odd"),
    DumpCase("odd-motion-val", {"val_split": 0.3, "batch_size": 2, "buffers": ["motion", "normal"]}, (1, 3),
             stage="val", epoch=2, dataset="odd"),
    DumpCase("rewritten-all-bs3", {**_MAIN, "batch_size": 3}, (0, 1, 2, 4, 5, 9), epoch=1, dataset="rewritten"),
    DumpCase("rewritten-all-samples7", {**_MAIN, "batch_size": 2, "samples": 7, "seed": 4}, (0, 3, 6, 12),
             epoch=3, dataset="rewritten"),
    DumpCase("rewritten-motion-w_motion", {**_MAIN, "batch_size": 2, "buffers": ["w_motion", "motion"]},
             (1, 2, 8), epoch=2, dataset="rewritten"),
    DumpCase("rewritten-val", {**_MAIN, "batch_size": 2}, (0, 2, 3), stage="val", epoch=1, dataset="rewritten"),
]
assert len({case.name for case in DUMP_CASES}) == len(DUMP_CASES), "duplicate dump case names"


def _dump_oracle(datasets, case: DumpCase):
    config = config_for(datasets, case.dataset, case.overrides)
    loader = ls.build_oracle(config, stage=case.stage, world_size=case.world_size, rank=case.rank,
                             start_epoch=case.start_epoch, start_sequence=case.start_sequence)
    return config, loader


def test_dump_cases_cover_every_orientation(datasets):
    """Every orientation 0-7 (and frame 0 and later frames) occurs among the batches the dump tests compare."""
    orientations, frames = set(), set()
    for case in DUMP_CASES:
        _, loader = _dump_oracle(datasets, case)
        plan = ls.oracle_plan(loader, case.epoch)
        for batch in case.batches:
            assert batch < len(plan), f"{case.name}: batch {batch} is past the end ({len(plan)} batches)"
            orientations.update(plan[batch]["orientations"])
            frames.add(plan[batch]["frame_index"] > 0)
    assert orientations == set(range(8)), f"orientations covered: {sorted(orientations)}"
    assert frames == {False, True}


def test_dump_cases_contain_zero_normals_whose_sign_matters(datasets):
    """The compared batches hold sky samples whose world normal is (0, 0, 0) and where summing the basis
    products without noisebase's leading +0.0 (its einsum starts at +0.0) would give -0.0, so the byte
    comparison of `normal` checks the sign of those zeros."""
    case = next(case for case in DUMP_CASES if case.name == "all-val")
    _, loader = _dump_oracle(datasets, case)
    batch = ls.flatten_batch(ls.oracle_batch(loader, case.epoch, case.batches[0]))
    world = batch["w_normal"]                                     # (B, 3, H, W, S)
    zero = np.all(world == 0, axis=1)
    assert zero.any(), "no (0, 0, 0) normal in the batch"
    for b in range(world.shape[0]):
        basis = np.stack([batch["camera_forward"][b], batch["camera_left"][b], batch["camera_up"][b]])
        products = basis[:, :, None, None, None] * world[b][None]       # (3 outputs, 3 terms, H, W, S)
        naive = (products[:, 0] + products[:, 1]) + products[:, 2]
        signed = np.signbit(naive) & (naive == 0) & zero[b][None]
        if signed.any():
            assert not np.signbit(batch["normal"][b][signed]).any(), "noisebase's normal has -0.0 there"
            return
    pytest.fail("no zero normal whose naive sum is -0.0: the byte comparison would not see a sign error")


@pytest.mark.parametrize("case", DUMP_CASES, ids=str)
def test_dump_matches_noisebase(nb_binary, datasets, configs, error_log, case, tmp_path):
    config, loader = _dump_oracle(datasets, case)
    path = configs.path(config)
    plan = ls.oracle_plan(loader, case.epoch)
    problems = []
    for batch in case.batches:
        expected_batch = ls.oracle_batch(loader, case.epoch, batch)
        assert expected_batch is not None, f"{case.name}: batch {batch} is past the end of noisebase's epoch"
        expected = ls.flatten_batch(expected_batch)
        out = tmp_path / f"batch{batch}"
        ls.run_ok(nb_binary, "dump", "--config", path, "--batch", batch, "--out", out,
                  *ls.cli_options(stage=case.stage, epoch=case.epoch, rank=case.rank, world_size=case.world_size,
                                  start_epoch=case.start_epoch, start_sequence=case.start_sequence))
        actual = ls.load_dump(out)
        where = (f"{case.name} batch {batch} (frame {plan[batch]['frame_index']}, sequences "
                 f"{plan[batch]['sequences']}, orientations {plan[batch]['orientations']})")
        error_log.batches += 1
        error_log.orientations.update(plan[batch]["orientations"])
        problems += [f"{where}: {problem}" for problem in ls.compare_batch(actual, expected, where, error_log)]
    shown = problems[:16] + ([f"... and {len(problems) - 16} more"] if len(problems) > 16 else [])
    assert not problems, "nb-serve dump differs from noisebase:\n" + "\n".join(shown)


def test_dump_frame_zero_conventions(nb_binary, datasets, configs, tmp_path):
    """At frame 0 prev_camera is the current camera and both motions are zero (noisebase's behaviour)."""
    config = config_for(datasets, "main", {**_MAIN, "batch_size": 2})
    ls.run_ok(nb_binary, "dump", "--config", configs.path(config), "--epoch", 3, "--batch", 5, "--out", tmp_path)
    dump = ls.load_dump(tmp_path)
    assert dump["frame_index"].shape == () and dump["frame_index"].dtype == np.int64 and dump["frame_index"] == 0
    for key in ls.oracle.CAMERA_KEYS:
        assert dump[f"prev_camera.{key}"].tobytes() == dump[key].tobytes(), key
    assert not np.any(dump["motion"]) and not np.any(dump["w_motion"])


# ----------------------------------------------------------------------------------------------------------
# 3. Config errors and the command line


@dataclass(frozen=True)
class ErrorCase:
    name: str
    overrides: dict = field(hash=False)
    key: str                      # what stderr must name
    args: tuple = ()

    def __str__(self):
        return self.name


ERROR_CASES = [
    ErrorCase("unknown-key", {"bogus_option": 1}, "bogus_option"),
    ErrorCase("unknown-src-key", {"src": {"bogus": 1}}, "src.bogus"),
    ErrorCase("unknown-serve-key", {"serve": {"bogus": 1}}, "serve.bogus"),
    ErrorCase("src-crop-string", {"src": {"crop": "big"}}, "src.crop"),
    ErrorCase("src-frames-float", {"src": {"frames_per_sequence": 4.5}}, "src.frames_per_sequence"),
    ErrorCase("src-files-list", {"src": {"files": ["a", "b"]}}, "src.files"),
    ErrorCase("src-crop-missing", {"src": {"crop": DELETE}}, "src.crop"),
    ErrorCase("src-sequences-zero", {"src": {"sequences": 0}}, "src.sequences"),
    ErrorCase("batch-size-float", {"batch_size": 2.5}, "batch_size"),
    ErrorCase("batch-size-zero", {"batch_size": 0}, "batch_size"),
    ErrorCase("seed-list", {"seed": [1, 2]}, "seed"),
    ErrorCase("shuffle-string", {"shuffle": "sometimes"}, "shuffle"),
    ErrorCase("flip-rotate-int", {"flip_rotate": 3}, "flip_rotate"),
    ErrorCase("drop-last-string", {"drop_last": "no way"}, "drop_last"),
    ErrorCase("val-split-string", {"val_split": "half"}, "val_split"),
    ErrorCase("val-split-above-one", {"val_split": 1.5}, "val_split"),
    ErrorCase("buffers-string", {"buffers": "normal"}, "buffers"),
    ErrorCase("buffers-unknown", {"buffers": ["normal", "albedo"]}, "buffers[1]"),
    ErrorCase("buffers-unknown-first", {"buffers": ["Normal"]}, "buffers[0]"),
    ErrorCase("samples-above-stored", {"samples": 9}, "samples"),
    ErrorCase("samples-zero", {"samples": 0}, "samples"),
    ErrorCase("batch-not-divisible-cli", {"batch_size": 4}, "batch_size", ("--world-size", "3")),
    ErrorCase("batch-not-divisible-serve", {"batch_size": 4, "serve": {"world_size": 3}}, "batch_size"),
    ErrorCase("stage-config", {"stage": "test"}, "stage"),
    ErrorCase("stage-cli", {}, "stage", ("--stage", "test")),
    ErrorCase("serve-world-size-string", {"serve": {"world_size": "two"}}, "serve.world_size"),
    ErrorCase("rank-not-below-world", {"batch_size": 2}, "rank", ("--world-size", "2", "--rank", "2")),
]


@pytest.mark.parametrize("command", ["plan", "dump"])
@pytest.mark.parametrize("case", ERROR_CASES, ids=str)
def test_config_error(nb_binary, datasets, configs, case, command, tmp_path):
    config = config_for(datasets, "main", {"val_split": 0.25, **case.overrides})
    args = [command, "--config", configs.path(config), *case.args]
    if command == "dump":
        args += ["--out", tmp_path / "out"]
    result = ls.run(nb_binary, *args)
    assert result.returncode == 2, result.describe()
    assert case.key in result.stderr, f"stderr does not name `{case.key}`:\n{result.describe()}"
    assert "Fatal error" not in result.stderr and "Stack dump" not in result.stderr, result.describe()


def test_config_file_not_yaml_mapping(nb_binary, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    result = ls.run(nb_binary, "plan", "--config", bad)
    assert result.returncode == 2, result.describe()


NOISEBASE_CONF = Path(ls.oracle.import_noisebase().noisebase.__file__).parent / "conf" / "noisebase"


def _noisebase_style_config(dataset: ls.Dataset, root: Path, extra_lines: str = "") -> tuple[Path, dict]:
    """noisebase's own conf/noisebase/sampleset_v1.yaml (and its format/ directory), with the src numbers of
    `dataset`, a relative data_path, and the dataset's files linked where sampleset_v1 expects them.

    Returns the YAML path and what hydra composes from it (noisebase's way of reading it), data_path made
    absolute for the oracle."""
    conf = root / "conf" / "noisebase"
    shutil.copytree(NOISEBASE_CONF, conf)
    src = dataset.config["src"]
    text = (conf / "sampleset_v1.yaml").read_text()
    replacements = {
        r"(?m)^  sequences: 1024$": f"  sequences: {src['sequences']}",
        r"(?m)^  frames_per_sequence: 64$": f"  frames_per_sequence: {src['frames_per_sequence']}",
        r"(?m)^  crop: 256$": f"  crop: {src['crop']}",
        r"(?m)^  samples: 32$": f"  samples: {src['samples']}",
        r"(?m)^  rendering_height: 1080$": f"  rendering_height: {src['rendering_height']}",
        r"(?m)^  rendering_width: 1920$": f"  rendering_width: {src['rendering_width']}",
        r"(?m)^(data_remote: .*)$": r"\1\ndata_path: ../../data",
    }
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"sampleset_v1.yaml no longer has {pattern!r}"
    text = text.rstrip("\n") + "\n" + extra_lines
    (conf / "sampleset_v1.yaml").write_text(text)
    files = root / "data" / "sampleset_v1" / "train"
    files.mkdir(parents=True)
    for index in range(src["sequences"]):
        (files / f"scene{index:04d}.zip").symlink_to(dataset.root / src["files"].format(index=index))

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        composed = OmegaConf.to_container(compose(config_name="sampleset_v1"), resolve=True)
    composed["data_path"] = str(root / "data")
    return conf / "sampleset_v1.yaml", composed


@pytest.mark.parametrize("variant", ["as-released", "with-overrides"])
def test_noisebase_dataset_yaml_loads(nb_binary, datasets, error_log, tmp_path, variant):
    """noisebase's own sampleset_v1.yaml (defaults list, _target_ interpolation, format keys from
    format/training_sample_v1.yaml, a relative data_path) gives noisebase's plan and tensors."""
    extra = "" if variant == "as-released" else "batch_size: 3\nval_split: 0.25\nseed: 5\n"
    path, composed = _noisebase_style_config(datasets["main"], tmp_path / "nb", extra)
    assert composed["batch_size"] == (8 if variant == "as-released" else 3)
    for stage in ("train", "val"):
        for epoch in (0, 1):
            loader = ls.build_oracle(composed, stage=stage)
            expected = ls.oracle_plan(loader, epoch)
            actual = ls.nb_plan(nb_binary, path, stage=stage, epoch=epoch)
            assert actual == expected, f"{stage} epoch {epoch}: " + _first_difference(actual, expected)
            if expected:
                for batch in (0, len(expected) - 1):
                    out = tmp_path / f"dump-{stage}-{epoch}-{batch}"
                    # from another working directory: data_path is relative to the config file
                    ls.run_ok(nb_binary, "dump", "--config", path, "--stage", stage, "--epoch", epoch,
                              "--batch", batch, "--out", out, cwd=tmp_path)
                    problems = ls.compare_batch(ls.load_dump(out), ls.flatten_batch(
                        ls.oracle_batch(loader, epoch, batch)), f"{variant} {stage} e{epoch} b{batch}", error_log)
                    assert not problems, "\n".join(problems)
    # as released: batch_size 8 floors the validation split at 8 of 12, leaving 4 < 8 training sequences
    if variant == "as-released":
        assert ls.nb_plan(nb_binary, path, stage="train") == []


def test_stage_validation_equals_val(nb_binary, datasets, configs, tmp_path):
    config = config_for(datasets, "main", {**_MAIN, "batch_size": 2})
    path = configs.path(config)
    val = ls.nb_plan(nb_binary, path, stage="val", epoch=2)
    assert val and val == ls.nb_plan(nb_binary, path, stage="validation", epoch=2)
    assert val == ls.oracle_plan(ls.build_oracle(config, stage="validation"), 2)
    assert all(o == 7 for line in val for o in line["orientations"])
    # `stage: validation` in the config file
    from_config = configs.path(config_for(datasets, "main", {**_MAIN, "batch_size": 2, "stage": "validation"}))
    assert ls.nb_plan(nb_binary, from_config, epoch=2) == val
    dumps = {}
    for name, args in (("val", ["--config", path, "--stage", "val"]),
                       ("validation", ["--config", path, "--stage", "validation"]),
                       ("config", ["--config", from_config])):
        ls.run_ok(nb_binary, "dump", *args, "--epoch", 2, "--batch", 3, "--out", tmp_path / name)
        dumps[name] = ls.load_dump(tmp_path / name)
    for key, value in dumps["val"].items():
        assert dumps["validation"][key].tobytes() == value.tobytes(), key
        assert dumps["config"][key].tobytes() == value.tobytes(), key
    assert set(dumps["validation"]) == set(dumps["val"]) == set(dumps["config"])


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1), (3, 2)])
def test_dump_past_the_end(nb_binary, datasets, configs, tmp_path, world_size, rank):
    config = config_for(datasets, "main", {**_MAIN, "batch_size": 6})
    path = configs.path(config)
    options = ls.cli_options(epoch=1, rank=rank, world_size=world_size)
    length = len(ls.nb_plan(nb_binary, path, epoch=1, rank=rank, world_size=world_size))
    assert length == len(ls.oracle_plan(ls.build_oracle(config, world_size=world_size, rank=rank), 1))
    assert length > 0
    ls.run_ok(nb_binary, "dump", "--config", path, *options, "--batch", length - 1, "--out", tmp_path / "last")
    for batch in (length, length + 1, 10_000):
        result = ls.run(nb_binary, "dump", "--config", path, *options, "--batch", batch,
                        "--out", tmp_path / f"b{batch}")
        assert result.returncode == 2, result.describe()


def test_dump_past_the_end_of_a_resumed_epoch(nb_binary, datasets, configs, tmp_path):
    config = config_for(datasets, "main", {**_MAIN, "batch_size": 2})
    path = configs.path(config)
    options = ls.cli_options(epoch=1, start_epoch=1, start_sequence=6)
    expected = ls.oracle_plan(ls.build_oracle(config, start_epoch=1, start_sequence=6), 1)
    assert len(expected) == 5  # sequences 6 and 7 of 9: one batch of 2 x 5 frames
    ls.run_ok(nb_binary, "dump", "--config", path, *options, "--batch", 4, "--out", tmp_path / "last")
    result = ls.run(nb_binary, "dump", "--config", path, *options, "--batch", 5, "--out", tmp_path / "past")
    assert result.returncode == 2, result.describe()


def test_missing_sequence_file(nb_binary, datasets, configs, tmp_path):
    dataset = datasets["main"]
    config = config_for(datasets, "main", {**_MAIN, "batch_size": 2})
    plan = ls.oracle_plan(ls.build_oracle(config), 0)
    missing_index = plan[0]["sequences"][1]
    data = tmp_path / "data"
    data.mkdir()
    for index in range(config["src"]["sequences"]):
        name = config["src"]["files"].format(index=index)
        if index != missing_index:
            (data / name).symlink_to(dataset.root / name)
    config["data_path"] = str(data)
    path = configs.path(config)
    missing = data / config["src"]["files"].format(index=missing_index)
    result = ls.run(nb_binary, "dump", "--config", path, "--batch", 0, "--out", tmp_path / "out")
    assert result.returncode == 1, result.describe()
    assert str(missing) in result.stderr, f"stderr does not name {missing}:\n{result.describe()}"
    # a batch without the missing file still works
    other = next(number for number, line in enumerate(plan) if missing_index not in line["sequences"])
    ls.run_ok(nb_binary, "dump", "--config", path, "--batch", other, "--out", tmp_path / "other")


def test_bench_decode_only(nb_binary, datasets, configs, tmp_path):
    """`bench --decode-only --json` reports what it measured: the frames and rounds asked for, the orientation,
    and MB/s that account for exactly one batch-size-1 output per frame; bad options exit 2 naming the option."""
    path = configs.path(config_for(datasets, "main", {**_MAIN, "batch_size": 1}))
    ls.run_ok(nb_binary, "dump", "--config", path, "--batch", 0, "--out", tmp_path)
    dump = ls.load_dump(tmp_path)
    frame_bytes, keys = sum(array.nbytes for array in dump.values()), len(dump)
    for orientation in (None, 0, 3, 7):
        extra = [] if orientation is None else ["--orientation", orientation]
        result = ls.run_ok(nb_binary, "bench", "--config", path, "--decode-only", "--frames", 6, "--rounds", 2,
                           "--json", *extra)
        report = json.loads(result.stdout)
        assert report["frames"] == 6 and report["rounds"] == 2, report
        assert report["orientation"] == ("plan" if orientation is None else orientation), report
        assert report["frames_per_s"] > 0 and report["floor_frames_per_s"] > 0, report
        assert report["times_floor"] == pytest.approx(report["floor_frames_per_s"] / report["frames_per_s"]), report
        # Each key's block is padded to 64 bytes in the batch buffer, and the whole buffer is counted.
        per_frame = report["mb_per_s"] * 1e6 * report["seconds"] / report["frames"]
        assert frame_bytes <= per_frame + 1e-3 * frame_bytes <= frame_bytes + 64 * keys + 1e-3 * frame_bytes, report
    for options, named in ((["--decode-only", "--orientation", 8], "--orientation"),
                           (["--orientation", 3], "--orientation"),
                           (["--decode-only", "--rounds", 0], "--rounds")):
        result = ls.run(nb_binary, "bench", "--config", path, *options)
        assert result.returncode == 2 and named in result.stderr, result.describe()


def test_bench_kernels_script_runs():
    """scripts/bench_kernels.sh builds the kernels with its harness and times every walk it names."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_kernels.sh"
    result = subprocess.run([str(script), "3"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    timings = re.findall(r"^  (.+?) +([0-9.]+) ms", result.stdout, re.M)
    assert [name for name, _ in timings] == [
        "identity (orientation 7)", "transposed (orientation 0)", "transposed, flipped (orientation 3)",
        "memset of the output"], result.stdout
    assert all(float(ms) > 0 for _, ms in timings), result.stdout


def test_binary_is_present():
    ls.require_binary()
