#!/usr/bin/env python3
"""Checks that transformers loads an `mslt-cli export` directory unchanged and computes what mslt
computes. Run where PyTorch + transformers are installed:

    mslt-cli export --checkpoint RUN_DIR --out EXPORT
    mslt-cli encode --model EXPORT --text-file SENTENCES --output OURS.safetensors
    python tools/check_export.py EXPORT OURS.safetensors SENTENCES

- the architecture named in config.json loads with from_pretrained, with no missing or unexpected
  weights (a tied MLM decoder aside; an untied one must be in the file);
- AutoTokenizer gives the same input ids and attention mask as mslt's tokenizer;
- last_hidden_state, pooler_output, prediction_logits, seq_relationship_logits (those present)
  agree within 1e-4 (max absolute difference), in eval mode, f32.
Prints one line per check and exits non-zero on any failure.
"""
import json, sys

import torch
import transformers
from safetensors.torch import load_file


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    d, ours_path, sentences = sys.argv[1:]
    cfg = json.load(open(f"{d}/config.json"))
    arch = cfg["architectures"][0]
    cls = getattr(transformers, arch)
    model, info = cls.from_pretrained(d, output_loading_info=True)
    model.eval()
    tied = cfg.get("tie_word_embeddings", True)

    def excused(k):
        # the decoder bias is cls.predictions.bias; the decoder weight is the word embeddings
        # unless the config unties it (then it must be in the file)
        if "position_ids" in k or k.endswith("decoder.bias"):
            return True
        return tied and k.endswith("decoder.weight")

    missing = [k for k in info["missing_keys"] if not excused(k)]
    ok = True
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {arch} from {d}")
    print(f"loading: missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
    if missing or info["unexpected_keys"]:
        print("FAIL: weights missing or unexpected")
        ok = False
    ours = load_file(ours_path)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    lines = [l.rstrip("\n") for l in open(sentences, encoding="utf-8") if l.strip()]
    enc = tok(lines, padding=True, return_tensors="pt")
    for k in ["input_ids", "attention_mask"]:
        same = enc[k].shape == ours[k].shape and bool((enc[k] == ours[k].to(enc[k].dtype)).all())
        print(f"{k}: {'identical' if same else 'DIFFERENT'} {tuple(enc[k].shape)}")
        ok &= same
    with torch.no_grad():
        out = model(input_ids=ours["input_ids"].long(), attention_mask=ours["attention_mask"].long(),
                    token_type_ids=ours["token_type_ids"].long(), output_hidden_states=True)
    theirs = {"last_hidden_state": out.hidden_states[-1] if hasattr(out, "hidden_states") and out.hidden_states is not None else out.last_hidden_state}
    if getattr(out, "pooler_output", None) is not None:
        theirs["pooler_output"] = out.pooler_output
    for k in ["prediction_logits", "seq_relationship_logits"]:
        if getattr(out, k, None) is not None:
            theirs[k] = getattr(out, k)
    if arch == "BertForPreTraining" and "pooler_output" not in theirs:
        h = out.hidden_states[-1]
        theirs["pooler_output"] = model.bert.pooler(h)
    for k, v in theirs.items():
        if k not in ours:
            continue
        err = (v.float() - ours[k].float()).abs().max().item()
        good = err <= 1e-4
        ok &= good
        print(f"{k}: max abs difference {err:.3e} {'ok' if good else 'FAIL'} (tolerance 1e-4), shape {tuple(v.shape)}")
    print("ALL OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
