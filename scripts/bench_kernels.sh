#!/usr/bin/env bash
# Kernel-only benchmark (see bench_kernels.c): compiles the decode kernels as release builds do
# (-O2, no FP contraction, AVX2 unless NB_SERVE_GENERIC_CPU=1) with the harness and runs it.
#     scripts/bench_kernels.sh [repetitions]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch=(-march=haswell)
[ "${NB_SERVE_GENERIC_CPU:-0}" = 1 ] && arch=()
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
clang -O2 -ffp-contract=off "${arch[@]}" -I"$root/Sources/CDecodeKernels/include" -I"$root/Sources/CSIMDMath/include" \
    "$root/scripts/bench_kernels.c" "$root/Sources/CDecodeKernels/decode_kernels.c" -o "$out/bench_kernels" -lm
"$out/bench_kernels" "${1:-300}"
