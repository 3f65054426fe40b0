#!/usr/bin/env bash
# The NCCL path at world size 1 on one GPU (issue 8): a real NCCL communicator (rendezvous,
# ncclCommInitRank, ncclAllReduce of the bucketed trainable gradients every step) against the
# same run in a plain single process. Needs dist/mslt-cli-nccl (scripts/build-cuda.sh) and the
# prepared data data/sotu-128 (scripts/fetch-assets.sh + prepare, see README) carried over;
# libnccl.so.2 is taken from the machine's PyTorch (nvidia-nccl-cu13) unless NCCL_LIB is set.
#   bash scripts/gpu-dist-check.sh [OUT_DIR]          (estimated ~2 minutes on one H100; not yet run)
# Prints, last: per-step loss agreement (must be bit-identical: a sum over one rank is the
# identity), step times, bytes all-reduced per step and stage, and the time in ncclAllReduce.
set -u
OUT=${1:-${OUT:-out/gpu-dist}}
mkdir -p "$OUT"
BIN=${MSLT_NCCL_BIN:-./dist/mslt-cli-nccl}
PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
DATA=${DATA:-data/sotu-128}
[ -x "$BIN" ] || { [ -f "$BIN.gz" ] && gunzip -kf "$BIN.gz" && chmod +x "$BIN"; }
NCCL_LIB=${NCCL_LIB:-$("$PY" -c 'import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)}
export LD_LIBRARY_PATH=${NCCL_LIB}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
LOG="$OUT/gpu-dist-check.log"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
# held to GPU_DIST_SECONDS (default 180): a run gets at most the time left, none under 15 s
BUDGET=${GPU_DIST_SECONDS:-180}
run() {
  local t=$1; shift
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then echo "skipped: out of the ${BUDGET}s budget" | tee -a "$LOG"; return 124; fi
  [ "$t" -gt "$left" ] && t=$left
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
  echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

step "device and libraries"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
echo "NCCL_LIB=$NCCL_LIB" | tee -a "$LOG"; ls "$NCCL_LIB" 2>&1 | tee -a "$LOG"
# (the status of `grep`, not of a `tee` after it: that one is always 0)
if MISSING=$(ldd "$BIN" | grep 'not found'); then
  echo "$MISSING" | tee -a "$LOG"; echo "missing libraries for $BIN" | tee -a "$LOG"; exit 1
fi
COMMON=(train --data "$DATA" --model-config base --device cuda --steps 40 --batch-size 32
  --schedule mslt --stages 3,6,9,12 --eval-batches 2 --save-every 0 --keep-last 1 --log-every 1
  --frozen-dropout off --kernels fused --frozen-dtype bf16 --no-progress)
step "single process (no communicator)"
run 90 "$BIN" "${COMMON[@]}" --out "$OUT/single"
step "--nproc 1: NCCL communicator of one rank, bucketed all-reduce every step"
NCCL_DEBUG=${NCCL_DEBUG:-VERSION} run 90 "$BIN" "${COMMON[@]}" --nproc 1 --out "$OUT/nccl"
step "summary"
"$PY" - "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys, statistics as st
out = sys.argv[1]
def load(d):
    return [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")]
a, b = load("single"), load("nccl")
sa = [r for r in a if "loss" in r]; sb = [r for r in b if "loss" in r]
same = [x["loss"] == y["loss"] for x, y in zip(sa, sb)]
print(f"steps {len(sa)} / {len(sb)}; losses bit-identical on {sum(same)} of {len(same)} steps")
for s in [r for r in b if r.get("event") == "stage_start"]:
    ar = s.get("allreduce", {})
    print(f"stage {s['stage']}: depth {s['depth']}, trainable {s['trainable_params']:,}, "
          f"all-reduce {ar.get('bytes', 0)/1e6:.1f} MB in {ar.get('buckets')} buckets ({ar.get('backend')})")
    rows = [r for r in sb if r["stage"] == s["stage"]][1:]  # first step of a stage: warm-up
    ra = [r for r in sa if r["stage"] == s["stage"]][1:]
    if rows and ra:
        dt = lambda rs: st.median([y["elapsed_s"] - x["elapsed_s"] for x, y in zip(rs, rs[1:])] or [0]) * 1e3
        comm = st.median([r.get("comm_s") or 0 for r in rows]) * 1e3
        print(f"   median step: single {dt(ra):.1f} ms, nccl {dt(rows):.1f} ms, of which collectives {comm:.2f} ms")
PY
