"""pytest wiring for the nb-serve storage conformance suite; the machinery is in storage_harness."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Imported after the path change so that --import-mode=importlib finds the harness too.
from storage_harness import (
    REPO_ROOT,
    bad_cases,
    binary_path,
    damaged_chunks,
    good_arrays,
    load_fixtures,
    region_cases,
    remove_temporary_fixtures,
)

# Parametrised argument name -> the manifest's cases for it.
PARAMETERS = {
    "good_store": lambda manifest: manifest["good"],
    "good_array": good_arrays,
    "region_case": region_cases,
    "corrupt_store": lambda manifest: manifest["corrupt"],
    "damaged_chunk": damaged_chunks,
    "bad_case": bad_cases,
}


def case_id(value):
    if isinstance(value, dict):
        return value.get("name") or Path(value["path"]).name
    return str(value)


def pytest_generate_tests(metafunc):
    for name, cases in PARAMETERS.items():
        if name in metafunc.fixturenames:
            values = cases(load_fixtures().manifest)
            metafunc.parametrize(name, values, ids=[case_id(value) for value in values])


def pytest_unconfigure(config):
    remove_temporary_fixtures()


@pytest.fixture(scope="session")
def fixtures():
    return load_fixtures()


@pytest.fixture(scope="session")
def nb_serve():
    path = binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"nb-serve binary not found at {path}: run `swift build` in {REPO_ROOT} (or set NB_SERVE)")
    return path
