#!/usr/bin/env bash
# One GPU run: checks every fused kernel against its reference, times them beside the plain
# Candle path and PyTorch, then benches the `base` preset with --kernels fused and candle.
# Needs a CUDA build carried to the GPU machine (see docs/gpu.md of this repo):
#   scripts/build-cuda.sh && strip -o dist/mslt-cli target/cuda/release/mslt-cli
#   on the GPU machine:  bash scripts/gpu-check.sh [OUT_DIR]
# Logs go to OUT_DIR/gpu-check.log and the JSON files to OUT_DIR/json; the summary
# table is printed last. Each step has its own time limit and a failed step does not stop the
# others. Run 3 on one H100 took about 2.2 minutes (log 12:33:19 to 12:35:31 before the summary),
# before the fa2, tf32x3 and pool rows were added.
set -u
OUT=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT/json"
BIN=${MSLT_BIN:-./dist/mslt-cli}
PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
LOG="$OUT/gpu-check.log"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
run() { local t=$1; shift; timeout "$t" "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 | tee -a "$LOG"
if ldd "$BIN" | grep 'not found'; then echo "missing libraries for $BIN" | tee -a "$LOG"; exit 1; fi
step "kernel checks (f32 tight, bf16 to bf16 tolerance; padded masks)"
run 90 "$BIN" kernels check --device cuda --large --json "$OUT/json/check.json"
step "kernel timings (fused vs candle)"
run 120 "$BIN" kernels bench --device cuda --json "$OUT/json/kbench.json"
step "torch timings"
run 120 "$PY" tools/torch_kernels.py --json "$OUT/json/torch.json" > /dev/null
for k in candle fused; do
  step "bench base, frozen dropout off, kernels $k (f32)"
  run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
    --frozen-dropout off --kernels "$k" --warmup 2 --repeats 5 --json "$OUT/json/bench-base-$k.json"
done
step "bench base, frozen dropout on (the training default; frozen layers on Candle)"
run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
  --frozen-dropout on --warmup 2 --repeats 5 --json "$OUT/json/bench-base-dropout-on.json"
step "bench base, frozen dropout off, kernels fused, frozen layers bf16"
run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
  --frozen-dropout off --kernels fused --frozen-dtype bf16 --warmup 2 --repeats 5 --json "$OUT/json/bench-base-fused-bf16.json"
step "bench base, fused bf16 frozen layers, attention kernel fa2 (MSLT_ATTENTION=fa2)"
MSLT_ATTENTION=fa2 run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
  --frozen-dropout off --kernels fused --frozen-dtype bf16 --warmup 2 --repeats 5 --json "$OUT/json/bench-base-fused-bf16-fa2.json"
step "bench base, fused f32 frozen layers, attention kernel tf32x3 (MSLT_ATTENTION=tf32x3)"
MSLT_ATTENTION=tf32x3 run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
  --frozen-dropout off --kernels fused --warmup 2 --repeats 5 --json "$OUT/json/bench-base-fused-tf32x3.json"
step "bench base, fused bf16 frozen layers, CUDA's default pool policy (MSLT_CUDA_POOL=release)"
MSLT_CUDA_POOL=release run 60 "$BIN" bench --model-config base --device cuda --batch-size 32 --seq-len 128 \
  --frozen-dropout off --kernels fused --frozen-dtype bf16 --warmup 2 --repeats 5 --json "$OUT/json/bench-base-fused-bf16-pool-release.json"
step "summary"
run 20 "$PY" tools/torch_kernels.py --load "$OUT/json/torch.json" --ours "$OUT/json/kbench.json"
for f in "$OUT"/json/bench-base-*.json; do
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], r['frozen'], 'pool', r.get('cuda_pool'), [(x['name'], round(x['step']['median_ms'],1), x['fused_layers'], round(x['speedup'],2)) for x in r['rows']])" "$f" 2>&1 | tee -a "$LOG"
done
grep -E "FAIL|kernel checks (passed|failed)|all .* kernel checks passed" "$LOG" | head -20
