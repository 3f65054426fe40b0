"""Reference trajectories of the LAMB optimizer, made with optax (not by us).

Writes mslt-core/tests/fixtures/lamb/reference.safetensors, which
mslt-core/tests/lamb_reference.rs compares our `Optimizer` (algorithm LAMB) with.

Inputs: 11 parameters of the tiny HF BERT in tests/fixtures/tiny/model (real names, shapes and
initial values: zero biases, unit LayerNorm weights), three gradients per parameter (the
fixture's real gradient of the loss, rescaled, plus Gaussian noise; all-zero for two of them, so
the zero-norm rules are exercised) and three learning rates, one per step.

Two variants, both with betas 0.9 / 0.999, eps 1e-6, weight decay 0.1 on every tensor except
biases and LayerNorm parameters (the HF convention, `mslt_core::optim::no_decay`):
- `decayed`: the trust ratio only on the weight-decayed tensors (google-research BERT's
  `exclude_from_layer_adaptation`, apex FusedLAMB and timm Lamb by default);
- `all`: the trust ratio on every tensor (optax.lamb, NVLAMB).
Each is optax.scale_by_adam -> add_decayed_weights(mask) -> scale_by_trust_ratio (masked for
`decayed`) -> times -lr, computed in float64 on the CPU (jax_enable_x64; the inputs are float32
values) and stored as float32. In float32, optax evaluates the bias correction `1 - b2**t` with b2
rounded to float32 (0.99900001), which moves its first steps by ~6e-6 relative from the exact
update; float64 keeps the reference exact to the tolerance the test asks of our float32 update.

Run (versions used for the committed file):
    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install "jax[cpu]==0.10.2" optax==0.2.8 safetensors==0.8.0
    /tmp/jaxenv/bin/python tools/make_lamb_reference.py
"""

import os

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax  # noqa: E402
from safetensors.numpy import load_file, save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "mslt-core", "tests", "fixtures")
NAMES = [
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "bert.encoder.layer.0.attention.self.key.weight",  # zero gradients: update = wd * p
    "bert.encoder.layer.0.attention.self.key.bias",  # zero gradients and zero value
    "bert.pooler.dense.weight",
    "cls.predictions.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
]
ZERO_GRAD = {NAMES[5], NAMES[6]}
LRS = [1e-2, 4e-3, 2e-2]
SCALES = [1.0, -0.5, 2.0]
WD = 0.1


def no_decay(name):
    return name.endswith(".bias") or "LayerNorm" in name or name == "cls.predictions.bias"


def main():
    model = load_file(os.path.join(ROOT, "tiny", "model", "model.safetensors"))
    ref = load_file(os.path.join(ROOT, "tiny", "reference.safetensors"))
    rng = np.random.default_rng(20261207)
    params = {n: model[n].astype(np.float32) for n in NAMES}
    grads = []
    for s in SCALES:
        step = {}
        for n in NAMES:
            g = ref["grad." + n].astype(np.float32)
            if n in ZERO_GRAD:
                step[n] = np.zeros_like(g)
                continue
            rms = float(np.sqrt(np.mean(g.astype(np.float64) ** 2))) or 1e-3
            step[n] = (s * g + rng.normal(0.0, 0.5 * rms, g.shape)).astype(np.float32)
        grads.append(step)

    mask = {n: not no_decay(n) for n in NAMES}
    variants = {
        "decayed": optax.chain(
            optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
            optax.add_decayed_weights(WD, mask=mask),
            optax.masked(optax.scale_by_trust_ratio(), mask),
        ),
        "all": optax.chain(
            optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
            optax.add_decayed_weights(WD, mask=mask),
            optax.scale_by_trust_ratio(),
        ),
    }
    out = {"lrs": np.array(LRS, dtype=np.float32)}
    for n in NAMES:
        out["init." + n] = params[n]
        for k, g in enumerate(grads):
            out[f"grad{k + 1}.{n}"] = g[n]
    for v, tx in variants.items():
        p = {n: jnp.asarray(x, dtype=jnp.float64) for n, x in params.items()}
        state = tx.init(p)
        for k, (g, lr) in enumerate(zip(grads, LRS)):
            g64 = {n: jnp.asarray(x, dtype=jnp.float64) for n, x in g.items()}
            u, state = tx.update(g64, state, p)
            u = jax.tree.map(lambda x: -lr * x, u)
            p = optax.apply_updates(p, u)
            for n in NAMES:
                out[f"{v}.after{k + 1}.{n}"] = np.asarray(p[n], dtype=np.float32)
    dst = os.path.join(ROOT, "lamb")
    os.makedirs(dst, exist_ok=True)
    save_file(
        out,
        os.path.join(dst, "reference.safetensors"),
        metadata={
            "made_by": "tools/make_lamb_reference.py",
            "jax": jax.__version__,
            "optax": optax.__version__,
            "weight_decay": str(WD),
            "precision": "float64, stored as float32",
        },
    )
    print("wrote", os.path.join(dst, "reference.safetensors"), len(out), "tensors")


if __name__ == "__main__":
    main()
