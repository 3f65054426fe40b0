#!/usr/bin/env bash
# The CUDA builds for a GPU machine, on this (CPU-only) machine: CUDA 13.0 toolkit from PyPI
# wheels (scripts/cuda-toolchain.sh), then into target/cuda:
#   dist/mslt-cli.gz       `--features cuda`        (single GPU; needs no NCCL at run time)
#   dist/mslt-cli-nccl.gz  `--features cuda,nccl`   (data-parallel; links libnccl.so.2, NCCL 2.30)
# stripped and gzipped, to carry over (cold: 20-30 min on 2 cores; the NCCL variant reuses the
# CUDA kernels and takes a few minutes more). `ONLY=cuda` or `ONLY=nccl` builds one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CUDA_VENV:-$HOME/.cache/cuda13-venv}"
source scripts/cuda-toolchain.sh "$VENV"
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
mkdir -p dist
if [ "${ONLY:-}" != nccl ]; then
  CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda -p mslt-cli
  strip -o dist/mslt-cli target/cuda/release/mslt-cli
  gzip -f dist/mslt-cli
  echo "dist/mslt-cli.gz ready: on the GPU machine, gunzip it and run scripts/gpu-check.sh"
fi
if [ "${ONLY:-}" != cuda ]; then
  # NCCL 2.30 (what cudarc's `nccl` feature binds and what torch 2.15 cu130 ships), link-time only
  SP=$("$VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  [ -e "$SP/nvidia/nccl/lib/libnccl.so.2" ] || "$VENV/bin/pip" install -q --no-deps "nvidia-nccl-cu13==2.30.7"
  ln -sf "$SP/nvidia/nccl/lib/libnccl.so.2" "$CUDA_ROOT/lib/libnccl.so"
  CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda,nccl -p mslt-cli
  strip -o dist/mslt-cli-nccl target/cuda/release/mslt-cli
  gzip -f dist/mslt-cli-nccl
  echo "dist/mslt-cli-nccl.gz ready (needs libnccl.so.2 on LD_LIBRARY_PATH; scripts/gpu-dist-check.sh finds torch's)"
fi
