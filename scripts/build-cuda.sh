#!/usr/bin/env bash
# The CUDA build for a GPU machine, on this (CPU-only) machine: CUDA 13.0 toolkit from PyPI
# wheels (scripts/cuda-toolchain.sh), then `cargo build --features cuda` into target/cuda and a
# stripped, gzipped binary in dist/ to carry over (cold: 20-30 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh "${CUDA_VENV:-$HOME/.cache/cuda13-venv}"
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda -p mslt-cli
mkdir -p dist
strip -o dist/mslt-cli target/cuda/release/mslt-cli
gzip -f dist/mslt-cli
echo "dist/mslt-cli.gz ready: on the GPU machine, gunzip it and run scripts/gpu-check.sh"
