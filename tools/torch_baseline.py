#!/usr/bin/env python3
"""PyTorch eager baseline for `mslt-cli bench --compare`: the same BERT pre-training step on the
same machine and threads, with Hugging Face transformers' BertForPreTraining modules.

Rows (all fp32, dropout 0.1 in train mode, batch x seq of random ids, exactly 15% of the non-[CLS]
positions masked (round(0.15 B (T - 1)), as mslt's bench),
the MLM head (transform + tied decoder) applied to the masked positions only, NSP head, AdamW):
  full        every parameter trains: forward + backward + AdamW step
  stage       the bottom --frozen layers and the embeddings are frozen and run under no_grad (no
              graph); the layers above and the heads train (an MSLT stage)
  forward     inference forward of the whole model (eval mode, no_grad), MLM head on masked rows
and the fp32 matmul rate (1024^3, median of 5) for MFU.

Set-up (a venv with PyTorch and transformers; CPU use only):
    python3 -m venv .assets/torch-venv
    .assets/torch-venv/bin/pip install torch transformers
Run:
    .assets/torch-venv/bin/python tools/torch_baseline.py --layers 8 --frozen 6 --threads 2 --json out/torch-h256x8.json
"""
import argparse, json, statistics, time

import torch
import torch.nn.functional as F
import transformers
from transformers import BertConfig, BertForPreTraining


def median_spread(ts):
    ts = sorted(ts)
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": ts[0] * 1e3, "max_ms": ts[-1] * 1e3, "n": len(ts)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--frozen", type=int, default=6, help="frozen bottom layers of the stage row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                     num_attention_heads=a.heads, intermediate_size=a.intermediate,
                     max_position_embeddings=512, attn_implementation="eager")
    B, T = a.batch_size, a.seq_len
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, a.vocab, (B, T), generator=g)
    tt = (torch.arange(T) >= T // 2).long().expand(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    # exactly round(0.15 B (T - 1)) non-[CLS] positions, as mslt's bench: equal MLM-head work
    cand = torch.arange(B * T).reshape(B, T)[:, 1:].flatten()
    m = round(0.15 * cand.numel())
    rows = cand[torch.randperm(cand.numel(), generator=g)[:m]].sort().values  # masked positions
    labels = ids.flatten()[rows]
    nsp = torch.arange(B) % 2

    n = 1024
    x, y = torch.randn(n, n), torch.randn(n, n)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter(); x @ y; ts.append(time.perf_counter() - t0)
    matmul_gflops = 2 * n ** 3 / statistics.median(ts) / 1e9

    def loss_of(model, frozen):
        bert = model.bert
        ext = (1.0 - mask[:, None, None, :].float()) * -1e9  # (B, 1, 1, T) additive, as ours
        if frozen > 0:
            with torch.no_grad():
                h = bert.embeddings(input_ids=ids, token_type_ids=tt)
                for layer in bert.encoder.layer[:frozen]:
                    o = layer(h, attention_mask=ext)
                    h = o[0] if isinstance(o, tuple) else o
        else:
            h = bert.embeddings(input_ids=ids, token_type_ids=tt)
        for layer in bert.encoder.layer[frozen:]:
            o = layer(h, attention_mask=ext)
            h = o[0] if isinstance(o, tuple) else o
        pooled = bert.pooler(h)
        hm = h.reshape(B * T, -1)[rows]  # (M, C): masked rows only
        logits = model.cls.predictions(hm)  # (M, V)
        loss = F.cross_entropy(logits, labels) + F.cross_entropy(model.cls.seq_relationship(pooled), nsp)
        return loss

    def train_row(frozen):
        model = BertForPreTraining(cfg)
        model.train()
        if frozen > 0:
            for p in model.bert.embeddings.parameters():
                p.requires_grad_(False)
            for layer in model.bert.encoder.layer[:frozen]:
                for p in layer.parameters():
                    p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        nd = [p for n_, p in model.named_parameters() if p.requires_grad and (n_.endswith("bias") or "LayerNorm" in n_)]
        dd = [p for p in params if all(p is not q for q in nd)]
        opt = torch.optim.AdamW([{"params": dd, "weight_decay": 0.01}, {"params": nd, "weight_decay": 0.0}], lr=1e-4, eps=1e-6)
        fw, bw, op, st = [], [], [], []
        for it in range(a.warmup + a.repeats):
            t0 = time.perf_counter()
            loss = loss_of(model, frozen)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if it >= a.warmup:
                fw.append(t1 - t0); bw.append(t2 - t1); op.append(t3 - t2); st.append(t3 - t0)
        return {"step": median_spread(st), "forward": median_spread(fw), "backward": median_spread(bw),
                "optimizer": median_spread(op), "trainable_params": sum(p.numel() for p in params)}

    def forward_row():
        model = BertForPreTraining(cfg)
        model.eval()
        st = []
        with torch.no_grad():
            for it in range(a.warmup + a.repeats):
                t0 = time.perf_counter()
                loss_of(model, 0)
                if it >= a.warmup:
                    st.append(time.perf_counter() - t0)
        return {"step": median_spread(st)}

    out = {
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "config": vars(a), "masked_rows": int(rows.numel()), "matmul_gflops": matmul_gflops,
        "rows": {"full": train_row(0), "stage": dict(train_row(a.frozen), frozen=a.frozen), "forward": forward_row()},
    }
    for k, v in out["rows"].items():
        s = v["step"]
        print(f"torch {k:<8} {s['median_ms']:9.1f} ms (min {s['min_ms']:.1f}, max {s['max_ms']:.1f})")
    print(f"torch matmul {matmul_gflops:.1f} GFLOP/s, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
