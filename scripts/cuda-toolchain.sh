#!/usr/bin/env bash
# Copied from the project's shared GPU notes (../shared/docs/gpu.md); keep in step with mslt-kernels' NVRTC options.
# Build-only CUDA 13.0 toolkit from PyPI wheels (no GPU, no NVIDIA apt repo needed).
# Usage:  source cuda13-toolchain.sh [DIR]      (default DIR=$HOME/.cache/cuda13-venv)
# Then:   cargo build --release --features cuda
# Versions pinned to CUDA 13.0 so the PTX (ISA 9.0) JITs on driver 580 and the
# sonames (libcudart.so.13, libcublas.so.13, libnvrtc.so.13, libcurand.so.10)
# match the GPU machine's CUDA 13.0 toolkit / torch cu130 wheels.
_cuda13_setup() {
  local DIR="${1:-$HOME/.cache/cuda13-venv}" SP NV l
  [ -x "$DIR/bin/pip" ] || python3 -m venv "$DIR" || return 1
  SP=$("$DIR/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])') || return 1
  NV="$SP/nvidia/cu13"
  if [ ! -x "$NV/bin/nvcc" ] || [ ! -e "$NV/lib/libcurand.so.10" ]; then
    "$DIR/bin/pip" install -q \
      "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
      "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" \
      "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35" || return 1
  fi
  # dev symlinks the linker needs (wheels ship only versioned sonames)
  for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "$NV/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$NV/lib/libcurand.so"
  # link-time stub for the driver API (what the toolkit's lib64/stubs/libcuda.so is);
  # at run time the real libcuda.so.1 of the NVIDIA driver is used.
  if [ ! -f "$NV/lib/stubs/libcuda.so" ]; then
    mkdir -p "$NV/lib/stubs"
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$NV/include/cuda.h" | sort -u \
      | awk '{print "void " $1 "(void) {}"}' > "$NV/lib/stubs/cuda_stub.c"
    gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$NV/lib/stubs/libcuda.so" "$NV/lib/stubs/cuda_stub.c" || return 1
  fi
  export PATH="$NV/bin:$PATH"        # nvcc for cudaforge (candle-kernels) and cudarc
  export NVCC="$NV/bin/nvcc"
  export CUDA_ROOT="$NV"             # cudarc link search: $CUDA_ROOT/lib and $CUDA_ROOT/lib/stubs
  export CUDARC_CUDA_VERSION=13000   # pin cudarc's bindings/lib names to CUDA 13.0
  export CUDA_COMPUTE_CAP=90         # H100; cudaforge turns 90 into sm_90a
  echo "CUDA build env ready: $("$NVCC" --version | grep release)"
}
_cuda13_setup "$@"
