#!/usr/bin/env bash
# NVRTC (CUDA 13.0) from its PyPI wheel, for the compile check of kernels-cu/ on machines
# without a GPU or CUDA (CI). Usage:  source scripts/nvrtc-env.sh [DIR]   (default .assets/nvrtc)
# Exports MSLT_NVRTC_LIB and LD_LIBRARY_PATH (NVRTC loads libnvrtc-builtins from it).
_nvrtc_setup() {
  local DIR="${1:-.assets/nvrtc}" SP
  [ -x "$DIR/bin/pip" ] || python3 -m venv "$DIR" || return 1
  SP=$("$DIR/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])') || return 1
  if [ ! -e "$SP/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    "$DIR/bin/pip" install -q "nvidia-cuda-nvrtc==13.0.88" || return 1
  fi
  export MSLT_NVRTC_LIB="$SP/nvidia/cu13/lib/libnvrtc.so.13"
  export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "NVRTC ready: $MSLT_NVRTC_LIB"
}
_nvrtc_setup "$@"
