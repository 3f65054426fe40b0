#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh: times torch.nn.functional.layer_norm (after the residual
add), GELU(x + b), scaled_dot_product_attention and a device copy on the same shapes as
`mslt-cli kernels bench`, and prints them beside our fused kernels (--ours kbench.json).

Run with the GPU machine's PyTorch (/opt/torch/.venv/bin/python). CUDA events, warm-up, median of
7 trials of back-to-back calls (~5 ms each), fresh random inputs (never zeros).
"""
import argparse, json, statistics


def timeit(fn, trials=7):
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); torch.cuda.synchronize()
    one = max(s.elapsed_time(e) * 1e3, 0.1)  # us
    inner = int(min(100, max(1, 5000 // one)))
    ts = []
    for _ in range(trials):
        s.record()
        for _ in range(inner):
            fn()
        e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) * 1e3 / inner)
    ts.sort()
    return statistics.median(ts), ts[0], ts[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--ours", nargs="+", help="kbench JSON files of `mslt-cli kernels bench` (rows of all of them)")
    ap.add_argument("--load", help="print the summary from a saved torch JSON (no timing)")
    a = ap.parse_args()
    if a.load:
        try:
            rows = json.load(open(a.load))
        except (OSError, ValueError) as e:  # the torch step failed: still summarise ours
            print(f"no torch timings ({a.load}: {e})")
            rows = []
        summary(rows, a.ours)
        return
    import torch
    import torch.nn.functional as F
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []

    def add(op, impl, dtype, shape, t, nbytes=None, flops=None):
        rows.append(dict(op=op, implementation=impl, dtype=dtype, shape=shape, median_us=t[0],
                         min_us=t[1], max_us=t[2],
                         gb_per_s=None if nbytes is None else nbytes / (t[0] * 1e-6) / 1e9,
                         tflop_per_s=None if flops is None else flops / (t[0] * 1e-6) / 1e12))

    n = 512 * 1024 * 1024 // 4
    x = torch.randn(n, device=dev); y = torch.empty_like(x)
    add("copy", "torch", "f32", "512 MiB", timeit(lambda: y.copy_(x)), 2 * n * 4)
    del x, y
    for dt, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        es = torch.tensor([], dtype=dt).element_size()
        for r in [4096, 32768, 131072]:
            for c in [768, 1024]:
                x = (torch.randn(r, c, device=dev) * 2 + 0.5).to(dt)
                res = torch.randn(r, c, device=dev).to(dt)
                w = (torch.randn(c, device=dev) * 0.5 + 1).to(dt)
                b = (torch.randn(c, device=dev) * 0.1).to(dt)
                t = timeit(lambda: F.layer_norm(x + res, (c,), w, b, 1e-12))
                add("add_layer_norm", "torch", name, f"{r}x{c}", t, 3 * r * c * es)
                t = timeit(lambda: F.layer_norm(x, (c,), w, b, 1e-12))
                add("layer_norm_only", "torch", name, f"{r}x{c}", t, 2 * r * c * es)
            c = 3072
            x = (torch.randn(r, c, device=dev) * 2).to(dt)
            b = (torch.randn(c, device=dev) * 0.5).to(dt)
            add("bias_gelu", "torch", name, f"{r}x{c}", timeit(lambda: F.gelu(x + b)), 2 * r * c * es)
        for (B, T) in [(32, 128), (128, 128), (256, 128), (32, 512), (128, 512), (256, 512), (64, 256), (128, 256)]:
            H, D = 12, 64
            qkv = torch.randn(B, T, 3, H, D, device=dev).to(dt)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D) views, as HF
            lens = torch.randint(1, T + 1, (B,), device=dev); lens[0] = T
            keep = torch.arange(T, device=dev)[None, :] < lens[:, None]
            mask = torch.zeros(B, 1, 1, T, device=dev, dtype=dt).masked_fill(~keep[:, None, None, :], -1e9)
            flops = 4 * B * H * T * T * D
            shape = f"B{B} T{T} H{H} D{D}"
            add("attention", "torch-sdpa-mask", name, shape,
                timeit(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, H * D)), None, flops)
            add("attention", "torch-sdpa-nomask", name, shape,
                timeit(lambda: F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)), None, flops)
            # training-mode dropout p = 0.1 on the probabilities (BERT's), the comparison for
            # mslt's `attention+dropout` rows
            add("attention+dropout", "torch-sdpa-mask", name, shape,
                timeit(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1).transpose(1, 2).reshape(B, T, H * D)), None, flops)
            add("attention+dropout", "torch-sdpa-nomask", name, shape,
                timeit(lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1).transpose(1, 2).reshape(B, T, H * D)), None, flops)
            del qkv, q, k, v
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    for r in rows:
        print(f"{r['op']:<16} {r['implementation']:<18} {r['dtype']:<5} {r['shape']:<20} {r['median_us']:>10.1f} us "
              + (f"{r['gb_per_s']:>7.0f} GB/s" if r['gb_per_s'] else "") + (f"{r['tflop_per_s']:>7.2f} TFLOP/s" if r['tflop_per_s'] else ""))
    summary(rows, a.ours)


def summary(rows, ours_paths):
    if ours_paths:
        ours = []
        for p in ours_paths:  # a step that crashed leaves no file or a partial one: say so, go on
            try:
                ours += json.load(open(p))
            except (OSError, ValueError) as e:
                print(f"skipping {p}: {e}")
        copy_bw = max((r["gb_per_s"] for r in ours + rows if r["op"] == "copy"), default=float("nan"))
        key = lambda r: (r["op"], r["dtype"], r["shape"])
        torch_by = {}
        for r in rows:
            torch_by.setdefault(key(r), {})[r["implementation"]] = r
        print(f"\nSUMMARY (median us; ratio = fused / other, < 1 means ours is faster); copy bandwidth {copy_bw:.0f} GB/s")
        print("attention: 'nopad' rows have no padding (mask all 0) and are compared with SDPA without a mask; the others with")
        print("SDPA given the additive padding mask (our lengths and torch's are drawn differently; SDPA's time does not depend on them)")
        print("'fused-into' rows write a buffer allocated once (as torch's y.copy_(x)); 'fused' rows allocate their output per call")
        print(f"{'op':<15} {'impl':<16} {'dtype':<5} {'shape':<26} {'fused':>9} {'candle':>9} {'torch':>9} {'f/candle':>8} {'f/torch':>8} {'%copy-bw':>8}")
        cand = {key(r): r for r in ours if r["implementation"] == "candle"}
        for r in ours:
            if not r["implementation"].startswith("fused"):
                continue
            nopad = r["shape"].endswith(" nopad")
            base = (r["op"], r["dtype"], r["shape"].removesuffix(" nopad"))
            t = torch_by.get(base, {})
            tr = t.get("torch") or (t.get("torch-sdpa-nomask") if nopad else t.get("torch-sdpa-mask"))
            c = cand.get(key(r))
            bw = f"{100 * r['gb_per_s'] / copy_bw:.0f}%" if r["gb_per_s"] else ""
            print(f"{r['op']:<15} {r['implementation']:<16} {r['dtype']:<5} {r['shape']:<26} {r['median_us']:>9.1f} "
                  f"{c['median_us'] if c else float('nan'):>9.1f} "
                  f"{tr['median_us'] if tr else float('nan'):>9.1f} {r['median_us'] / c['median_us'] if c else float('nan'):>8.2f} "
                  f"{r['median_us'] / tr['median_us'] if tr else float('nan'):>8.2f} {bw:>8}")

if __name__ == "__main__":
    main()
