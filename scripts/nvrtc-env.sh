#!/usr/bin/env bash
# NVRTC (CUDA 13.0) from its PyPI wheel, for the compile check of kernels-cu/ on machines
# without a GPU or CUDA (CI). Usage:  source scripts/nvrtc-env.sh [DIR]   (default .assets/nvrtc)
# Downloads the wheel with pip and unpacks it (no venv, no install); exports MSLT_NVRTC_LIB and
# LD_LIBRARY_PATH (NVRTC loads libnvrtc-builtins from the same directory), and MSLT_PTXAS (ptxas
# from the nvidia-cuda-nvcc wheel, 37 MB).
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
  # ptxas (from the nvcc wheel; only that file is unpacked): assembles the PTX as the driver's
  # JIT would, so bad inline PTX and register spills show up without a GPU.
  local BIN="$DIR/nvidia/cu13/bin"
  if [ ! -x "$BIN/ptxas" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR/wheel" "nvidia-cuda-nvcc==13.0.88" || return 1
    python3 - "$DIR" "$DIR"/wheel/nvidia_cuda_nvcc-*.whl <<'PY' || return 1
import sys, zipfile, os
d, whl = sys.argv[1], sys.argv[2]
zipfile.ZipFile(whl).extract("nvidia/cu13/bin/ptxas", d)
os.chmod(os.path.join(d, "nvidia/cu13/bin/ptxas"), 0o755)
PY
  fi
  export MSLT_PTXAS="$PWD/$BIN/ptxas"
  case "$DIR" in /*) MSLT_PTXAS="$BIN/ptxas" ;; esac
  echo "ptxas ready: $MSLT_PTXAS"
}
_nvrtc_setup "$@"
