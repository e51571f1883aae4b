#!/usr/bin/env bash
# The README's first command: installs what is missing, builds nb-serve, and runs `nb-serve demo`, which
# generates the built-in demo dataset (a small ray-cast scene in Noisebase Sample Training Format v1) if
# it is absent, starts the daemon, consumes one epoch over its real sockets and shuts it down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product nb-serve
bin=.build/release/nb-serve
"$bin" demo --config config/demo.yaml
"$bin" inspect demo-data/scene0000.zip --verify >/dev/null
echo "demo: every chunk of demo-data/scene0000.zip verifies; single-thread decode speed:"
"$bin" bench --config config/demo.yaml --decode-only --frames 64
