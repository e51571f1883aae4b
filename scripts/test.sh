#!/usr/bin/env bash
# nb-serve's whole test suite: Swift unit tests, then the Python conformance suites that check the built
# binary against zarr-python-written fixtures, noisebase's own code as the oracle, and the trainer client
# (torch and Lightning included) against real daemons. pytest runs on every CPU (pytest-xdist); tests that
# share an expensive fixture (a store's region exports, a module's daemon) stay together on one worker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build
swift test
NB_SERVE="$PWD/.build/debug/nb-serve" python3 -m pytest -q -n auto --dist loadgroup Tests/conformance
