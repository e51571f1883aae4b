"""pytest wiring for the nb-serve conformance suites: the storage fixtures and their parametrisation (machinery
in storage_harness), the end-of-run reports (worst error per key against noisebase; torch / Lightning tests that
did not run), and grouping for pytest-xdist (scripts/test.sh runs the suite with `-n auto --dist loadgroup`)."""

import json
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


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): run on the same pytest-xdist worker as the group")
    config.pluginmanager.register(EndOfRunReports(config), "nbserve-end-of-run-reports")
    parallel = getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") != "no"
    if parallel and not hasattr(config, "workerinput") and not os.environ.get("NB_SERVE_FIXTURES"):
        # Generate the storage fixtures once here, and let pytest-xdist's workers (which inherit the
        # environment) reuse them instead of each writing its own copy.
        os.environ["NB_SERVE_FIXTURES"] = str(load_fixtures().root)


def pytest_generate_tests(metafunc):
    for name, cases in PARAMETERS.items():
        if name in metafunc.fixturenames:
            values = cases(load_fixtures().manifest)
            metafunc.parametrize(name, values, ids=[case_id(value) for value in values])


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "region_case" in callspec.params:
            # One `inspect --regions` run exports a store's region cases: keep them on one xdist worker.
            item.add_marker(pytest.mark.xdist_group(f"regions:{callspec.params['region_case'].store}"))
        elif item.path.name in ("test_training.py", "test_client.py"):
            # Module-scoped datasets and daemons: one worker each, so they are built once.
            item.add_marker(pytest.mark.xdist_group(item.path.name))


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        remove_temporary_fixtures()


class EndOfRunReports:
    """Reports printed once at the end of the run, from what every test (in any xdist worker) reported:
    the worst error per key of test_loader's dump comparisons (also written to
    <basetemp>/loader_conformance_errors.json and $NB_SERVE_LOADER_ERRORS), and the tests skipped because torch
    or Lightning is not installed."""

    def __init__(self, config):
        self.config = config
        self.errors = None
        self.not_run = []

    def pytest_runtest_logreport(self, report):
        for name, value in report.user_properties:
            if name == "loader_errors" and report.when == "teardown":
                if self.errors is None:
                    import loader_support
                    self.errors = loader_support.ErrorLog()
                self.errors.merge(value)
        if report.skipped and report.when == "setup":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if "not installed" in reason and ("torch" in reason or "lightning" in reason):
                self.not_run.append(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter):
        if self.errors is not None and self.errors.batches:
            self._write_errors(terminalreporter)
        if self.not_run:
            terminalreporter.write_sep("!", "nbserve torch / Lightning tests NOT RUN", yellow=True, bold=True)
            terminalreporter.write_line(f"torch or lightning is not installed: {len(self.not_run)} tests were not run:")
            for nodeid in self.not_run:
                terminalreporter.write_line(f"  {nodeid}")
            terminalreporter.write_line("install torch and lightning (scripts/setup.sh does) and run the suite again")

    def _write_errors(self, terminalreporter):
        import loader_support
        report = self.errors.as_json()
        report["tolerances"] = {"exact": "identical bytes", "relative": loader_support.RELATIVE_TOLERANCE}
        text = json.dumps(report, indent=2, default=str)
        targets = [self.config._tmp_path_factory.getbasetemp() / "loader_conformance_errors.json"]
        if os.environ.get("NB_SERVE_LOADER_ERRORS"):
            targets.append(Path(os.environ["NB_SERVE_LOADER_ERRORS"]))
        for target in targets:
            target.write_text(text + "\n")
        terminalreporter.write_line(
            f"nb-serve vs noisebase, worst error per key over {report['batches_compared']} batches "
            f"(orientations seen: {report['orientations_seen']}):")
        for key, entry in report["worst"].items():
            terminalreporter.write_line(f"  {key:32s} {entry['kind']:12s} {entry['error']:.3e}   ({entry['case']})")
        terminalreporter.write_line(f"  written to {', '.join(map(str, targets))}")


@pytest.fixture(scope="session")
def fixtures():
    return load_fixtures()


@pytest.fixture(scope="session")
def nb_serve():
    path = binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"nb-serve binary not found at {path}: run `swift build` in {REPO_ROOT} (or set NB_SERVE)")
    return path


@pytest.fixture(scope="session")
def binary() -> Path:
    """The nb-serve binary under test ($NB_SERVE), for every suite that runs it."""
    import loader_support

    return loader_support.require_binary()
