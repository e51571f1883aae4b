"""Conformance tests for `nb-serve inspect` against stores written by zarr-python.

zarr-python and numpy are the oracle for every expected value; nothing here is a
recorded output of nb-serve. Parameters come from the fixture manifest (see conftest).
"""

import ast
import functools
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from storage_harness import command_args, parse_region, region_batch, run_nb_serve

NPY_MAGIC = b"\x93NUMPY"


# ---------------------------------------------------------------------------
# Oracle: what zarr-python reads


@functools.lru_cache(maxsize=128)
def expected_array(store_path, name):
    """The array as zarr-python reads it, with null-fill missing chunks as zeros.

    zarr-python leaves those regions uninitialised (np.empty), while the contract says zeros.
    """
    group = zarr.open_group(store_path, mode="r")
    array = group[name]
    data = np.asarray(array[...])
    if array.fill_value is None:
        metadata = zarray_metadata(store_path, name)
        for index in missing_chunk_indices(array.store, name, metadata):
            data[chunk_region(index, metadata)] = 0
    group.store.close()
    data.setflags(write=False)
    return data


def zarray_metadata(store_path, name):
    """The array's .zarray document as zarr's store returns it (for ZIP: the last entry)."""
    group = zarr.open_group(store_path, mode="r")
    try:
        return json.loads(group.store[f"{name}/.zarray"])
    finally:
        group.store.close()


def chunk_keys(metadata):
    """Grid index -> chunk key, in the array's own separator."""
    separator = metadata.get("dimension_separator") or "."
    grid = [math.ceil(n / c) for n, c in zip(metadata["shape"], metadata["chunks"])]
    return {index: separator.join(map(str, index)) or "0" for index in np.ndindex(*grid)}


def missing_chunk_indices(store, name, metadata):
    return [index for index, key in chunk_keys(metadata).items() if f"{name}/{key}" not in store]


def chunk_region(index, metadata):
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, metadata["chunks"], metadata["shape"]))


def stored_chunk_bytes(store_path, name, metadata):
    """Sum of the sizes of the array's chunk objects as stored (compressed ZIP entry sizes)."""
    keys = [f"{name}/{key}" for key in chunk_keys(metadata).values()]
    path = Path(store_path)
    if path.is_dir():
        return sum((path / key).stat().st_size for key in keys if (path / key).is_file())
    with zipfile.ZipFile(path) as archive:
        entries = archive.NameToInfo  # the last entry of each name, as zarr reads it
        return sum(entries[key].compress_size for key in keys if key in entries)


# ---------------------------------------------------------------------------
# Checks on nb-serve's output


def read_npy_header(path):
    """(version, header dict, offset of the data) of a .npy file, without trusting numpy's leniency."""
    raw = Path(path).read_bytes()
    check(raw[:6] == NPY_MAGIC, f"{path} is not a .npy file (starts {raw[:8]!r})")
    version = (raw[6], raw[7])
    check(version == (1, 0), f"{path}: .npy version {version}, expected (1, 0)")
    header_length = int.from_bytes(raw[8:10], "little")
    header = ast.literal_eval(raw[10 : 10 + header_length].decode("latin1"))
    return version, header, 10 + header_length


def check(condition, message):
    """Fail with just the message: these failures are about nb-serve, not this file's code."""
    if not condition:
        pytest.fail(message, pytrace=False)


def assert_npy_equal(path, expected, context):
    expected = np.asarray(expected)
    little = expected.dtype.newbyteorder("<")
    _, header, data_offset = read_npy_header(path)
    check(header["descr"][0] in "<|", f"{context}: descr {header['descr']!r} is not little-endian")
    check(np.dtype(header["descr"]) == little, f"{context}: dtype {header['descr']!r}, expected {little.str!r}")
    check(header["fortran_order"] is False, f"{context}: fortran_order is {header['fortran_order']}")
    check(tuple(header["shape"]) == expected.shape, f"{context}: shape {header['shape']}, expected {expected.shape}")
    size = Path(path).stat().st_size
    check(
        size == data_offset + expected.nbytes,
        f"{context}: file is {size} bytes, expected {data_offset + expected.nbytes}",
    )
    assert_values_equal(np.load(path), expected.astype(little), context)


def assert_values_equal(actual, expected, context):
    """Bit-exact comparison, except that any NaN matches any NaN."""
    flat_actual, flat_expected = actual.reshape(-1), expected.reshape(-1)
    bits = f"<u{expected.dtype.itemsize}"
    same = flat_actual.view(bits) == flat_expected.view(bits)
    if expected.dtype.kind == "f":
        same |= np.isnan(flat_actual) & np.isnan(flat_expected)
    wrong = np.flatnonzero(~same)
    samples = [
        f"  at {np.unravel_index(i, expected.shape) if expected.shape else ()}: "
        f"got {flat_actual[i]!r}, expected {flat_expected[i]!r}"
        for i in wrong[:8]
    ]
    check(wrong.size == 0, f"{context}: {wrong.size} of {flat_expected.size} elements differ\n" + "\n".join(samples))


def mentions_name(text, name):
    """name appears as a whole name (so 'zstd_flipped' does not match 'blosc_zstd_flipped')."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def mentions_key(text, key):
    """key appears as a whole chunk key (so '1.1' does not match '1.10' or '11.1')."""
    return re.search(rf"(?<![0-9]){re.escape(key)}(?![0-9]|[./][0-9])", text) is not None


def assert_clean_failure(result, path, array=None, chunk_key=None, context=""):
    """Exit status 1, an `error:` message naming the file and, where given, array and chunk."""
    prefix = f"{context}\n" if context else ""
    check(result.returncode == 1, f"{prefix}expected exit status 1\n{result.describe()}")
    check(result.stderr.startswith("error:"), f"{prefix}stderr must start with 'error:'\n{result.describe()}")
    check(str(path) in result.stderr, f"{prefix}stderr does not name {path}\n{result.describe()}")
    if array is not None:
        check(mentions_name(result.stderr, array), f"{prefix}stderr does not name array {array!r}\n{result.describe()}")
    if chunk_key is not None:
        check(
            mentions_key(result.stderr, chunk_key),
            f"{prefix}stderr does not name chunk {chunk_key!r}\n{result.describe()}",
        )


def assert_no_crash(result, path, context=""):
    """Success, or a clean failure; never a signal or another status."""
    check(result.returncode in (0, 1), f"{context}\nexpected exit status 0 or 1\n{result.describe()}")
    if result.returncode == 1:
        assert_clean_failure(result, path, context=context)


def assert_rejected(result):
    """A usage error (2) or a clean failure (1), with something said on stderr."""
    check(result.returncode in (1, 2), f"expected exit status 1 or 2\n{result.describe()}")
    check(bool(result.stderr.strip()), f"no message on stderr\n{result.describe()}")
    if result.returncode == 1:
        check(result.stderr.startswith("error:"), f"stderr must start with 'error:'\n{result.describe()}")


def assert_succeeded(result):
    check(result.returncode == 0, f"expected exit status 0\n{result.describe()}")


def reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def parse_strict_json(text):
    """JSON as the standard defines it: bare NaN/Infinity are not allowed."""
    return json.loads(text, parse_constant=reject_constant)


def same_json_value(reported, expected):
    """Equal as JSON values: 7 and 7.0 match, true and 1 do not, big integers compare exactly."""
    if isinstance(expected, dict):
        return (
            isinstance(reported, dict)
            and reported.keys() == expected.keys()
            and all(same_json_value(reported[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(reported, list)
            and len(reported) == len(expected)
            and all(same_json_value(r, e) for r, e in zip(reported, expected))
        )
    if isinstance(expected, bool) or isinstance(reported, bool):
        return type(reported) is type(expected) and reported == expected
    if isinstance(expected, (int, float)):
        return isinstance(reported, (int, float)) and reported == expected
    return type(reported) is type(expected) and reported == expected


# ---------------------------------------------------------------------------
# Good stores


def test_npy_matches_zarr(nb_serve, fixtures, good_array, tmp_path):
    store = fixtures.path(good_array.store)
    out = tmp_path / "out.npy"
    result = run_nb_serve(nb_serve, *command_args("npy", store, good_array.name, out))
    assert_succeeded(result)
    assert_npy_equal(out, expected_array(str(store), good_array.name), str(good_array))


def test_json_matches_metadata(nb_serve, fixtures, good_store):
    store = fixtures.path(good_store["path"])
    result = run_nb_serve(nb_serve, *command_args("json", store))
    assert_succeeded(result)
    document = parse_strict_json(result.stdout)
    reported = document["arrays"]
    extra = sorted(set(reported) - set(good_store["arrays"]))
    absent = sorted(set(good_store["arrays"]) - set(reported))
    check(not extra and not absent, f"arrays not in zarr-python's listing: {extra}; arrays not reported: {absent}")

    problems = []
    for name in good_store["arrays"]:
        metadata = zarray_metadata(str(store), name)
        dtype = np.dtype(metadata["dtype"])
        expected = {
            "shape": metadata["shape"],
            "dtype": dtype.name,
            "chunks": metadata["chunks"],
            "compressor": metadata["compressor"],
            "fill_value": metadata["fill_value"],
            "stored_bytes": stored_chunk_bytes(str(store), name, metadata),
            "nbytes": math.prod(metadata["shape"]) * dtype.itemsize,
        }
        for key, value in expected.items():
            if key not in reported[name]:
                problems.append(f"{name}: no {key!r}")
            elif not same_json_value(reported[name][key], value):
                problems.append(f"{name}.{key}: reported {reported[name][key]!r}, expected {value!r}")
    check(not problems, "\n".join(problems))


def test_human_output_names_every_array(nb_serve, fixtures, good_store):
    store = fixtures.path(good_store["path"])
    result = run_nb_serve(nb_serve, *command_args("inspect", store))
    assert_succeeded(result)
    unnamed = [name for name in good_store["arrays"] if not mentions_name(result.stdout, name)]
    check(not unnamed, f"arrays missing from the table: {unnamed}\n{result.stdout}")
    dtype_names = {np.dtype(info["dtype"]).name for info in good_store["arrays"].values()}
    absent = sorted(name for name in dtype_names if not mentions_name(result.stdout, name))
    check(not absent, f"dtype names missing from the table: {absent}\n{result.stdout}")


def test_verify_accepts_good_store(nb_serve, fixtures, good_store):
    result = run_nb_serve(nb_serve, *command_args("verify", fixtures.path(good_store["path"])))
    assert_succeeded(result)


def test_region_matches_numpy(nb_serve, fixtures, region_case):
    """Each region case is its own test; the exports of one store come from one `--regions` run."""
    store = fixtures.path(region_case.store)
    batch = region_batch(nb_serve, fixtures, region_case.store)
    line, out = batch.outputs[region_case]
    errors = batch.line_errors(line)
    check(batch.result.returncode in (0, 1) and not errors,
          f"{region_case} (line {line}): {errors}\n{batch.result.describe()}")
    expected = expected_array(str(store), region_case.name)[parse_region(region_case.spec)]
    assert_npy_equal(out, expected, str(region_case))


def test_region_list_reports_failing_lines_and_writes_the_others(nb_serve, fixtures, tmp_path):
    """`--regions`: a line that cannot be read is reported with its line number (exit 1); the others are written,
    an empty selection exports the whole array."""
    store = fixtures.path("good/shapes.zip")
    listing = tmp_path / "regions.tsv"
    listing.write_text(f"d3_edges\t1:3,:,2\t{tmp_path / 'a.npy'}\n"
                       f"no_such_array\t0\t{tmp_path / 'b.npy'}\n"
                       f"d3_edges\t9,0,0\t{tmp_path / 'c.npy'}\n"
                       f"d3_edges\t\t{tmp_path / 'd.npy'}\n")
    result = run_nb_serve(nb_serve, store, "--regions", listing)
    check(result.returncode == 1, f"expected exit status 1\n{result.describe()}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    check(len(errors) == 2 and f"{listing}:2: " in errors[0] and "no_such_array" in errors[0]
          and f"{listing}:3: " in errors[1], f"expected errors for lines 2 and 3\n{result.describe()}")
    whole = expected_array(str(store), "d3_edges")
    assert_npy_equal(tmp_path / "a.npy", whole[1:3, :, 2], "line 1")
    assert_npy_equal(tmp_path / "d.npy", whole, "line 4")
    check(not (tmp_path / "b.npy").exists(), "line 2 wrote a file")


@pytest.mark.parametrize("line, others", [("d3_edges\t0,0", []), ("d3_edges\ta:b\tout.npy", []),
                                           ("d3_edges\t0\tout.npy", ["--array", "d3_edges"])])
def test_region_list_usage_errors_exit_2(nb_serve, fixtures, tmp_path, line, others):
    """A malformed line (or --regions with --array) is a usage error before anything is written."""
    listing = tmp_path / "regions.tsv"
    listing.write_text(f"d3_edges\t0\t{tmp_path / 'first.npy'}\n{line}\n")
    result = run_nb_serve(nb_serve, fixtures.path("good/shapes.zip"), "--regions", listing, *others)
    check(result.returncode == 2, f"expected exit status 2\n{result.describe()}")
    check(others or f"{listing}:2:" in result.stderr, f"the message does not name line 2\n{result.describe()}")
    check(not (tmp_path / "first.npy").exists(), "a line was written despite the usage error")


def test_relative_store_path_works(nb_serve, fixtures):
    result = run_nb_serve(nb_serve, "good/shapes.zip", "--json", cwd=fixtures.root)
    assert_succeeded(result)
    check("d5_frames" in parse_strict_json(result.stdout)["arrays"], f"d5_frames not listed\n{result.describe()}")


# ---------------------------------------------------------------------------
# Damaged chunks


def test_verify_reports_each_damaged_chunk(nb_serve, fixtures, corrupt_store):
    store = fixtures.path(corrupt_store["path"])
    result = run_nb_serve(nb_serve, *command_args("verify", store))
    check(result.returncode == 1, f"expected exit status 1\n{result.describe()}")
    lines = result.stderr.splitlines()
    unreported = [
        f"{damage['array']} chunk {damage['chunk_key']} ({damage['why']})"
        for damage in corrupt_store["damaged"]
        if not any(
            str(store) in line and mentions_name(line, damage["array"]) and mentions_key(line, damage["chunk_key"])
            for line in lines
        )
    ]
    listing = "\n  ".join(unreported)
    check(not unreported, f"no stderr line names file, array and chunk for:\n  {listing}\n{result.describe()}")
    for name in corrupt_store["intact"]:
        check(not mentions_name(result.stderr, name), f"intact array {name!r} reported\n{result.describe()}")


def test_npy_of_damaged_chunk_fails(nb_serve, fixtures, damaged_chunk, tmp_path):
    store = fixtures.path(damaged_chunk.store)
    result = run_nb_serve(nb_serve, *command_args("npy", store, damaged_chunk.array, tmp_path / "out.npy"))
    assert_clean_failure(result, store, damaged_chunk.array, damaged_chunk.chunk_key)


def test_intact_array_beside_damaged_ones_reads(nb_serve, fixtures, corrupt_store, tmp_path):
    store = fixtures.path(corrupt_store["path"])
    for name in corrupt_store["intact"]:
        out = tmp_path / f"{name}.npy"
        result = run_nb_serve(nb_serve, *command_args("npy", store, name, out))
        assert_succeeded(result)
        assert_npy_equal(out, expected_array(str(store), name), f"{corrupt_store['path']}:{name}")


# ---------------------------------------------------------------------------
# Bad inputs


def bad_entry(fixtures, name):
    return next(entry for entry in fixtures.manifest["bad"] if entry["name"] == name)


def test_bad_input(nb_serve, fixtures, bad_case, tmp_path):
    entry = bad_entry(fixtures, bad_case.entry_name)
    store = fixtures.path(entry["path"])
    out = tmp_path / "out.npy"
    result = run_nb_serve(nb_serve, *command_args(bad_case.command, store, entry["array"], out))
    context = f"{entry['name']}: {entry['why']}"
    if bad_case.must_fail:
        assert_clean_failure(result, store, entry["array"], entry["chunk_key"], context)
        return
    assert_no_crash(result, store, context)
    if result.returncode == 0 and bad_case.command == "json":
        parse_strict_json(result.stdout)
    if result.returncode == 0 and bad_case.command == "npy":
        # Accepting the input is allowed here only if the data is then right.
        check(not entry["zarr_python_fails"], f"{context}: nb-serve read data zarr-python cannot")
        assert_npy_equal(out, expected_array(str(store), entry["array"]), context)


def test_error_names_path_as_given(nb_serve, fixtures):
    result = run_nb_serve(nb_serve, "bad/not_a_zip.zip", cwd=fixtures.root)
    assert_clean_failure(result, "bad/not_a_zip.zip")


@pytest.mark.parametrize("name", ["no_such_array", "sub", "sub/nothing", "d3_edges/.zarray"])
def test_unknown_array_fails(nb_serve, fixtures, name, tmp_path):
    store = fixtures.path("good/shapes.zip")
    result = run_nb_serve(nb_serve, *command_args("npy", store, name, tmp_path / "out.npy"))
    assert_clean_failure(result, store, name)


USAGE_ERRORS = {
    "no-path": [],
    "unknown-flag": ["{store}", "--no-such-flag"],
    "npy-without-array": ["{store}", "--npy", "{out}"],
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_exits_2(nb_serve, fixtures, case, tmp_path):
    values = {"store": fixtures.path("good/shapes.zip"), "out": tmp_path / "out.npy"}
    args = [arg.format(**values) for arg in USAGE_ERRORS[case]]
    result = run_nb_serve(nb_serve, *args)
    check(result.returncode == 2, f"expected exit status 2\n{result.describe()}")
    check(bool(result.stderr.strip()), f"no message on stderr\n{result.describe()}")


# Region specs outside the contract's grammar, on d3_edges (shape 9x10x11). Where numpy
# has a meaning for the index, nb-serve may implement it (and must then agree) or reject
# it; where numpy rejects it (None), nb-serve must too.
ODD_REGIONS = {
    "letters": ("a:b,:,:", None),
    "too-many-dims": (":,:,:,:", None),
    "index-past-end": ("9,0,0", None),
    "empty-item": ("0,,0", None),
    "step": ("0:8:2,:,:", (slice(0, 8, 2), slice(None), slice(None))),
    "negative-index": ("-1,:,:", (-1, slice(None), slice(None))),
    "stop-past-end": ("0:100,:,:", (slice(0, 100), slice(None), slice(None))),
    "reversed-bounds": ("5:2,:,:", (slice(5, 2), slice(None), slice(None))),
}


@pytest.mark.parametrize("case", sorted(ODD_REGIONS))
def test_odd_region(nb_serve, fixtures, case, tmp_path):
    spec, numpy_index = ODD_REGIONS[case]
    store = fixtures.path("good/shapes.zip")
    out = tmp_path / "out.npy"
    result = run_nb_serve(nb_serve, store, "--array", "d3_edges", "--npy", out, "--region", spec)
    if numpy_index is not None and result.returncode == 0:
        assert_npy_equal(out, expected_array(str(store), "d3_edges")[numpy_index], f"region {spec}")
    else:
        assert_rejected(result)
