#!/usr/bin/env python3
"""Compare the runs of an ablation at equal *modelled* training time instead of measured
wall-clock.

Why: these machines are shared, and their speed drifts by 20-30% between runs made an hour apart
(plans/sotu-mini-equal-time-lr.toml: the same 1,200 full-model steps took 769 s in one run and
about 620 s in the next). The runs of a plan are made one after another, so their measured
wall-clocks mix the schedule's cost with the machine's drift. Here every training step is costed
instead by `mslt-cli bench` reports (every stage configuration timed in one process, a minute
apart at most; rows of several reports are combined by their median): a run's modelled time at step s is the sum over its stages of the steps done in
that stage by s times the bench's median step time of that stage's configuration (depth, trained
layers, embeddings trained or not). Evaluations are not costed (training time only).

    mslt-cli bench --model-config mini --seq-len 128 --batch-size 16 --schedule mslt \
        --stages 1,2,3,4 --final-joint-frac 0 --repeats 15 --json bench-adamw.json
    mslt-cli bench ... --optimizer lamb --json bench-lamb.json
    python3 tools/equal_cost.py --bench adamw=bench-adamw.json --bench lamb=bench-lamb.json \
        --baseline full-5e-4 runs/ablation-equal-time-lr

A run is matched to the bench files of its optimizer (`adamw`, `lamb`; `adamw+untied` for an
untied decoder). The summary reads each run's evaluation curve at the baseline's modelled end
time and at the baseline's final loss, interpolating linearly between evaluations, as `ablate`
does with measured time.

`--self-test` checks the costing and the interpolation on a made-up run and exits.
"""

import argparse
import json
import os
import sys


def load_bench(spec_list):
    """{key: {(depth, trained_layers, train_embeddings): [median step ms, ...]}}"""
    costs = {}
    for spec in spec_list:
        if "=" not in spec:
            sys.exit(f"--bench {spec!r}: expected KEY=FILE, e.g. adamw=bench.json")
        key, path = spec.split("=", 1)
        try:
            with open(path) as f:
                rows = json.load(f)["rows"]
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"{path}: not an `mslt-cli bench --json` report ({e})")
        for r in rows:
            k = (r["depth"], r["trainable_layers"], bool(r["train_embeddings"]))
            costs.setdefault(key, {}).setdefault(k, []).append(r["step"]["median_ms"])
    return costs


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def stage_costs(stages, table, name):
    """Median step seconds of each stage of a run."""
    out = []
    for st in stages:
        k = (st["depth"], st["depth"] - st["train_from_layer"], bool(st["train_embeddings"]))
        if k not in table:
            sys.exit(
                f"{name}: no bench row for depth {k[0]}, {k[1]} trained layer(s), embeddings "
                f"{'trained' if k[2] else 'frozen'} (bench rows: {sorted(table)})"
            )
        out.append(median(table[k]) / 1000.0)
    return out


def modelled_time(stages, secs, step):
    """Training seconds the bench gives for the first `step` steps of a run."""
    t = 0.0
    for st, c in zip(stages, secs):
        t += min(max(step - st["start"], 0), st["steps"]) * c
    return t


def loss_at(curve, t):
    """Loss at time t on a curve of (time, loss), linear between points; None outside it."""
    if not curve or t < curve[0][0] or t > curve[-1][0]:
        return None
    for (t0, y0), (t1, y1) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def time_to(curve, y):
    """First time the curve reaches y or below, linear between points; None if never."""
    for i, (t1, y1) in enumerate(curve):
        if y1 <= y:
            if i == 0:
                return t1
            t0, y0 = curve[i - 1]
            return t1 if y0 == y1 else t0 + (t1 - t0) * (y0 - y) / (y0 - y1)
    return None


def read_run(d, costs):
    name = os.path.basename(d.rstrip("/"))
    path = os.path.join(d, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
        cfg["run"], cfg["stages"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{path}: not a run's config.json with `run` and `stages` ({e})")
    run = cfg["run"]
    key = run["optimizer"] + ("+untied" if run.get("untie_decoder") else "")
    if key not in costs:
        sys.exit(f"{name}: no --bench {key}=FILE given (its optimizer / decoder)")
    stages = cfg["stages"]
    secs = stage_costs(stages, costs[key], name)
    evals, wall = [], None
    mpath = os.path.join(d, "metrics.jsonl")
    with open(mpath) as f:
        for i, line in enumerate(f, 1):
            try:
                m = json.loads(line)
            except ValueError as e:
                sys.exit(f"{mpath}:{i}: not a JSON line ({e})")
            if "eval_mlm_loss" in m:
                evals.append((m["step"], m["elapsed_s"], m["eval_mlm_loss"]))
    if not evals:
        sys.exit(f"{name}: no evaluations in metrics.jsonl")
    wall = evals[-1][1]
    curve = [(modelled_time(stages, secs, s), y) for s, _, y in evals]
    return {
        "name": name,
        "steps": evals[-1][0],
        "final": evals[-1][2],
        "wall": wall,
        "modelled": curve[-1][0],
        "curve": curve,
    }


def fmt(x, nd):
    return "-" if x is None else f"{x:.{nd}f}"


def summarise(runs, baseline):
    b = next((r for r in runs if r["name"] == baseline), None)
    if b is None:
        sys.exit(f"--baseline {baseline}: not one of {[r['name'] for r in runs]}")
    b_end, b_loss = b["modelled"], b["final"]
    b_cross = time_to(b["curve"], b_loss)
    lines = [
        f"| run | steps | final eval MLM loss | measured wall s | modelled train s | wall / modelled "
        f"| eval MLM loss at {baseline}'s modelled end ({b_end:.0f} s) | modelled s to {b_loss:.4f} "
        f"| speedup to it | minus {baseline} at the earlier of the two ends |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = time_to(r["curve"], b_loss)
        sp = b_cross / t if (t and b_cross) else None
        te = min(r["modelled"], b_end)
        ya, yb = loss_at(r["curve"], te), loss_at(b["curve"], te)
        d = f"{ya - yb:+.4f} ({te:.0f} s)" if ya is not None and yb is not None else "-"
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['final']:.4f} | {r['wall']:.0f} | {r['modelled']:.0f} "
            f"| {r['wall'] / r['modelled']:.2f} | {fmt(loss_at(r['curve'], b_end), 4)} "
            f"| {fmt(t, 0)} | {fmt(sp, 2)} | {d} |"
        )
    return "\n".join(lines)


def self_test():
    stages = [
        {"depth": 1, "train_from_layer": 0, "train_embeddings": True, "start": 0, "steps": 100},
        {"depth": 2, "train_from_layer": 1, "train_embeddings": False, "start": 100, "steps": 100},
    ]
    table = {(1, 1, True): [200.0, 400.0, 300.0], (2, 1, False): [500.0]}
    secs = stage_costs(stages, table, "t")
    assert secs == [0.3, 0.5], secs
    assert modelled_time(stages, secs, 0) == 0.0
    assert abs(modelled_time(stages, secs, 50) - 15.0) < 1e-9
    assert abs(modelled_time(stages, secs, 150) - (30.0 + 25.0)) < 1e-9
    assert abs(modelled_time(stages, secs, 999) - 80.0) < 1e-9
    curve = [(0.0, 8.0), (10.0, 6.0), (10.0, 6.5), (20.0, 5.0)]
    assert loss_at(curve, 5.0) == 7.0
    assert loss_at(curve, 15.0) == 5.75
    assert loss_at(curve, 25.0) is None
    assert time_to(curve, 7.0) == 5.0
    assert time_to(curve, 6.0) == 10.0
    assert abs(time_to(curve, 5.5) - (10.0 + 10.0 * 1.0 / 1.5)) < 1e-9
    assert time_to(curve, 4.0) is None
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5
    print("equal_cost self-test: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", action="append", default=[], help="KEY=FILE (KEY: adamw, lamb, adamw+untied)")
    ap.add_argument("--baseline", help="the run others are compared with")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("runs", nargs="?", help="an ablation output directory")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    if not (a.runs and a.baseline and a.bench):
        ap.error("give --bench, --baseline and the ablation directory")
    costs = load_bench(a.bench)
    runs = []
    for n in sorted(os.listdir(a.runs)):
        d = os.path.join(a.runs, n)
        if os.path.isfile(os.path.join(d, "metrics.jsonl")):
            runs.append(read_run(d, costs))
    for key, table in sorted(costs.items()):
        for k, v in sorted(table.items()):
            spread = f" (median of rows {', '.join(f'{x:.0f}' for x in v)})" if len(v) > 1 else ""
            print(f"bench {key}: depth {k[0]}, {k[1]} trained, embeddings "
                  f"{'trained' if k[2] else 'frozen'}: {median(v):.1f} ms/step{spread}")
    print()
    print(summarise(runs, a.baseline))


if __name__ == "__main__":
    main()
