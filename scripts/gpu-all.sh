#!/usr/bin/env bash
# Everything a session with a GPU runs, in one call: scripts/gpu-check.sh (kernel checks and
# timings beside Candle and PyTorch, `base` benches) and then scripts/gpu-dist-check.sh (the NCCL
# path). Build first on the CPU machine with scripts/build-cuda.sh, then carry dist/mslt-cli.gz,
# dist/mslt-cli-nccl.gz and data/sotu-128 and run, in the repo root on the GPU machine:
#   bash scripts/gpu-all.sh "$OUT"        (estimated 5-7 minutes on one H100; not yet run as a whole)
# Each part keeps to a time budget (GPU_CHECK_SECONDS=380, GPU_DIST_SECONDS=180, skipping what
# does not fit), so the whole stays under one 10-minute call.
# Logs and JSON go under OUT/check and OUT/dist, the kernel run as markdown to OUT/check/report.md
# (tools/gpu_report.py); each script prints its summary last.
set -u
OUT=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT"
for b in mslt-cli mslt-cli-nccl; do
  if [ ! -x "dist/$b" ] && [ -f "dist/$b.gz" ]; then gunzip -kf "dist/$b.gz" && chmod +x "dist/$b"; fi
done
echo "=== gpu-check ($(date +%T))"
MSLT_BIN=./dist/mslt-cli bash scripts/gpu-check.sh "$OUT/check"
echo "=== gpu-dist-check ($(date +%T))"
MSLT_NCCL_BIN=./dist/mslt-cli-nccl bash scripts/gpu-dist-check.sh "$OUT/dist"
echo "=== done ($(date +%T))"
