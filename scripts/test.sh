#!/usr/bin/env bash
# nb-serve's whole test suite: Swift unit tests, then the Python conformance suite that checks the
# built binary against zarr-python-written fixtures (and noisebase's own code as the oracle).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build
swift test
NB_SERVE="$PWD/.build/debug/nb-serve" python3 -m pytest -q Tests/conformance
