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
        --height 180 --width 320 --seed 7 --reference-samples 8 --batch-size 2 --val-split 0.25 --quiet
fi
config=config/demo.yaml
"$bin" inspect "$data/scene0000.zip" --verify
for scene in "$data"/scene*.zip; do
    "$bin" inspect "$scene" --verify >/dev/null 2>&1 || { echo "demo: $scene failed verification" >&2; exit 1; }
done
echo "demo: every chunk of $(ls "$data"/scene*.zip | wc -l) scenes decodes" >&2
echo "demo: the first batches of epoch 0 (noisebase's split, order and augmentation):" >&2
"$bin" plan --config "$config" | head -n 3
"$bin" dump --config "$config" --batch 1 --out "$data/batch1"
python3 - "$data/batch1" <<'PY'
import glob, os, sys
import numpy as np
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.npy"))):
    array = np.load(path)
    print(f"  {os.path.basename(path)[:-4]:28s} {str(array.dtype):8s} {array.shape}")
PY
"$bin" bench --config "$config" --decode-only --frames 32
