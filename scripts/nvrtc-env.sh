#!/usr/bin/env bash
# NVRTC (CUDA 13.0) from its PyPI wheel, for the compile check of kernels-cu/ on machines
# without a GPU or CUDA (CI). Usage:  source scripts/nvrtc-env.sh [DIR]   (default .assets/nvrtc)
# Downloads the wheel with pip and unpacks it (no venv, no install); exports MSLT_NVRTC_LIB and
# LD_LIBRARY_PATH (NVRTC loads libnvrtc-builtins from the same directory).
_nvrtc_setup() {
  local DIR="${1:-.assets/nvrtc}" LIB
  LIB="$DIR/nvidia/cu13/lib"
  if [ ! -e "$LIB/libnvrtc.so.13" ]; then
    mkdir -p "$DIR/wheel" || return 1
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR/wheel" "nvidia-cuda-nvrtc==13.0.88" || return 1
    python3 -m zipfile -e "$DIR"/wheel/nvidia_cuda_nvrtc-*.whl "$DIR" || return 1
  fi
  [ -e "$LIB/libnvrtc.so.13" ] || { echo "NVRTC wheel unpacked but $LIB/libnvrtc.so.13 is missing" >&2; return 1; }
  export MSLT_NVRTC_LIB="$PWD/$LIB/libnvrtc.so.13"
  case "$DIR" in /*) MSLT_NVRTC_LIB="$LIB/libnvrtc.so.13" ;; esac
  export LD_LIBRARY_PATH="$(dirname "$MSLT_NVRTC_LIB")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "NVRTC ready: $MSLT_NVRTC_LIB"
}
_nvrtc_setup "$@"
