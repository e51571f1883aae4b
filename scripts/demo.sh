#!/usr/bin/env bash
# The README's first command: builds nb-serve, generates the built-in demo dataset (a small ray-cast scene
# in Noisebase Sample Training Format v1) if it is absent, and reads it back natively with `nb-serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release
bin=.build/release/nb-serve
data=demo-data
if [ ! -f "$data/dataset.yaml" ]; then
    echo "demo: generating the demo dataset in $data/" >&2
    python3 Tests/fixtures/make_dataset.py "$data" --sequences 8 --frames 8 --crop 64 --samples 8 \
        --height 180 --width 320 --seed 7
fi
"$bin" inspect "$data/scene0000.zip" --verify
for scene in "$data"/scene*.zip; do
    "$bin" inspect "$scene" --verify >/dev/null 2>&1 || { echo "demo: $scene failed verification" >&2; exit 1; }
done
echo "demo: every chunk of $(ls "$data"/scene*.zip | wc -l) scenes decodes" >&2
