#!/usr/bin/env bash
# Installs what nb-serve needs to build and test, only where it is missing:
# Debian's -dev packages for the native libraries (and systemd-analyze, which checks the service unit; strace,
# which checks the daemon's system calls against the unit's filter; util-linux's setpriv and unshare; iproute2's ip,
# which brings up loopback in the metrics test's own network namespace), and the
# Python packages the tests use as oracles.
set -euo pipefail

apt_packages=(pkg-config libzmq3-dev libzstd-dev libblosc-dev liblz4-dev zlib1g-dev systemd strace util-linux iproute2)
if ! pkg-config --exists libzmq libzstd blosc liblz4 zlib 2>/dev/null || ! command -v systemd-analyze >/dev/null \
    || ! command -v strace >/dev/null || ! command -v setpriv >/dev/null || ! command -v ip >/dev/null; then
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

# zarr-python 2.x writes the test fixtures; noisebase is the semantic oracle; pytest-xdist runs the suite in
# parallel; flit_core builds the client package (installed offline, without build isolation, in its test);
# prometheus_client's text parser reads the daemon's /metrics (Tests/conformance/test_metrics.py).
if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m
import numpy, numcodecs, pytest, xdist, yaml, zmq, hydra, tqdm, imageio, flit_core, prometheus_client
assert m.version("zarr").startswith("2.")
assert m.version("noisebase") == "1.1.1"
PY
then
    echo "setup: installing Python test dependencies" >&2
    python3 -m pip install -q --disable-pip-version-check 'zarr<3' numcodecs numpy pytest pytest-xdist pyyaml pyzmq \
        hydra-core tqdm requests imageio flit_core prometheus_client
    python3 -m pip install -q --disable-pip-version-check --no-deps noisebase==1.1.1
fi

# torch and Lightning: the client's torch/Lightning tests and the training comparison with noisebase's own
# loaders (Tests/conformance/test_training.py). torch 2.13.0 because pip finds its CPU build on the CI machines
# (NB_SERVE_TORCH picks another requirement). Where they cannot be installed the suite still runs, and ends by
# listing the tests it could not run.
if ! python3 -c 'import torch, lightning' 2>/dev/null; then
    torch_requirement="${NB_SERVE_TORCH:-torch==2.13.0}"
    echo "setup: installing $torch_requirement and lightning" >&2
    if ! python3 -m pip install -q --disable-pip-version-check "$torch_requirement" lightning; then
        echo "setup: could not install torch and lightning; their tests will be reported as NOT RUN" >&2
    fi
fi
