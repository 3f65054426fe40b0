//! LAMB against optax (third-party): three steps on 11 parameters of the tiny HF BERT, with a
//! learning rate per step, in both trust-ratio variants. The fixture and how it was made:
//! tests/fixtures/lamb/ and tools/make_lamb_reference.py.
//!
//! Tolerance: 1e-6 relative (max |ours - ref| / max |ref| per tensor) of a float64 reference:
//! ours runs in float32 (measured 2.2e-7), so bit equality is not expected.

use candle_core::{DType, Device, Tensor, Var};
use mslt_core::optim::{Algorithm, Optimizer, OptimizerConfig};
use std::collections::HashMap;
use std::path::PathBuf;

const NAMES: [&str; 11] = [
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "bert.encoder.layer.0.attention.self.key.weight",
    "bert.encoder.layer.0.attention.self.key.bias",
    "bert.pooler.dense.weight",
    "cls.predictions.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
];

fn fixture() -> HashMap<String, Tensor> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lamb/reference.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let s = want.abs().unwrap().max_all().unwrap();
    let (d, s) = (
        d.to_scalar::<f32>().unwrap() as f64,
        s.to_scalar::<f32>().unwrap() as f64,
    );
    d / s.max(1e-12)
}

/// Runs our LAMB over the fixture's gradients; `composed` forces the tensor-op path (the one
/// CUDA takes) instead of the CPU one-pass update. Returns the worst relative error.
fn run(variant: &str, adapt_all: bool, composed_dtype: Option<DType>) -> f64 {
    let f = fixture();
    let lrs = f["lrs"].to_vec1::<f32>().unwrap();
    let vars: Vec<(String, Var)> = NAMES
        .iter()
        .map(|n| {
            let t = f[&format!("init.{n}")].clone();
            // An f64 parameter takes the composed tensor ops (the path of CUDA and bf16
            // parameters); the update math stays f32 and the initial values stay exact.
            let t = match composed_dtype {
                Some(dt) => t.to_dtype(dt).unwrap(),
                None => t,
            };
            (n.to_string(), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let mut opt = Optimizer::new(
        vars.clone(),
        OptimizerConfig {
            lr: lrs[0] as f64,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.1,
            algorithm: Algorithm::Lamb,
            lamb_adapt_all: adapt_all,
        },
    )
    .unwrap();
    let mut worst = 0f64;
    for (k, lr) in lrs.iter().enumerate() {
        opt.set_lr(*lr as f64);
        let grads: Vec<Option<Tensor>> = NAMES
            .iter()
            .map(|n| Some(f[&format!("grad{}.{n}", k + 1)].clone()))
            .collect();
        opt.step_grads(&grads).unwrap();
        for (n, v) in &vars {
            let want = &f[&format!("{variant}.after{}.{n}", k + 1)];
            let got = v.as_tensor().to_dtype(DType::F32).unwrap();
            let e = max_rel(&got, want);
            assert!(
                e < 1e-6,
                "{variant} step {}: {n}: max rel error {e:.2e}",
                k + 1
            );
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn lamb_matches_optax_trust_ratio_on_decayed_tensors() {
    let e = run("decayed", false, None);
    eprintln!("LAMB (trust ratio on decayed tensors) vs optax: max rel error {e:.2e}");
}

#[test]
fn lamb_matches_optax_trust_ratio_on_every_tensor() {
    let e = run("all", true, None);
    eprintln!("LAMB (trust ratio on every tensor) vs optax: max rel error {e:.2e}");
}

/// The composed tensor ops (what a CUDA or bf16/f64 parameter takes) against optax too.
#[test]
fn lamb_composed_path_matches_optax() {
    for (variant, all) in [("decayed", false), ("all", true)] {
        let e = run(variant, all, Some(DType::F64));
        eprintln!("LAMB composed ({variant}) vs optax: max rel error {e:.2e}");
    }
}

/// The variants differ where they must: the fixture's two trajectories are not the same, so
/// the tests above could tell one variant from the other.
#[test]
fn the_two_variants_differ_on_biases_and_layernorm() {
    let f = fixture();
    for n in NAMES {
        let (a, b) = (
            &f[&format!("decayed.after3.{n}")],
            &f[&format!("all.after3.{n}")],
        );
        let d = max_rel(a, b);
        let decayed = !(n.ends_with(".bias") || n.contains("LayerNorm"));
        if decayed {
            assert_eq!(
                d, 0.0,
                "{n}: weight-decayed tensors take the trust ratio in both"
            );
        } else if n != "bert.encoder.layer.0.attention.self.key.bias" {
            assert!(d > 1e-3, "{n}: the variants should differ ({d:.2e})");
        }
    }
}
