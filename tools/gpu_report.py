#!/usr/bin/env python3
"""Markdown report of one run of scripts/gpu-check.sh, for docs/gpu-results.md.

    python3 tools/gpu_report.py OUT/check/json [--log OUT/check/gpu-check.log] > report.md

Reads every JSON file the script writes in that folder: check*.json (`kernels check`),
kbench*.json (`kernels bench`), torch.json (tools/torch_kernels.py), bench-base-*.json
(`bench`) and layer-ops-*.json (`bench --layer-ops`). A file that is missing or unreadable (its step crashed) is named in the report and
skipped. It prints the card (from the log, when given), every check's worst error per kernel,
the copy bandwidth reference, the LayerNorm / GELU and attention tables with their ratios, the
verdict on issue 5's two goals, the `base` benches, and one frozen layer op by op. Standard
library only.
"""
import argparse
import glob
import json
import os
import re
import sys

LN_GOAL = 0.85  # LayerNorm >= 85% of the measured copy bandwidth
# LN rows from which a shape counts as BERT-base sized, as docs/gpu-results.md reads the goal:
# 32768 to 131072 rows (B x T = 256 x 128 to 256 x 512); 4096 rows (32 x 128) is launch-bound.
BERT_ROWS = 32768


def load(paths, skipped):
    rows = []
    for p in paths:
        try:
            with open(p) as f:
                v = json.load(f)
            rows.append((os.path.basename(p), v))
        except (OSError, ValueError) as e:
            skipped.append(f"{os.path.basename(p)}: {e}")
    return rows


def fmt(v, spec=".1f"):
    return "" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", help="the json/ folder of one gpu-check.sh run")
    ap.add_argument("--log", help="gpu-check.log of the run (for the card and driver)")
    ap.add_argument("--torch", help="tools/torch_kernels.py JSON (default: DIR/torch.json)")
    a = ap.parse_args()
    skipped = []
    out = []
    p = out.append
    p(f"# GPU run report ({a.dir})\n")
    if a.log:
        try:
            log = open(a.log).read()
            m = re.search(r"^name, driver_version.*\n(.+)$", log, re.M)
            p(f"Card: {m.group(1).strip() if m else '(no nvidia-smi line in the log)'}\n")
            new = re.search(r"new attention kernels that passed their checks: (.*)", log)
            if new:
                p(f"New attention kernels that passed their checks: {new.group(1).strip()}\n")
            failed, step = [], None
            for line in log.splitlines():
                m = re.match(r"=== (.*) \(\d\d:\d\d:\d\d\)$", line)
                if m:
                    step = m.group(1)
                m = re.match(r"exit (\d+)$", line)
                if m and m.group(1) != "0" and step:
                    failed.append(f"{step} (exit {m.group(1)}{', time limit' if m.group(1) in ('124', '137') else ''})")
            p("Steps that failed: " + ("; ".join(failed) if failed else "none") + "\n")
        except OSError as e:
            skipped.append(f"{a.log}: {e}")

    # ---- checks
    checks = load(sorted(glob.glob(os.path.join(a.dir, "check*.json"))), skipped)
    if checks:
        p("## Checks\n")
        groups, bad = {}, []
        for f, rows in checks:
            # a diagnostic run (check-diag-K.json: MSLT_ATTENTION=K) keeps its rows apart
            diag = os.path.basename(f).removesuffix(".json") if os.path.basename(f).startswith("check-diag-") else None
            for r in rows:
                if diag:
                    r = dict(r, kernel=f"{r['kernel']} [{diag}]")
                # serde_json writes a non-finite error (an output of +-inf) as null
                r["rel_err"] = float("inf") if r["rel_err"] is None else r["rel_err"]
                g = groups.setdefault((r["kernel"], r["dtype"]), dict(n=0, failed=0, err=0.0, tol=r["tol"], nan=0, worst=""))
                g["n"] += 1
                g["failed"] += 0 if r["pass"] else 1
                if not r["pass"]:
                    bad.append(r)
                g["nan"] += r["nonfinite"]
                if r["rel_err"] >= g["err"]:
                    g["err"], g["worst"] = r["rel_err"], f"{r['shape']} vs {r['against']}"
                g["tol"] = max(g["tol"], r["tol"])
        total = sum(g["n"] for g in groups.values())
        failed = sum(g["failed"] for g in groups.values())
        p(f"{total - failed} of {total} checks passed.\n")
        p("| kernel | dtype | checks | failed | max rel error | at | tolerance | non-finite |")
        p("|---|---|---|---|---|---|---|---|")
        for (k, d), g in groups.items():
            p(f"| {k} | {d} | {g['n']} | {g['failed']} | {g['err']:.1e} | {g['worst']} | {g['tol']:.0e} | {g['nan']} |")
        p("")
        if bad:
            # where the wrong elements of a failed attention check lie (`spread`, from the binary)
            p(f"Failed checks ({len(bad)}; the first 24):\n")
            for r in bad[:24]:
                where = f": {r['spread']}" if r.get("spread") else ""
                p(f"- {r['kernel']} {r['dtype']} {r['shape']} vs {r['against']}, rel error {r['rel_err']:.1e}{where}")
            p("")

    # ---- timings
    ours = []
    for f, rows in load(sorted(glob.glob(os.path.join(a.dir, "kbench*.json"))), skipped):
        src = f.removesuffix(".json")
        for r in rows:  # rows of a file other than kbench.json are tagged with it
            ours.append(dict(r, src=src, impl=r["implementation"] + ("" if src == "kbench" else f" [{src}]")))
    torch = [r for _, rows in load([a.torch or os.path.join(a.dir, "torch.json")], skipped) for r in rows]
    copies = [r for r in ours + torch if r["op"] == "copy"]
    copy_bw = max((r["gb_per_s"] for r in copies), default=None)
    if copies:
        p("## Copy bandwidth (the reference)\n")
        p("| implementation | size | GB/s |")
        p("|---|---|---|")
        for r in copies:
            p(f"| {r['implementation']} | {r['shape']} | {r['gb_per_s']:.0f} |")
        p(f"\nReference: the fastest, **{copy_bw:.0f} GB/s**.\n")

    def find(rows, op, impl, dtype, shape, src=None):
        """The row of that op, implementation, dtype and shape, from file `src` if it has one."""
        hits = [r for r in rows if (r["op"], r["implementation"], r["dtype"], r["shape"]) == (op, impl, dtype, shape)]
        same = [r for r in hits if r.get("src") == src]
        return (same or hits or [None])[0]

    def us(r):
        return None if r is None else r["median_us"]

    def pct(r):
        return None if r is None or not r.get("gb_per_s") or not copy_bw else 100 * r["gb_per_s"] / copy_bw

    verdicts = []
    mem = [r for r in ours if r["op"] in ("add_layer_norm", "bias_gelu") and r["implementation"] == "fused"]
    if mem:
        p("## add + LayerNorm and bias + GELU\n")
        p("fused: the custom op (output allocated per call, as in the model); into: the kernel into a "
          "buffer allocated once; % = of the copy reference; torch: `layer_norm(x + res)` / `gelu(x + b)`.\n")
        p("`% same-size copy`: into's bandwidth over that of a copy of as many bytes (`copy-same-bytes`; "
          "at small shapes launch and tail weigh on the copy too).\n")
        p("| op | impl | dtype | rows x C | fused us | % copy | into us | % copy | candle us | torch us | fused / candle | fused / torch | % same-size copy |")
        p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        ln = {"fused": [], "fused-into": []}
        for r in mem:
            k = (r["op"], r["dtype"], r["shape"])
            into = find(ours, k[0], "fused-into", k[1], k[2], r["src"])
            cand = find(ours, k[0], "candle", k[1], k[2], r["src"])
            tr = find(torch, k[0], "torch", k[1], k[2])
            same = find(ours, "copy-same-bytes", "into", "f32", f"{k[2]} {k[1]}", r["src"])
            rel = ratio(us(same), us(into))
            p(f"| {k[0]} | {r['impl']} | {k[1]} | {k[2]} | {us(r):.1f} | {fmt(pct(r), '.0f')}% | {fmt(us(into))} | "
              f"{fmt(pct(into), '.0f')}{'%' if into else ''} | {fmt(us(cand))} | {fmt(us(tr))} | "
              f"{fmt(ratio(us(r), us(cand)), '.2f')} | {fmt(ratio(us(r), us(tr)), '.2f')} | "
              f"{fmt(None if rel is None else 100 * rel, '.0f')}{'%' if rel else ''} |")
            rows_n = int(k[2].split("x")[0])
            if k[0] == "add_layer_norm" and rows_n >= BERT_ROWS and r["src"] == "kbench":
                ln["fused"].append(pct(r))
                if into:
                    ln["fused-into"].append(pct(into))
        p("")
        for impl, v in ln.items():
            v = [x for x in v if x is not None]
            if v:
                met = min(v) >= 100 * LN_GOAL
                verdicts.append(f"LayerNorm goal (>= {100 * LN_GOAL:.0f}% of copy at >= {BERT_ROWS} rows), {impl}: "
                                f"{min(v):.0f}-{max(v):.0f}% -> **{'met' if met else 'not met'}**")

    def baselines(r):
        """An attention row's comparisons, same op: (unpadded?, SDPA with the mask, or without it
        for `nopad` rows; the Candle path, padded rows only, from the row's file where it has one)."""
        nopad = r["shape"].endswith(" nopad")
        base = r["shape"].removesuffix(" nopad")
        sd = find(torch, r["op"], "torch-sdpa-nomask" if nopad else "torch-sdpa-mask", r["dtype"], base)
        return nopad, sd, None if nopad else find(ours, r["op"], "candle", r["dtype"], base, r.get("src"))

    att = [r for r in ours if r["op"] == "attention" and r["implementation"].startswith("fused")]
    if att:
        p("## Attention (12 heads x 64)\n")
        p("Padded rows are compared with SDPA given the additive mask, `nopad` rows (mask all 0) with SDPA "
          "without a mask. TFLOP/s counts 4·B·H·T²·D.\n")
        p("| implementation | dtype | shape | us | TFLOP/s | SDPA us | ours / SDPA | candle us |")
        p("|---|---|---|---|---|---|---|---|")
        worst = {}
        for r in att:
            nopad, sd, cand = baselines(r)
            q = ratio(us(r), us(sd))
            w = worst.setdefault((r["impl"], r["dtype"]), [0.0, 9e9, 0, 0])
            w[3] += 1
            p(f"| {r['impl']} | {r['dtype']} | {r['shape']} | {us(r):.1f} | {fmt(r.get('tflop_per_s'))} | "
              f"{fmt(us(sd))} {'(no mask)' if nopad else '(mask)'} | {fmt(q, '.2f')} | {fmt(us(cand))} |")
            if q is not None:
                w[0], w[1], w[2] = max(w[0], q), min(w[1], q), w[2] + 1
        p("")
        # the fastest kernel per shape (what a default should be), named kernels and the default
        best = {}
        for r in att:
            if r["implementation"] != "fused" and not r["implementation"].startswith("fused-"):
                continue
            name = r["implementation"].removeprefix("fused-") if r["implementation"] != "fused" else "default"
            best.setdefault((r["dtype"], r["shape"]), []).append((us(r), name, r))
        if best:
            p("### Fastest kernel per shape\n")
            p("Over every attention kernel timed in this run (named kernels by name, `default` the binary's "
              "choice); per shape the fastest, the runner-up and the fastest's ratio to SDPA.\n")
            p("| dtype | shape | fastest | us | runner-up | us | fastest / SDPA |")
            p("|---|---|---|---|---|---|---|")
            for (dt, shape), v in best.items():
                v.sort(key=lambda x: x[0])
                (t0, n0, r0), second = v[0], (v[1] if len(v) > 1 else (None, "", None))
                _, sd, _ = baselines(r0)
                p(f"| {dt} | {shape} | {n0} | {t0:.1f} | {second[1]} | {fmt(second[0])} | "
                  f"{fmt(ratio(t0, us(sd)), '.2f')} |")
            p("")
        for (impl, dt), (hi, lo, n, total) in worst.items():
            if n == 0:
                verdicts.append(f"Attention goal, {impl} {dt}: no SDPA timing to compare with -> **unknown**")
                continue
            v = "not met" if hi > 1.0 else ("met" if n == total else "met where compared (incomplete)")
            verdicts.append(f"Attention goal (at least as fast as SDPA at every shape), {impl} {dt}: ours / SDPA "
                            f"{lo:.2f}-{hi:.2f} over {n} of {total} shapes -> **{v}**")

    datt = [r for r in ours if r["op"] == "attention+dropout" and r["implementation"] == "fused"]
    if datt:
        p("## Attention with dropout p = 0.1 on the probabilities (12 heads x 64)\n")
        p("fused: the `_dropout` kernels (Philox draw); candle: Candle's attention with a device-drawn mask (what "
          "a frozen layer with frozen dropout on runs by default); SDPA with `dropout_p=0.1`, with the mask "
          "for padded rows and without for `nopad` rows. Rows tagged [kbench-dropout-K] ran with "
          "MSLT_ATTENTION=K.\n")
        p("| implementation | dtype | shape | fused us | candle us | SDPA us | fused / candle | fused / SDPA |")
        p("|---|---|---|---|---|---|---|---|")
        for r in datt:
            _, sd, cand = baselines(r)
            p(f"| {r['impl']} | {r['dtype']} | {r['shape']} | {us(r):.1f} | {fmt(us(cand))} | {fmt(us(sd))} | "
              f"{fmt(ratio(us(r), us(cand)), '.2f')} | {fmt(ratio(us(r), us(sd)), '.2f')} |")
        p("")

    if verdicts:
        p("## Goals of issue 5\n")
        for v in verdicts:
            p(f"- {v}")
        p("")

    # ---- base benches
    benches = load(sorted(glob.glob(os.path.join(a.dir, "bench-base-*.json"))), skipped)
    if benches:
        p("## `bench --model-config base` (step ms, median; speedup vs the full model; frozen fwd: the "
          "embeddings and frozen layers timed alone)\n")
        names = []
        for _, r in benches:
            for x in r["rows"]:
                if x["name"] not in names:
                    names.append(x["name"])
        p("| file | frozen layers | pool | matmul | " + " | ".join(names) + " | schedule speedup |")
        p("|---|---|---|---|" + "---|" * len(names) + "---|")
        for f, r in benches:
            by = {x["name"]: x for x in r["rows"]}
            def cell(x):
                fz = x.get("frozen_forward")
                return (f"{x['step']['median_ms']:.1f} ({x['speedup']:.2f}x"
                        + (f"; frozen fwd {fz['median_ms']:.1f})" if fz else ")"))
            cells = [cell(by[n]) if n in by else "" for n in names]
            p(f"| {f.removeprefix('bench-base-').removesuffix('.json')} | {r['frozen']} | {r.get('cuda_pool', '')} | "
              f"{r.get('matmul_precision', 'f32')} {r['matmul_gflops'] / 1e3:.1f} TFLOP/s | " + " | ".join(cells)
              + f" | {r['schedule_speedup']:.2f} |")
        p("")
        # the optimizer's update per bench (LAMB adds two norms per tensor to AdamW's work)
        p("| file | optimizer | opt ms, full model (median) | opt ms, each MSLT stage |")
        p("|---|---|---|---|")
        for f, r in benches:
            rows = [x for x in r["rows"] if "optimizer" in x]
            full = [x for x in rows if x["name"] == "full"]
            stages = ", ".join(f"{x['optimizer']['median_ms']:.2f}" for x in rows
                               if x["name"] not in ("full",) and x.get("trainable_layers", 0) > 0)
            p(f"| {f.removeprefix('bench-base-').removesuffix('.json')} | {r.get('optimizer', 'adamw')} | "
              + (f"{full[0]['optimizer']['median_ms']:.2f}" if full else "") + f" | {stages} |")
        p("")

    # ---- one frozen layer op by op (bench --layer-ops)
    lops = load(sorted(glob.glob(os.path.join(a.dir, "layer-ops-*.json"))), skipped)
    if lops:
        p("## One frozen `base` layer, op by op (`bench --layer-ops`; the device synchronised around each op)\n")
        for f, r in lops:
            drop = "on" if r["frozen_dropout"] else "off"
            p(f"### {r['path']} path, {r['dtype']}, B{r['batch_size']} T{r['seq_len']}, frozen dropout {drop} "
              f"({f})\n")
            p("| op | median ms | share | TFLOP/s | GB/s |")
            p("|---|---|---|---|---|")
            for o in r["ops"]:
                p(f"| {o['op']} | {o['time']['median_ms']:.3f} | {100 * o['share']:.1f}% | "
                  f"{fmt(o.get('tflops'), '.2f')} | {fmt(o.get('gb_per_s'), '.0f')} |")
            whole = f"Sum of the ops {r['ops_sum_ms']:.3f} ms; the whole layer with one synchronisation: "
            fl, cl = r.get("fused_layer"), r["candle_layer"]["median_ms"]
            cli = r["candle_layer_issue"]["median_ms"]
            if fl:
                fli = r["fused_layer_issue"]["median_ms"]
                whole += (f"fused {fl['median_ms']:.3f} ms (issued by the host in {fli:.3f}), Candle f32 {cl:.3f} ms "
                          f"(issued in {cli:.3f}; {cl / fl['median_ms']:.2f}x the fused time).")
            else:
                whole += f"{cl:.3f} ms (issued by the host in {cli:.3f})."
            p(whole + "\n")

    if skipped:
        p("## Missing or unreadable\n")
        for s in skipped:
            p(f"- {s}")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
