#!/usr/bin/env bash
# One GPU run: checks every fused kernel against its reference, times them beside the plain
# Candle path and PyTorch, then benches the `base` preset with --kernels fused and candle.
# Needs a CUDA build carried to the GPU machine (see the README's CUDA section):
#   here: scripts/build-cuda.sh (leaves dist/mslt-cli.gz); on the GPU machine, with dist/ carried:
#   bash scripts/gpu-all.sh OUT (unpacks it, runs this, then gpu-dist-check.sh), or
#   gunzip -k dist/mslt-cli.gz && MSLT_BIN=dist/mslt-cli bash scripts/gpu-check.sh [OUT_DIR]
# Logs go to OUT_DIR/gpu-check.log and the JSON files to OUT_DIR/json; the summary
# table is printed last. Each step has its own time limit and a failed step does not stop the
# others. Attention kernels never run on a GPU before (NEW_KERNELS, default "fa2w8v4 fa2w8v5
# fa2wg3 fa2wg3e fa2wg4 fa2wg4e"; "fa2v2 fa2w8" in run 6, "fa2v3 fa2w8v3 fa2wg fa2wg2" in run 7; NEW_KERNELS= for none;
# ABLATION_KERNELS, default "fa2wg3s", are checked and timed only) are
# checked each in their own process and timed only if they pass; the dropout inside the kernels
# (part `dropout`, checked in runs 7 and 8) in a process of its own. Run 5 on one H100 (2026-11-27, all
# steps) took 5.4 minutes; GPU_CHECK_QUICK=1 skips the `base` rows run 5 measured (about 3
# minutes less), and the whole is held to GPU_CHECK_SECONDS (380 s) whatever happens.
set -u
OUT=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT/json"
BIN=${MSLT_BIN:-./dist/mslt-cli}
PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
LOG="$OUT/gpu-check.log"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
# The script keeps to a budget (GPU_CHECK_SECONDS, default 380) so that gpu-all.sh fits one
# 10-minute call with gpu-dist-check after it. A step gets at most the time left; one that
# cannot get 15 s is skipped (exit 124). Steps run most important first.
BUDGET=${GPU_CHECK_SECONDS:-380}
run() {
  local t=$1; shift
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "skipped: ${SECONDS}s of the ${BUDGET}s budget used" | tee -a "$LOG"; echo "exit 124" | tee -a "$LOG"
    return 124
  fi
  [ "$t" -gt "$left" ] && t=$left
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "exit $rc" | tee -a "$LOG"
  return "$rc"
}
# whether kernel $1 passed its check and ran its timings (then its base bench runs)
has() { case " ${BENCH_OK[*]-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
BASE=(bench --model-config base --device cuda --batch-size 32 --seq-len 128 --warmup 2 --repeats 5)

step "device"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 | tee -a "$LOG"
if ldd "$BIN" | grep 'not found'; then echo "missing libraries for $BIN" | tee -a "$LOG"; exit 1; fi
step "kernel checks, the kernels the model runs by default (f32 tight, bf16 to bf16 tolerance; padded masks)"
run 90 "$BIN" kernels check --device cuda --large --only ln,gelu,attention,named,model \
  --attention-kernels tc,fa2,fa2v2,fa2q128,fa2w8,fa2v3,fa2w8v3,fa2wg,fa2wg2 --json "$OUT/json/check.json"
# Attention kernels that have never run on a GPU: each checked in its own process, so that one
# which crashes (and takes the CUDA context with it) or hangs costs only its own rows. Only those
# that pass are timed and benched.
NEW_OK=()
for k in ${NEW_KERNELS-fa2w8v4 fa2w8v5 fa2wg3 fa2wg3e fa2wg4 fa2wg4e}; do
  step "kernel check: attention[$k] (not yet run on a GPU before this script)"
  if run 45 "$BIN" kernels check --device cuda --large --only named --attention-kernels "$k" \
    --json "$OUT/json/check-$k.json"; then NEW_OK+=("$k"); fi
done
echo "new attention kernels that passed their checks: ${NEW_OK[*]:-none}" | tee -a "$LOG"
# A new kernel that failed: its `_dropout` twin alone (MSLT_ATTENTION=k, part dropout: the rows
# `attention+dropout`, tagged check-diag-k in the report), as a diagnostic. The fa2wg3 / fa2wg4
# twins run P V at 64 columns with f32 row sums, so where a twin passes and its kernel fails, the
# ones column (m64n72k16) is at fault; where both fail, what they share (the V layout, Q in
# registers, the pipelining).
for k in ${NEW_KERNELS-fa2w8v4 fa2w8v5 fa2wg3 fa2wg3e fa2wg4 fa2wg4e}; do
  case " ${NEW_OK[*]-} " in *" $k "*) continue ;; esac
  step "kernel check (diagnostic): the dropout twin of attention[$k], which failed its check"
  MSLT_ATTENTION=$k run 45 "$BIN" kernels check --device cuda --large --only dropout \
    --json "$OUT/json/check-diag-$k.json"
done
# Dropout on the attention probabilities inside the kernels (the `_dropout` entry points of the
# defaults fa2v3, fa2w8v3, fa2w8 and tf32x3): kernel rows against the same Philox draws through
# Candle ops, and the frozen encoder with MSLT_ATTENTION_DROPOUT=kernel against its reference, in
# a process of their own; then the `_dropout` twin of each new kernel that passed, each in its own
# process (one that faults costs its own rows and timings only)
step "kernel check: attention dropout inside the kernels"
DROP_OK=0
if run 90 "$BIN" kernels check --device cuda --large --only named,dropout --attention-kernels fa2v3,fa2w8v3,fa2w8,tf32x3 \
  --json "$OUT/json/check-dropout.json"; then DROP_OK=1; fi
DROP_NEW_OK=()
for k in ${NEW_OK[@]+"${NEW_OK[@]}"}; do
  step "kernel check: attention dropout inside attention[$k]"
  if run 45 "$BIN" kernels check --device cuda --large --only named,dropout --attention-kernels "$k" \
    --json "$OUT/json/check-dropout-$k.json"; then DROP_NEW_OK+=("$k"); fi
done
# The fused AdamW update (kernels-cu/optim.cu, never run on a GPU before): against composed
# Candle ops and bit for bit against the CPU op, in its own process; if it passes, one base
# bench with it (MSLT_OPTIMIZER_KERNEL=fused) beside the default
step "kernel check: the fused AdamW update (not yet run on a GPU before this script)"
OPTIM_OK=0
if run 30 "$BIN" kernels check --device cuda --only optim --json "$OUT/json/check-optim.json"; then OPTIM_OK=1; fi
step "kernel timings: fused (output allocated per call), fused-into (preallocated output), candle"
run 150 "$BIN" kernels bench --device cuda --only copy,ln,gelu,attention,named --json "$OUT/json/kbench.json"
if [ "$DROP_OK" = 1 ]; then
  step "kernel timings: attention with dropout inside the kernels, and Candle's attention with dropout"
  run 60 "$BIN" kernels bench --device cuda --only dropout --json "$OUT/json/kbench-dropout.json"
fi
BENCH_OK=()
for k in ${NEW_OK[@]+"${NEW_OK[@]}"}; do
  step "kernel timings: attention[$k]"
  if run 60 "$BIN" kernels bench --device cuda --only named --attention-kernels "$k" \
    --json "$OUT/json/kbench-$k.json"; then BENCH_OK+=("$k"); fi
done
# Ablations (ABLATION_KERNELS, default "fa2wg3s": fa2wg3 without the softmax / P V overlap):
# checked in their own process and, where they pass, timed beside the kernel they take apart;
# no base bench, no dropout timings
for k in ${ABLATION_KERNELS-fa2wg3s}; do
  step "kernel check: attention[$k] (an ablation)"
  if run 45 "$BIN" kernels check --device cuda --large --only named --attention-kernels "$k" \
    --json "$OUT/json/check-$k.json"; then
    step "kernel timings: attention[$k] (an ablation)"
    run 60 "$BIN" kernels bench --device cuda --only named --attention-kernels "$k" --json "$OUT/json/kbench-$k.json"
  fi
done
for k in ${BENCH_OK[@]+"${BENCH_OK[@]}"}; do
  case " ${DROP_NEW_OK[*]-} " in *" $k "*) ;; *) continue ;; esac
  step "kernel timings: attention with dropout inside the kernels, attention[$k] (MSLT_ATTENTION=$k)"
  MSLT_ATTENTION=$k run 60 "$BIN" kernels bench --device cuda --only dropout --json "$OUT/json/kbench-dropout-$k.json"
done
step "torch timings"
run 120 "$PY" tools/torch_kernels.py --json "$OUT/json/torch.json" > /dev/null
# base benches, most informative first: the default bf16 frozen layers, then each new kernel
# that passed; the rows run 5 measured last (GPU_CHECK_QUICK=1 skips them)
step "bench base, frozen dropout off, kernels fused, frozen layers bf16 (attention: the default, fa2v3 at T = 128)"
run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --frozen-dtype bf16 --json "$OUT/json/bench-base-fused-bf16.json"
# where one frozen layer's time goes, op by op (the device synchronised around each op): the
# fused bf16 layer without and with dropout, at T = 128 and 512, and the plain Candle f32 layer
LOPS=(bench --layer-ops --model-config base --device cuda --warmup 3 --repeats 10)
for cfg in "32 128 off fused bf16" "32 128 on fused bf16" "16 512 off fused bf16" "32 128 off candle f32"; do
  read -r lb lt ld lk ldt <<< "$cfg"
  step "layer ops: one frozen base layer, B$lb T$lt, frozen dropout $ld, kernels $lk, $ldt"
  run 40 "$BIN" "${LOPS[@]}" --batch-size "$lb" --seq-len "$lt" --frozen-dropout "$ld" --kernels "$lk" \
    --frozen-dtype "$ldt" --json "$OUT/json/layer-ops-b$lb-t$lt-dropout-$ld-$lk-$ldt.json"
done
for k in ${BENCH_OK[@]+"${BENCH_OK[@]}"}; do
  step "bench base, fused bf16 frozen layers, attention kernel $k (MSLT_ATTENTION=$k)"
  MSLT_ATTENTION=$k run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --frozen-dtype bf16 \
    --json "$OUT/json/bench-base-fused-bf16-$k.json"
done
# LAMB's update on the GPU (its tensor-op path; never run on one before): the same bench as the
# first base row with --optimizer lamb, so the two `opt ms` columns compare within one call
step "bench base, frozen dropout off, kernels fused, frozen layers bf16, optimizer LAMB"
run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --frozen-dtype bf16 --optimizer lamb \
  --json "$OUT/json/bench-base-fused-bf16-lamb.json"
if [ "$OPTIM_OK" = 1 ]; then
  step "bench base, frozen dropout off, kernels fused, frozen layers bf16, AdamW on its fused kernel"
  MSLT_OPTIMIZER_KERNEL=fused run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --frozen-dtype bf16 \
    --json "$OUT/json/bench-base-fused-bf16-adamw-kernel.json"
fi
if [ "$DROP_OK" = 1 ]; then
  # the training default (frozen dropout on) with the attention dropout inside the kernels, and
  # the same rows with it on Candle ops, in the same call
  for dt in f32 bf16; do
    step "bench base, frozen dropout on, fused $dt frozen layers, attention dropout inside the kernel"
    MSLT_ATTENTION_DROPOUT=kernel run 60 "$BIN" "${BASE[@]}" --frozen-dropout on --kernels fused --frozen-dtype "$dt" \
      --json "$OUT/json/bench-base-dropout-on-fused-$dt-kernel-dropout.json"
    step "bench base, frozen dropout on, fused $dt frozen layers, attention dropout on Candle ops"
    MSLT_ATTENTION_DROPOUT=candle run 60 "$BIN" "${BASE[@]}" --frozen-dropout on --kernels fused --frozen-dtype "$dt" \
      --json "$OUT/json/bench-base-dropout-on-fused-$dt.json"
  done
fi
if [ "${GPU_CHECK_QUICK:-0}" != 1 ]; then
  step "bench base, frozen dropout off, kernels fused (f32; attention: the default, tf32x3)"
  run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --json "$OUT/json/bench-base-fused.json"
  step "bench base, fused bf16 frozen layers, trainable layers' f32 products on TF32 tensor cores"
  run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels fused --frozen-dtype bf16 --matmul-precision tf32 \
    --json "$OUT/json/bench-base-fused-bf16-tf32.json"
  step "bench base, frozen dropout on, frozen layers on Candle"
  run 60 "$BIN" "${BASE[@]}" --frozen-dropout on --kernels candle --json "$OUT/json/bench-base-dropout-on-candle.json"
  step "bench base, frozen dropout off, kernels candle (f32)"
  run 60 "$BIN" "${BASE[@]}" --frozen-dropout off --kernels candle --json "$OUT/json/bench-base-candle.json"
fi
step "summary"
echo "new attention kernels that passed their checks: ${NEW_OK[*]:-none}" | tee -a "$LOG"
# the whole run as markdown for docs/gpu-results.md (tables, ratios, the goals' verdicts)
timeout 20 "$PY" tools/gpu_report.py "$OUT/json" --log "$LOG" > "$OUT/report.md" 2>> "$LOG"
sed -n '/^## `bench/,$p' "$OUT/report.md"
grep -E "FAIL|kernel checks (passed|failed)|all .* kernel checks passed|no check ran" "$LOG" | head -20
awk '/^## Goals/ { g = 1; next } /^## / { g = 0 } g && /^- /' "$OUT/report.md"
echo "report: $OUT/report.md"
