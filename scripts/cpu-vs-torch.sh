#!/usr/bin/env bash
# mslt's CPU training step beside PyTorch eager's, same machine, same threads, measured in one go
# (docs/cpu-speed.md). Needs the PyTorch venv of tools/torch_baseline.py:
#   python3 -m venv .assets/torch-venv && .assets/torch-venv/bin/pip install torch transformers
# Usage: scripts/cpu-vs-torch.sh [THREADS] [REPEATS]    (writes out/cpu-vs-torch/)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-5}
py=${TORCH_PY:-.assets/torch-venv/bin/python}
cli=target/release/mslt-cli
out=out/cpu-vs-torch
mkdir -p "$out"
cargo build --release -p mslt-cli
# name | mslt --model-config | --stages | torch --layers | --frozen
run() {
  local name=$1 model=$2 stages=$3 layers=$4 frozen=$5
  "$py" tools/torch_baseline.py --layers "$layers" --frozen "$frozen" --threads "$threads" \
    --warmup 2 --repeats "$repeats" --json "$out/torch-$name.json"
  "$cli" --threads "$threads" bench --model-config "$model" --stages "$stages" --final-joint-frac 0 \
    --batch-size 16 --seq-len 128 --warmup 2 --repeats "$repeats" \
    --json "$out/mslt-$name.json" --compare "$out/torch-$name.json" | tee "$out/compare-$name.txt"
}
run mini mini 1,2,3,4 4 3
run h256x8 configs/bert-h256-l8.json 2,4,6,8 8 6
