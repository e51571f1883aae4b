#!/usr/bin/env bash
# Fuzzes nb-serve for longer than CI does: mutants of zarr-python stores through `inspect`, mutants of a
# dataset's sequence files through `dump`, and malformed control requests against a live daemon, for
# SECONDS (default 600) with a fresh seed. Failing inputs are kept under the work directory it prints.
#   scripts/fuzz.sh [SECONDS] [extra options of Tests/conformance/test_fuzz.py, e.g. --seed N --keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
scripts/setup.sh
swift build --product nb-serve
NB_SERVE="$PWD/.build/debug/nb-serve" exec python3 Tests/conformance/test_fuzz.py --seconds "$seconds" "$@"
