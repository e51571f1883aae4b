"""Hostile and odd files through `nb-serve inspect`: claimed shapes far larger than the file, FIFOs,
directories and symbolic-link loops where chunks belong, names carrying terminal escape sequences.

Every fixture is written by zarr-python; the damage is what an attacker or a clumsy operator would do
to it afterwards. Each run is bounded in time and address space, and its peak RSS is measured.
"""

from __future__ import annotations

import os
import sys
import signal
import re
import resource
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

import loader_support as support

RUN_TIMEOUT_S = 120
ADDRESS_SPACE_LIMIT = 3 << 30


class Run:
    def __init__(self, argv, returncode, stdout, stderr, max_rss_bytes, seconds):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.max_rss_bytes = max_rss_bytes
        self.seconds = seconds

    def describe(self) -> str:
        return (f"`{' '.join(map(str, self.argv))}` → {self.returncode}, peak RSS {self.max_rss_bytes >> 20} MiB, "
                f"{self.seconds:.1f} s\n--- stdout ---\n{self.stdout[-2000:]}\n--- stderr ---\n{self.stderr[-2000:]}")


# Runs the command from a small process of its own: Linux carries the peak RSS of whatever a process was
# forked from across exec (signal->maxrss), so a child forked straight from a pytest worker that has loaded
# torch would report that worker's RSS as its own. The launcher sets the address-space limit, spawns the
# command (vfork from a ~10 MB interpreter), and reports its exit status and peak RSS on a pipe.
_LAUNCHER = """
import os, resource, sys
limit, report, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}".encode())
"""


def inspect(*args, timeout_s: float = RUN_TIMEOUT_S) -> Run:
    """`nb-serve inspect ARGS` under an address-space limit, killed after `timeout_s`; with its own
    peak RSS (from wait4, in a launcher that is not a copy of this test process)."""
    argv = [str(support.require_binary()), "inspect", *map(str, args)]
    started = time.monotonic()
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(ADDRESS_SPACE_LIMIT), str(write_end), *argv], stdout=out,
            stderr=err, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        timer = threading.Timer(timeout_s, lambda: os.killpg(process.pid, signal.SIGKILL))
        timer.start()
        try:
            process.wait()
            report = os.read(read_end, 100).decode().split()
        finally:
            timer.cancel()
            os.close(read_end)
        returncode, max_rss_kib = (int(report[0]), int(report[1])) if len(report) == 2 else (process.returncode, 0)
        out.seek(0)
        err.seek(0)
        run = Run(argv, returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                  max_rss_kib * 1024, time.monotonic() - started)
    if run.seconds >= timeout_s:
        pytest.fail(f"did not finish within {timeout_s} s: {run.describe()}")
    return run


def zip_array(path: Path, name: str, shape, chunks, dtype="<f4", fill_value=0, **kwargs) -> zarr.Array:
    store = zarr.ZipStore(str(path), mode="w")
    group = zarr.group(store=store)
    array = group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, **kwargs)
    return array, store


# ------------------------------------------------------------------------------------------------------
# Claimed shapes (issue: 144 KB files declaring [2, 1e8, 4] took 3.1 GB; [2^40, 31] filled the disk)


def test_export_of_a_huge_claimed_shape_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.zip"
    array, store = zip_array(path, "a", (2, 10**8, 4), (1, 1000, 4), compressor=zarr.Blosc("lz4", 5))
    rng = np.random.default_rng(1)
    stored = rng.standard_normal((2, 3000, 4)).astype("<f4")
    array[:, :3000] = stored
    array[1, 5_000_000:5_001_000] = 7.0
    store.close()
    assert path.stat().st_size < 1 << 20

    rows = 12_500_000  # 2 × 12.5 M × 4 float32 = 400 MB of output, mostly fill values
    out = tmp_path / "a.npy"
    run = inspect(path, "--array", "a", "--npy", out, "--region", f":,0:{rows},:")
    assert run.returncode == 0, run.describe()
    exported = np.load(out, mmap_mode="r")
    assert exported.shape == (2, rows, 4) and exported.dtype == np.dtype("<f4")
    assert np.array_equal(exported[:, :3000], stored)
    assert np.all(exported[1, 5_000_000:5_001_000] == 7.0)
    assert np.all(exported[0, 4_999_000:5_002_000] == 0) and np.all(exported[:, 3000:4000] == 0)
    # The whole output is 400 MB: the export must not hold it, nor one 200 MB row of the first axis.
    assert run.max_rss_bytes < 160 << 20, run.describe()


@pytest.mark.parametrize("shape,chunks,dtype", [
    ((2, 2**32, 4), (1, 1000, 4), "<f8"),
    ((2**40, 31), (1000, 31), "<f8"),
], ids=["2x2^32x4", "2^40x31"])
def test_export_that_cannot_fit_the_file_system_is_refused_before_writing(tmp_path, shape, chunks, dtype):
    path = tmp_path / "claims.zip"
    array, store = zip_array(path, "a", shape, chunks, dtype=dtype)
    array[(0,) * (len(shape) - 1) + (slice(0, 3),)] = 1  # one stored chunk
    store.close()
    need = np.prod(shape, dtype=object) * np.dtype(dtype).itemsize
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    if need <= free:
        pytest.skip(f"this file system has {free} bytes free, enough for the {need}-byte export")
    out = tmp_path / "out.npy"
    run = inspect(path, "--array", "a", "--npy", out)
    assert run.returncode == 1, run.describe()
    claimed = re.search(r"needs (\d+) bytes", run.stderr)
    assert claimed and need <= int(claimed.group(1)) <= need + 4096, run.describe()  # data + .npy header
    assert "free" in run.stderr and str(out) in run.stderr, run.describe()
    assert not out.exists(), "the refused export still created its output file"
    assert run.max_rss_bytes < 100 << 20, run.describe()
    assert run.seconds < 30, run.describe()


def test_export_whose_chunks_straddle_the_region_equals_numpy(tmp_path):
    """Blocks split at odd places (partial chunks at both ends of every axis) still equal NumPy's slice;
    a small shape here, the same block walk as the huge one."""
    path = tmp_path / "odd.zip"
    array, store = zip_array(path, "a", (7, 45, 13, 3), (2, 8, 5, 2), dtype="<i4", compressor=zarr.Blosc("zstd", 3))
    data = np.arange(np.prod(array.shape), dtype="<i4").reshape(array.shape)
    array[:] = data
    array.set_orthogonal_selection((slice(2, 4), slice(8, 16)), 0)  # chunks that read as stored values
    data[2:4, 8:16] = 0
    store.close()
    for region, expected in [("1:6,3:44,1:12,:", data[1:6, 3:44, 1:12, :]), ("3,:,2:11,1", data[3, :, 2:11, 1]),
                             (":,5,:,:", data[:, 5]), (":", data)]:
        out = tmp_path / "out.npy"
        run = inspect(path, "--array", "a", "--npy", out, "--region", region)
        assert run.returncode == 0, run.describe()
        assert np.array_equal(np.load(out), expected), region


# ------------------------------------------------------------------------------------------------------
# Things that are not files where chunks belong (directory stores)


def directory_array(path: Path, separator: str = ".") -> tuple[zarr.Array, np.ndarray]:
    store = zarr.DirectoryStore(str(path), dimension_separator=separator)
    group = zarr.group(store=store)
    array = group.create_dataset("a", shape=(4, 6), chunks=(2, 3), dtype="<u2")
    data = np.arange(24, dtype="<u2").reshape(4, 6)
    array[:] = data
    return array, data


def test_fifo_chunk_does_not_hang_a_reader_and_fails_verify(tmp_path):
    store = tmp_path / "store"
    directory_array(store)
    chunk = store / "a" / "1.0"
    chunk.unlink()
    os.mkfifo(chunk)
    for args in (["--verify"], ["--array", "a", "--npy", tmp_path / "out.npy"]):
        run = inspect(store, *args, timeout_s=30)
        assert run.returncode == 1, run.describe()
        assert "'a/1.0'" in run.stderr and "FIFO" in run.stderr, run.describe()


@pytest.mark.parametrize("kind", ["directory", "symlink-loop", "symlink-to-directory"])
def test_verify_fails_on_a_chunk_that_is_not_a_file(tmp_path, kind):
    store = tmp_path / "store"
    directory_array(store)
    chunk = store / "a" / "0.1"
    chunk.unlink()
    if kind == "directory":
        chunk.mkdir()
        (chunk / "inside").write_bytes(b"x")
    elif kind == "symlink-loop":
        os.symlink("0.1", chunk)
    else:
        os.symlink(str(tmp_path), chunk)
    run = inspect(store, "--verify", timeout_s=30)
    assert run.returncode == 1, run.describe()
    assert "'a/0.1'" in run.stderr, run.describe()
    assert "verify: 1 of" in run.stderr, run.describe()
    npy = inspect(store, "--array", "a", "--npy", tmp_path / "out.npy", timeout_s=30)
    assert npy.returncode == 1 and "'a/0.1'" in npy.stderr, npy.describe()


def test_dangling_symlink_chunk_reads_as_missing_like_zarr(tmp_path):
    store = tmp_path / "store"
    array, data = directory_array(store)
    chunk = store / "a" / "0.1"
    chunk.unlink()
    os.symlink(str(tmp_path / "nowhere"), chunk)
    expected = zarr.open_group(str(store), mode="r")["a"][:]
    run = inspect(store, "--array", "a", "--npy", tmp_path / "out.npy", timeout_s=30)
    assert run.returncode == 0, run.describe()
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_symlink_loops_between_directories_do_not_make_the_walk_explode(tmp_path):
    store = tmp_path / "store"
    directory_array(store, separator="/")
    for name in ("x", "y", "z"):
        os.symlink(str(store), store / "a" / name)
    run = inspect(store, "--verify", timeout_s=30)
    assert run.returncode == 0, run.describe()
    assert "all 4 chunks" in run.stderr, run.describe()


# ------------------------------------------------------------------------------------------------------
# Names with escape sequences reach the terminal escaped


EVIL = "evil\x1b[2J\x1b]0;owned\x07\u202etxt.exe"


def assert_escaped(text: str):
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, repr(text)


def test_array_and_entry_names_are_printed_escaped(tmp_path):
    path = tmp_path / "evil.zip"
    array, store = zip_array(path, EVIL, (4, 4), (2, 2), compressor=zarr.Blosc("lz4", 5))
    array[:] = 1
    store.close()
    table = inspect(path)
    assert table.returncode == 0, table.describe()
    assert_escaped(table.stdout)
    assert "evil\\x1b[2J" in table.stdout and "\\u{202e}" in table.stdout, table.stdout

    # Damage one chunk: --verify and --npy name it, escaped.
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(EVIL + "/0.0")
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(fh.read(4), "<u2")
        fh.seek(info.header_offset + 30 + int(name_length) + int(extra_length) + 2)
        fh.write(b"\xff\xff\xff\xff")
    for args in (["--verify"], ["--array", EVIL, "--npy", tmp_path / "out.npy"]):
        run = inspect(path, *args)
        assert run.returncode == 1, run.describe()
        assert_escaped(run.stderr + run.stdout)
        assert "evil\\x1b[2J" in run.stderr and "0.0" in run.stderr, run.describe()

    missing = inspect(path, "--array", "nothing", "--npy", tmp_path / "out.npy")
    assert missing.returncode == 1
    assert_escaped(missing.stderr)
    assert "evil\\x1b" in missing.stderr, missing.describe()
