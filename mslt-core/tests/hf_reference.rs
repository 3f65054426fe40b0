//! Parity with Hugging Face transformers (PyTorch) on the tiny BertForPreTraining fixture:
//! forward outputs, every parameter gradient, and three AdamW steps. See tests/fixtures/README.md.
//!
//! Tolerances: forward 1e-5 and AdamW trajectory 1e-5 relative (max |ours - ref| / max |ref|),
//! gradients 1e-4 relative by norm (||ours - ref|| / ||ref||). Run with `--nocapture` to see the
//! errors reached.

use candle_core::{Device, Tensor};
use mslt_core::loss::MlmTargets;
use mslt_core::optim::{Optimizer, OptimizerConfig};
use mslt_core::weights::{load_safetensors, ModelFiles, Params};
use mslt_core::{BertConfig, BertForPreTraining, BertInput, Mode, Rng};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

struct Fixture {
    cfg: BertConfig,
    weights: HashMap<String, Tensor>,
    r: HashMap<String, Tensor>,
}

fn load() -> Fixture {
    let files = ModelFiles::from_dir(&fixture("tiny/model")).unwrap();
    let cfg = files.load_config().unwrap();
    let weights = load_safetensors(&files.weights, &cfg, &Device::Cpu)
        .unwrap()
        .tensors;
    let r = candle_core::safetensors::load(fixture("tiny/reference.safetensors"), &Device::Cpu)
        .unwrap();
    Fixture { cfg, weights, r }
}

impl Fixture {
    fn i64s(&self, k: &str) -> Vec<i64> {
        self.r[k].flatten_all().unwrap().to_vec1::<i64>().unwrap()
    }
    fn input(&self) -> BertInput {
        let (b, t) = self.r["input_ids"].dims2().unwrap();
        BertInput::from_host(
            &self.cfg,
            (b, t),
            &self.i64s("input_ids"),
            Some(&self.i64s("attention_mask")),
            Some(&self.i64s("token_type_ids")),
            &Device::Cpu,
        )
        .unwrap()
    }
    fn targets(&self) -> (MlmTargets, Tensor) {
        let mlm =
            MlmTargets::from_labels(&self.i64s("mlm_labels"), self.cfg.vocab_size, &Device::Cpu)
                .unwrap();
        let nsp: Vec<u32> = self.i64s("nsp_labels").iter().map(|&x| x as u32).collect();
        let n = nsp.len();
        (mlm, Tensor::from_vec(nsp, n, &Device::Cpu).unwrap())
    }
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// (max abs diff, max abs diff / max |ref|)
fn max_rel(got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (vals(got), vals(want));
    let d = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let s = w.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-30);
    (d, d / s)
}

fn norm(t: &Tensor) -> f64 {
    vals(t).iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ||got - want|| / ||want||
fn norm_rel(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (vals(got), vals(want));
    let d: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
    d / n
}

fn check_forward(model: &BertForPreTraining, f: &Fixture, label: &str) {
    let input = f.input();
    let out = model.encode(&input, &mut Mode::Eval, true).unwrap();
    let mut checks: Vec<(String, Tensor)> = out
        .hidden_states
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("hidden_states.{i}"), h.clone()))
        .collect();
    let pooled = model.pool(&out.last_hidden_state).unwrap().unwrap();
    checks.push((
        "prediction_logits".into(),
        model.mlm_logits(&out.last_hidden_state).unwrap(),
    ));
    checks.push((
        "seq_relationship_logits".into(),
        model.nsp_logits(&pooled).unwrap(),
    ));
    checks.push(("pooler_output".into(), pooled));
    let (mlm, nsp) = f.targets();
    let l = model
        .pretraining_loss(&input, &mlm, Some(&nsp), &mut Mode::Eval)
        .unwrap();
    checks.push(("mlm_loss".into(), l.mlm_loss));
    checks.push(("nsp_loss".into(), l.nsp_loss.unwrap()));
    checks.push(("loss".into(), l.loss));
    assert_eq!(out.hidden_states.len(), f.cfg.num_hidden_layers + 1);
    for (name, got) in checks {
        let (abs, rel) = max_rel(&got, &f.r[&name]);
        println!("[{label}] forward {name:<26} max abs {abs:.3e}  rel {rel:.3e}");
        assert!(
            rel < 1e-5,
            "[{label}] {name}: rel error {rel:.3e} (abs {abs:.3e})"
        );
    }
}

#[test]
fn forward_matches_transformers_trainable_path() {
    let f = load();
    let params = Params::from_tensors(&f.weights).unwrap();
    let model = BertForPreTraining::from_tensors(&f.cfg, &params.tensors(), "fixture").unwrap();
    check_forward(&model, &f, "trainable");
}

#[test]
fn forward_matches_transformers_frozen_fused_path() {
    // Plain tensors: nothing is tracked, so LayerNorm and softmax take the fused no-backward ops.
    let f = load();
    let model = BertForPreTraining::from_tensors(&f.cfg, &f.weights, "fixture").unwrap();
    check_forward(&model, &f, "frozen");
}

#[test]
fn every_gradient_matches_transformers() {
    let f = load();
    let params = Params::from_tensors(&f.weights).unwrap();
    let model = BertForPreTraining::from_tensors(&f.cfg, &params.tensors(), "fixture").unwrap();
    let (mlm, nsp) = f.targets();
    let l = model
        .pretraining_loss(&f.input(), &mlm, Some(&nsp), &mut Mode::Eval)
        .unwrap();
    let grads = l.loss.backward().unwrap();
    // The key bias has an analytically zero gradient (it shifts every score of a query row by the
    // same amount, which softmax ignores): both sides hold float noise there, so each tensor's
    // norm is floored at 1e-6 of the whole gradient's norm.
    let global: f64 =
        f.r.iter()
            .filter(|(k, _)| k.starts_with("grad."))
            .map(|(_, t)| norm(t).powi(2))
            .sum::<f64>()
            .sqrt();
    let mut n = 0;
    for (name, var) in &params.vars {
        let want =
            f.r.get(&format!("grad.{name}"))
                .unwrap_or_else(|| panic!("reference has no grad.{name}"));
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(!got.track_op(), "grad {name} carries an autograd graph");
        let (gn, wn) = (norm(got), norm(want));
        let rel = norm_rel(got, want) * wn.max(1e-30) / wn.max(1e-6 * global);
        println!("grad {name:<58} rel {rel:.3e}  |ours| {gn:.3e} |ref| {wn:.3e}");
        assert!(rel < 1e-4, "grad {name}: rel error {rel:.3e}");
        n += 1;
    }
    let ref_grads = f.r.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(n, ref_grads, "every reference gradient is checked");
}

#[test]
fn every_trainable_parameter_gets_a_nonzero_gradient() {
    // Fresh BERT init, dropout on (train mode): nothing may be cut from the graph.
    let cfg = BertConfig::from_file(&fixture("tiny/model/config.json")).unwrap();
    let mut rng = Rng::new(11);
    let params =
        Params::from_tensors(&mslt_core::weights::init_all(&cfg, &mut rng, &Device::Cpu).unwrap())
            .unwrap();
    let model = BertForPreTraining::from_tensors(&cfg, &params.tensors(), "init").unwrap();
    let f = load();
    let (mlm, nsp) = f.targets();
    let l = model
        .pretraining_loss(&f.input(), &mlm, Some(&nsp), &mut Mode::Train(&mut rng))
        .unwrap();
    let grads = l.loss.backward().unwrap();
    assert_eq!(
        params.vars.len(),
        mslt_core::model::parameter_shapes(&cfg, mslt_core::Heads::ALL).len()
    );
    for (name, var) in &params.vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let s = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(s > 0.0 && s.is_finite(), "{name}: gradient sum {s}");
    }
}

#[test]
fn three_adamw_steps_match_transformers() {
    let f = load();
    let params = Params::from_tensors(&f.weights).unwrap();
    let model = BertForPreTraining::from_tensors(&f.cfg, &params.tensors(), "fixture").unwrap();
    let cfg = OptimizerConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Optimizer::new(params.named_vars(), cfg).unwrap();
    let (mlm, nsp) = f.targets();
    let input = f.input();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let l = model
            .pretraining_loss(&input, &mlm, Some(&nsp), &mut Mode::Eval)
            .unwrap();
        losses.push(l.loss.to_scalar::<f32>().unwrap());
        let grads = l.loss.backward().unwrap();
        opt.step(&grads).unwrap();
    }
    let want: Vec<f32> = f.r["step_losses"].to_vec1().unwrap();
    for (i, (a, b)) in losses.iter().zip(&want).enumerate() {
        let rel = ((a - b) / b).abs();
        println!("step_losses[{i}] ours {a:.7} ref {b:.7} rel {rel:.3e}");
        assert!(rel < 1e-5, "step {i}: {a} vs {b}");
    }
    let mut worst = (0.0f64, String::new());
    let mut worst_abs = 0.0f64;
    for (name, var) in &params.vars {
        let (abs, rel) = max_rel(var.as_tensor(), &f.r[&format!("after_3_steps.{name}")]);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        // rtol 1e-5 plus atol 1e-6 (0.1% of one step's lr): where a gradient element is near
        // Adam's eps (1e-6) the update lr*g/(|g|+eps) amplifies float noise in g by lr/eps = 1e3,
        // and the key biases (analytically zero gradient) move by noise alone.
        worst_abs = worst_abs.max(abs);
        println!("after_3_steps.{name:<58} abs {abs:.3e} rel {rel:.3e}");
        assert!(
            abs < 1e-6 || rel < 1e-5,
            "after_3_steps.{name}: rel {rel:.3e} abs {abs:.3e}"
        );
    }
    println!(
        "after_3_steps worst rel {:.3e} ({}), worst abs {worst_abs:.3e}",
        worst.0, worst.1
    );
    // The optimizer state round-trips.
    let state = opt.state();
    assert_eq!(opt.step_count(), 3);
    let mut opt2 = Optimizer::new(params.named_vars(), OptimizerConfig::default()).unwrap();
    assert_eq!(opt2.load_state(&state, true).unwrap(), params.vars.len());
    assert_eq!(opt2.step_count(), 3);
}

#[test]
fn dropout_is_real_in_train_mode_and_absent_in_eval() {
    let f = load();
    let model = BertForPreTraining::from_tensors(&f.cfg, &f.weights, "fixture").unwrap();
    let input = f.input();
    let eval1 = model
        .encode(&input, &mut Mode::Eval, false)
        .unwrap()
        .last_hidden_state;
    let eval2 = model
        .encode(&input, &mut Mode::Eval, false)
        .unwrap()
        .last_hidden_state;
    assert_eq!(max_rel(&eval1, &eval2).0, 0.0);
    let mut r1 = Rng::new(3);
    let mut r2 = Rng::new(3);
    let t1 = model
        .encode(&input, &mut Mode::Train(&mut r1), false)
        .unwrap()
        .last_hidden_state;
    let t2 = model
        .encode(&input, &mut Mode::Train(&mut r2), false)
        .unwrap()
        .last_hidden_state;
    assert_eq!(max_rel(&t1, &t2).0, 0.0, "same seed, same dropout");
    assert!(
        max_rel(&t1, &eval1).0 > 1e-2,
        "dropout changes the output in train mode"
    );
}
