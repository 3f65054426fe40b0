#!/usr/bin/env python3
"""Markdown table of mslt vs PyTorch CPU step times over several runs of scripts/cpu-vs-torch.sh:
the median of the per-run medians with their range, the ratio, and MFU (against the faster of the
two measured matmul rates of each run, medians over runs).

Usage: python3 tools/cpu_speed_table.py docs/cpu/after/run1 docs/cpu/after/run2 ...
(each directory holds mslt-{mini,h256x8}.json and torch-{mini,h256x8}.json)."""
import json
import statistics as st
import sys

CONFIGS = [("mini", "`mini` (4 x 256, 4 heads, I 1024)"), ("h256x8", "8 x 256, 4 heads, I 1024")]


def rows_of(d, name):
    m = json.load(open(f"{d}/mslt-{name}.json"))
    t = json.load(open(f"{d}/torch-{name}.json"))
    layers, frozen = t["config"]["layers"], t["rows"]["stage"]["frozen"]
    ours = {r["name"]: r for r in m["rows"]}
    stage = next(r for r in m["rows"] if r["name"].startswith("stage") and r["depth"] == layers
                 and r["depth"] - r["trainable_layers"] == frozen)
    rate = max(m["matmul_gflops"], t["matmul_gflops"]) * 1e9
    out = {}
    for key, mine, theirs in [("full", ours["full"], t["rows"]["full"]),
                              ("stage", stage, t["rows"]["stage"]),
                              ("forward", ours["forward-only"], t["rows"]["forward"])]:
        a, b = mine["step"]["median_ms"], theirs["step"]["median_ms"]
        flops = mine["flops"]
        out[key] = dict(mslt=a, torch=b, ratio=a / b, mfu_m=flops / (a / 1e3) / rate,
                        mfu_t=flops / (b / 1e3) / rate,
                        fb=(mine["forward"]["median_ms"], mine["backward"]["median_ms"]),
                        tfb=(theirs.get("forward", {}).get("median_ms"), theirs.get("backward", {}).get("median_ms")))
    return out, frozen, layers


def fmt(vals, p=0):
    return f"{st.median(vals):.{p}f} ({min(vals):.{p}f}-{max(vals):.{p}f})"


def main(dirs):
    print("| config | row | mslt ms | PyTorch 2.15 ms | mslt / PyTorch | MFU mslt | MFU PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for name, label in CONFIGS:
        runs = [rows_of(d, name) for d in dirs]
        frozen, layers = runs[0][1], runs[0][2]
        for key, row in [("full", "full"), ("stage", f"MSLT stage, {frozen} of {layers} frozen"),
                         ("forward", "forward-only")]:
            r = [x[0][key] for x in runs]
            print(f"| {label if key == 'full' else '`' + name + '`' if name == 'mini' else '8 x 256'} | {row} | "
                  f"{fmt([x['mslt'] for x in r])} | {fmt([x['torch'] for x in r])} | "
                  f"{fmt([x['ratio'] for x in r], 2)} | {st.median([x['mfu_m'] for x in r]):.2f} | "
                  f"{st.median([x['mfu_t'] for x in r]):.2f} |")
    print()
    for name, _ in CONFIGS:
        for key in ["full", "stage"]:
            parts = []
            for d in dirs:
                x = rows_of(d, name)[0][key]
                parts.append(f"mslt ({x['fb'][0]:.0f}, {x['fb'][1]:.0f}) vs PyTorch "
                             f"({x['tfb'][0]:.0f}, {x['tfb'][1]:.0f})" if x['tfb'][0] else "")
            print(f"{name} {key} (forward, backward) ms per run: " + "; ".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
