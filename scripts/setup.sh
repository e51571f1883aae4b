#!/usr/bin/env bash
# Installs what nb-serve needs to build and test, only where it is missing:
# Debian's -dev packages for the native libraries (and systemd-analyze, which checks the service unit),
# and the Python packages the tests use as oracles.
set -euo pipefail

apt_packages=(pkg-config libzmq3-dev libzstd-dev libblosc-dev liblz4-dev zlib1g-dev systemd)
if ! pkg-config --exists libzmq libzstd blosc liblz4 zlib 2>/dev/null || ! command -v systemd-analyze >/dev/null; then
    echo "setup: installing ${apt_packages[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if ! command -v swift >/dev/null; then
    echo "setup: no 'swift' on PATH; install the Swift 6 toolchain (swift.org) first" >&2
    exit 1
fi

# zarr-python 2.x writes the test fixtures; noisebase (without torch) is the semantic oracle.
if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m
import numpy, numcodecs, pytest, yaml, zmq, hydra, tqdm, imageio
assert m.version("zarr").startswith("2.")
assert m.version("noisebase") == "1.1.1"
PY
then
    echo "setup: installing Python test dependencies" >&2
    python3 -m pip install -q --disable-pip-version-check 'zarr<3' numcodecs numpy pytest pyyaml pyzmq hydra-core tqdm requests imageio
    python3 -m pip install -q --disable-pip-version-check --no-deps noisebase==1.1.1
fi
