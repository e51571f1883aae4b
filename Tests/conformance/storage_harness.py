"""Shared machinery for the nb-serve storage conformance suite (used by conftest and tests).

Fixtures are generated once per session by Tests/fixtures/make_storage_fixtures.py
(zarr-python writes them, so zarr-python is the oracle). Tests are parametrised from
the manifest that script writes, which is why generation happens at collection time.

Environment:
  NB_SERVE                       binary under test (relative paths are taken from the
                                 repository root); default .build/debug/nb-serve
  NB_SERVE_FIXTURES              reuse (or create) fixtures in this directory instead of
                                 a temporary one that is deleted afterwards
  NB_SERVE_TEST_MEMORY_LIMIT_MB  address-space limit for each nb-serve run (default 1536;
                                 0 disables it, e.g. under AddressSanitizer)
"""

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_SCRIPT = REPO_ROOT / "Tests" / "fixtures" / "make_storage_fixtures.py"
DEFAULT_BINARY = ".build/debug/nb-serve"
RUN_TIMEOUT_S = 120

# The damaged headers claim 2 GiB to 4 GiB. Below that, an allocation sized from such a
# claim fails, and the resulting crash (or error) shows up in the test.
DEFAULT_MEMORY_LIMIT_MB = 1536

RANDOM_REGIONS_PER_ARRAY = 8


# ---------------------------------------------------------------------------
# Fixture generation


@dataclasses.dataclass(frozen=True)
class Fixtures:
    root: Path
    manifest: dict

    def path(self, relative):
        return self.root / relative


_fixtures = None
_temporary_root = None


def remove_temporary_fixtures():
    if _temporary_root is not None:
        shutil.rmtree(_temporary_root, ignore_errors=True)


def load_fixtures():
    """Generate the fixtures (once) and return them with their manifest."""
    global _fixtures, _temporary_root
    if _fixtures is not None:
        return _fixtures
    chosen = os.environ.get("NB_SERVE_FIXTURES")
    if chosen:
        root = Path(chosen).resolve()
    else:
        _temporary_root = Path(tempfile.mkdtemp(prefix="nb-serve-conformance-"))
        root = _temporary_root / "fixtures"
    if not (root / "manifest.json").is_file():
        completed = subprocess.run(
            [sys.executable, str(FIXTURE_SCRIPT), str(root)], capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise pytest.UsageError(
                f"{FIXTURE_SCRIPT} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
            )
    _fixtures = Fixtures(root, json.loads((root / "manifest.json").read_text()))
    return _fixtures


# ---------------------------------------------------------------------------
# Running the binary


def binary_path():
    """The binary under test; it may not exist yet (the tests then fail, asking for a build)."""
    configured = Path(os.environ.get("NB_SERVE", DEFAULT_BINARY))
    return configured if configured.is_absolute() else REPO_ROOT / configured


@dataclasses.dataclass
class Result:
    argv: list
    returncode: int
    stdout: str
    stderr: str

    def describe(self):
        """How the run ended plus its output, for assertion messages."""
        if self.returncode < 0:
            ending = f"killed by signal {-self.returncode} ({signal_name(-self.returncode)})"
        else:
            ending = f"exit status {self.returncode}"
        return (
            f"`{' '.join(map(str, self.argv))}` ended with {ending}\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def memory_limit_bytes():
    megabytes = int(os.environ.get("NB_SERVE_TEST_MEMORY_LIMIT_MB", DEFAULT_MEMORY_LIMIT_MB))
    return megabytes * 1024 * 1024 if megabytes > 0 else None


def _limit_memory():
    limit = memory_limit_bytes()
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_nb_serve(binary, *args, cwd=None):
    """Run `nb-serve inspect ARGS...` under the memory limit; a hang fails the test."""
    argv = [str(binary), "inspect", *map(str, args)]
    try:
        completed = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
            preexec_fn=_limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"`{' '.join(argv)}` did not finish within {RUN_TIMEOUT_S} s (stderr: {expired.stderr!r})")
    return Result(
        argv,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


@dataclasses.dataclass
class RegionBatch:
    """One `nb-serve inspect STORE --regions LIST` run exporting every region case of a store."""

    result: Result
    outputs: dict  # RegionCase -> (line number in the list, .npy path)

    def line_errors(self, line):
        """The error lines nb-serve printed for this line of the list."""
        return [text for text in self.result.stderr.splitlines() if f":{line}: " in text and text.startswith("error:")]


_region_batches = {}


def region_batch(binary, fixtures, store):
    """Exports all of `store`'s region cases in one nb-serve run (once per session and store)."""
    if store not in _region_batches:
        cases = [case for case in region_cases(fixtures.manifest) if case.store == store]
        directory = Path(tempfile.mkdtemp(prefix="regions-", dir=fixtures.root))
        outputs, lines = {}, []
        for number, case in enumerate(cases, start=1):
            out = directory / f"{number}.npy"
            outputs[case] = (number, out)
            lines.append(f"{case.name}\t{case.spec}\t{out}\n")
        listing = directory / "regions.tsv"
        listing.write_text("".join(lines))
        result = run_nb_serve(binary, fixtures.path(store), "--regions", listing)
        _region_batches[store] = RegionBatch(result, outputs)
    return _region_batches[store]


def command_args(command, path, array=None, npy=None):
    """Arguments (after `inspect`) for one of the manifest's command names."""
    if command == "inspect":
        return [path]
    if command == "json":
        return [path, "--json"]
    if command == "verify":
        return [path, "--verify"]
    if command == "npy":
        return [path, "--array", array, "--npy", npy]
    raise ValueError(command)


# ---------------------------------------------------------------------------
# Parametrisation


@dataclasses.dataclass(frozen=True)
class GoodArray:
    store: str
    name: str
    info: dict

    def __str__(self):
        return f"{Path(self.store).name}:{self.name}"


@dataclasses.dataclass(frozen=True)
class RegionCase:
    store: str
    name: str
    spec: str
    kind: str

    def __str__(self):
        return f"{Path(self.store).name}:{self.name}[{self.spec}]({self.kind})"


@dataclasses.dataclass(frozen=True)
class DamagedChunk:
    store: str
    array: str
    chunk_key: str
    why: str

    def __str__(self):
        return f"{Path(self.store).name}:{self.array}"


@dataclasses.dataclass(frozen=True)
class BadCase:
    entry_name: str
    command: str
    must_fail: bool

    def __str__(self):
        return f"{self.entry_name}:{self.command}"


def good_arrays(manifest):
    return [
        GoodArray(entry["path"], name, info) for entry in manifest["good"] for name, info in entry["arrays"].items()
    ]


def region_cases(manifest):
    cases = []
    for entry in manifest["good"]:
        for name in entry["region_arrays"]:
            info = entry["arrays"][name]
            seed = zlib.crc32(f"{entry['path']}:{name}".encode())
            for kind, spec in region_specs(info, np.random.default_rng(seed)):
                cases.append(RegionCase(entry["path"], name, spec, kind))
    return cases


def damaged_chunks(manifest):
    return [
        DamagedChunk(entry["path"], damage["array"], damage["chunk_key"], damage["why"])
        for entry in manifest["corrupt"]
        for damage in entry["damaged"]
    ]


def bad_cases(manifest):
    cases = []
    for entry in manifest["bad"]:
        for command in entry["must_fail"] + entry["may_fail"]:
            if command == "npy" and entry["array"] is None:
                continue
            cases.append(BadCase(entry["name"], command, command in entry["must_fail"]))
    return cases


# ---------------------------------------------------------------------------
# Region specs (numpy-like, one comma-separated item per dimension)


def region_specs(info, rng):
    """(kind, spec) pairs: targeted regions first, then seeded random ones."""
    shape, chunks = info["shape"], info["chunks"]
    specs = [
        ("last-chunks", ",".join(f"{(n - 1) // c * c}:" for n, c in zip(shape, chunks))),
        ("all-integers", ",".join(str(int(rng.integers(0, n))) for n in shape)),
        ("single-element", ",".join(f"{i}:{i + 1}" for i in (n - 1 for n in shape))),
    ]
    if info["missing_chunks"]:
        index = info["missing_chunks"][len(info["missing_chunks"]) // 2]
        bounds = [(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape)]
        specs.append(("inside-missing-chunk", ",".join(f"{a}:{b}" for a, b in bounds)))
        specs.append(
            ("around-missing-chunk", ",".join(f"{max(0, a - 1)}:{min(n, b + 1)}" for (a, b), n in zip(bounds, shape)))
        )
    specs += [("random", random_spec(shape, rng)) for _ in range(RANDOM_REGIONS_PER_ARRAY)]
    return specs


def random_spec(shape, rng):
    return ",".join(random_item(n, rng) for n in shape)


def random_item(n, rng):
    start = int(rng.integers(0, n))
    stop = int(rng.integers(start + 1, n + 1))
    forms = [f"{start}:{stop}", ":", f"{start}:", f":{stop}", str(start)]
    return forms[int(rng.choice(len(forms), p=[0.5, 0.1, 0.1, 0.1, 0.2]))]


def parse_region(spec):
    """The numpy index a spec stands for."""

    def item(text):
        if ":" not in text:
            return int(text)
        start, stop = text.split(":")
        return slice(int(start) if start else None, int(stop) if stop else None)

    return tuple(item(part) for part in spec.split(","))
