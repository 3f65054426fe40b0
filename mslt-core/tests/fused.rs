//! The model-level switch to the fused kernels of mslt-kernels, tested on CPU through the ops'
//! plain CPU references (`allow_cpu`): the same wiring (Q|K|V stacking, mask layout, LayerNorm
//! packing, dtype hand-off) that runs the CUDA kernels on a GPU.

use candle_core::{DType, Device, Tensor};
use mslt_core::loss::MlmTargets;
use mslt_core::model::FusedOptions;
use mslt_core::train::stages::{plan, ScheduleKind, ScheduleSpec};
use mslt_core::train::{resolve_model_config, stage_model};
use mslt_core::weights::{init_all, Params};
use mslt_core::{BertConfig, BertForPreTraining, BertInput, Mode, Rng};

fn config() -> BertConfig {
    let mut cfg = resolve_model_config("mini").unwrap(); // 256 wide, 4 heads of 64
    cfg.num_hidden_layers = 3;
    cfg.vocab_size = 500;
    cfg
}

/// Two sequences, the second padded after 9 tokens.
fn input(cfg: &BertConfig) -> BertInput {
    let (b, t) = (2, 16);
    let ids: Vec<i64> = (0..b * t).map(|k| 5 + (k as i64 * 37) % 490).collect();
    let mask: Vec<i64> = (0..b * t).map(|k| (k < t || k % t < 9) as i64).collect();
    let tt: Vec<i64> = (0..b * t).map(|k| (k % t >= 8) as i64).collect();
    BertInput::from_host(cfg, (b, t), &ids, Some(&mask), Some(&tt), &Device::Cpu).unwrap()
}

/// MSLT 2 -> 3 layers over 10 steps, the embeddings trained or frozen.
fn two_stage_spec(train_embeddings: bool) -> ScheduleSpec<'static> {
    ScheduleSpec {
        kind: ScheduleKind::Mslt,
        target_depth: 3,
        steps: 10,
        stages: &[2, 3],
        final_joint_frac: 0.0,
        train_embeddings,
        ..Default::default()
    }
}

/// MSLT 2 -> 3 layers, frozen embeddings: in stage 1 layers 0-1 are frozen, layer 2 trains.
fn two_stages() -> Vec<mslt_core::train::stages::Stage> {
    plan(&two_stage_spec(false)).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
}

#[test]
fn fused_frozen_layers_match_the_candle_path() {
    let cfg = config();
    let w = init_all(&cfg, &mut Rng::new(4), &Device::Cpu).unwrap();
    let x = input(&cfg);
    let plain = BertForPreTraining::from_tensors(&cfg, &w, "init").unwrap();
    let want = plain.encode(&x, &mut Mode::Eval, true).unwrap();

    // Without allow_cpu nothing is prepared on CPU: the frozen path stays on Candle.
    let mut m = plain.clone();
    let opts = FusedOptions {
        dtype: DType::F32,
        allow_cpu: false,
    };
    assert_eq!(m.use_fused_kernels(opts).unwrap(), 0);

    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 3e-2)] {
        let mut m = plain.clone();
        let n = m
            .use_fused_kernels(FusedOptions {
                dtype,
                allow_cpu: true,
            })
            .unwrap();
        assert_eq!(n, 3);
        let got = m.encode(&x, &mut Mode::Eval, true).unwrap();
        assert_eq!(got.last_hidden_state.dtype(), DType::F32);
        for (i, (g, r)) in got
            .hidden_states
            .iter()
            .zip(&want.hidden_states)
            .enumerate()
        {
            let e = max_rel(g, r);
            assert!(
                e <= tol,
                "{dtype:?} hidden state {i}: rel err {e:e} > {tol:e}"
            );
        }
    }
}

/// A stage-step case: the config, weights from `seed`, the input, MLM labels at the positions
/// `label` maps to a token id (else -100), and the NSP labels.
fn step_case(
    seed: u64,
    label: impl Fn(i64) -> Option<i64>,
    nsp: [u32; 2],
) -> (BertConfig, Params, BertInput, MlmTargets, Tensor) {
    let cfg = config();
    let w = init_all(&cfg, &mut Rng::new(seed), &Device::Cpu).unwrap();
    let params = Params::from_tensors(&w).unwrap();
    let x = input(&cfg);
    let labels: Vec<i64> = (0..32).map(|k| label(k).unwrap_or(-100)).collect();
    let mlm = MlmTargets::from_labels(&labels, cfg.vocab_size, &Device::Cpu).unwrap();
    let nsp = Tensor::new(&nsp, &Device::Cpu).unwrap();
    (cfg, params, x, mlm, nsp)
}

/// One training step of stage 1 of `two_stages()` (layers 0-1 and the embeddings frozen, layer 2
/// and the heads train), the step's RNG from `rng_seed`: the loss and the gradient of every
/// trainable variable (each must have one). `fused`: the frozen layers on the fused ops (the two
/// of them, asserted); `prepare` sets the model up further before the step.
fn stage_step(
    (cfg, params, x, mlm, nsp): &(BertConfig, Params, BertInput, MlmTargets, Tensor),
    rng_seed: u64,
    fused: bool,
    frozen_dropout: bool,
    prepare: impl FnOnce(&mut BertForPreTraining),
) -> (f32, Vec<(String, Tensor)>) {
    let stages = two_stages();
    let (mut model, named) = stage_model(cfg, params, &stages[1]).unwrap();
    model.frozen_dropout = frozen_dropout;
    if fused {
        let opts = FusedOptions {
            dtype: DType::F32,
            allow_cpu: true,
        };
        assert_eq!(
            model.use_fused_kernels(opts).unwrap(),
            2,
            "only the frozen layers"
        );
    }
    prepare(&mut model);
    let mut rng = Rng::new(rng_seed);
    let l = model
        .pretraining_loss(x, mlm, Some(nsp), &mut Mode::Train(&mut rng))
        .unwrap();
    let g = l.loss.backward().unwrap();
    let grads: Vec<(String, Tensor)> = named
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                g.get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{k}: no gradient"))
                    .clone(),
            )
        })
        .collect();
    (l.loss.to_scalar::<f32>().unwrap(), grads)
}

#[test]
fn an_mslt_stage_with_fused_frozen_layers_trains_the_same() {
    let case = step_case(5, |k| (k % 5 == 1).then_some(7 + k), [0, 1]);
    let loss_and_grads =
        |fused: bool, frozen_dropout: bool| stage_step(&case, 9, fused, frozen_dropout, |_| {});
    // Frozen dropout off: every frozen op fused. On: the fused layers draw BERT's three dropouts
    // from the same RNG in the same order as the Candle layers, so the step is the same too.
    let mut losses = Vec::new();
    for frozen_dropout in [false, true] {
        let (l_plain, g_plain) = loss_and_grads(false, frozen_dropout);
        let (l_fused, g_fused) = loss_and_grads(true, frozen_dropout);
        compare_step(frozen_dropout, (l_plain, &g_plain), (l_fused, &g_fused));
        losses.push(l_plain);
    }
    assert!(
        (losses[0] - losses[1]).abs() > 1e-4 * losses[0].abs(),
        "frozen dropout changes nothing: {losses:?}"
    );
}

fn compare_step(
    frozen_dropout: bool,
    (l_plain, g_plain): (f32, &[(String, Tensor)]),
    (l_fused, g_fused): (f32, &[(String, Tensor)]),
) {
    assert!(l_fused.is_finite());
    assert!(
        (l_fused - l_plain).abs() <= 1e-5 * l_plain.abs(),
        "frozen dropout {frozen_dropout}: {l_fused} vs {l_plain}"
    );
    assert_eq!(g_plain.len(), g_fused.len());
    // Attention key biases have an analytically zero gradient (float noise on both sides), so
    // errors are measured against the largest gradient entry where a tensor's own is tiny.
    let amax = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let global = g_plain.iter().map(|(_, g)| amax(g)).fold(0f32, f32::max);
    for ((k, a), (_, b)) in g_fused.iter().zip(g_plain) {
        let e = amax(&(a - b).unwrap()) / amax(b).max(1e-3 * global);
        assert!(
            e <= 1e-4,
            "frozen dropout {frozen_dropout}, {k}: gradient rel err {e:e}"
        );
        assert!(
            k.starts_with("bert.encoder.layer.2.")
                || k.starts_with("cls.")
                || k.starts_with("bert.pooler."),
            "{k}"
        );
    }
}

/// bf16 frozen layers with frozen dropout on (attention on Candle ops in bf16 with its dropout,
/// the rest fused): the stage trains, and the frozen forward is random in train mode and
/// matches the f32 fused one in eval mode.
#[test]
fn bf16_fused_frozen_layers_with_dropout_run_and_are_random_in_train_mode() {
    let cfg = config();
    let w = init_all(&cfg, &mut Rng::new(6), &Device::Cpu).unwrap();
    let x = input(&cfg);
    let mut m = BertForPreTraining::from_tensors(&cfg, &w, "init").unwrap();
    m.frozen_dropout = true;
    let n = m
        .use_fused_kernels(FusedOptions {
            dtype: DType::BF16,
            allow_cpu: true,
        })
        .unwrap();
    assert_eq!(n, 3);
    let run = |seed: u64| {
        let mut rng = Rng::new(seed);
        m.encode(&x, &mut Mode::Train(&mut rng), false)
            .unwrap()
            .last_hidden_state
    };
    let (a, b, a2) = (run(1), run(2), run(1));
    assert_eq!(a.dtype(), DType::F32);
    assert!(a
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
    assert_eq!(max_rel(&a, &a2), 0.0, "same seed, same draws");
    assert!(
        max_rel(&a, &b) > 1e-2,
        "dropout is active: {}",
        max_rel(&a, &b)
    );
    let plain = BertForPreTraining::from_tensors(&cfg, &w, "init").unwrap();
    let want = plain.encode(&x, &mut Mode::Eval, false).unwrap();
    let got = m.encode(&x, &mut Mode::Eval, false).unwrap();
    assert!(max_rel(&got.last_hidden_state, &want.last_hidden_state) <= 3e-2);
}

/// `encode_frozen` (bench's frozen-forward timing) runs exactly the forward-only part of a
/// stage: the embeddings and the frozen layers below the first trainable one.
#[test]
fn encode_frozen_is_the_forward_only_part_of_a_stage() {
    let cfg = config();
    let w = init_all(&cfg, &mut Rng::new(7), &Device::Cpu).unwrap();
    let params = Params::from_tensors(&w).unwrap();
    let spec = two_stage_spec;
    let x = input(&cfg);
    let stages = plan(&spec(false)).unwrap();
    let (model, _) = stage_model(&cfg, &params, &stages[1]).unwrap(); // layers 0-1 frozen
    let all = model.encode(&x, &mut Mode::Eval, true).unwrap();
    let frozen = model.encode_frozen(&x, &mut Mode::Eval).unwrap().unwrap();
    assert_eq!(max_rel(&frozen, &all.hidden_states[2]), 0.0);
    // nothing is forward-only in the first stage (everything trains) or with trainable
    // embeddings (every layer is on the backward path)
    let (first, _) = stage_model(&cfg, &params, &stages[0]).unwrap();
    assert!(first.encode_frozen(&x, &mut Mode::Eval).unwrap().is_none());
    let stages = plan(&spec(true)).unwrap();
    let (mut emb, _) = stage_model(&cfg, &params, &stages[1]).unwrap();
    assert!(emb.encode_frozen(&x, &mut Mode::Eval).unwrap().is_none());
    // ... and then no layer is prepared for the fused kernels either (none would run fused)
    let opts = FusedOptions {
        dtype: DType::F32,
        allow_cpu: true,
    };
    assert_eq!(emb.use_fused_kernels(opts).unwrap(), 0);
}

/// Attention-probability dropout inside the attention op (`AttentionDropout::Kernel`: on the
/// CPU the op's CPU side, on a GPU the `_dropout` kernels) against the same Philox draw applied
/// through Candle ops (`Reference`): one MSLT step with frozen dropout on gives the same loss and
/// gradients; and it is a different draw from the Candle path's (`Candle`, the default on the
/// CPU).
#[test]
fn attention_dropout_in_the_kernel_matches_its_reference_in_a_stage_step() {
    use mslt_core::model::AttentionDropout;
    let case = step_case(15, |k| (k % 3 == 1).then_some(11 + k), [1, 0]);
    let step =
        |a: AttentionDropout| stage_step(&case, 31, true, true, |m| m.set_attention_dropout(a));
    let (l_ref, g_ref) = step(AttentionDropout::Reference);
    let (l_kernel, g_kernel) = step(AttentionDropout::Kernel);
    compare_step(true, (l_ref, &g_ref), (l_kernel, &g_kernel));
    let (l_candle, _) = step(AttentionDropout::Candle);
    assert!(
        (l_candle - l_kernel).abs() > 1e-5 * l_candle.abs(),
        "the Philox draw is not the Candle path's: {l_candle} vs {l_kernel}"
    );
    // MSLT_ATTENTION_DROPOUT is unset in tests: the default is the kernel on a CUDA device only
    assert_eq!(
        (
            AttentionDropout::from_env(false),
            AttentionDropout::from_env(true)
        ),
        (Ok(AttentionDropout::Candle), Ok(AttentionDropout::Kernel)),
    );
}

/// Records what the layer's probes report.
struct Recorder(Vec<(&'static str, mslt_core::model::OpCost)>);

impl mslt_core::model::OpProbe for Recorder {
    fn done(&mut self, op: &'static str, cost: mslt_core::model::OpCost) -> mslt_core::Result<()> {
        self.0.push((op, cost));
        Ok(())
    }
}

/// `bench --layer-ops` takes a frozen layer apart through probes in the layer's own forward: on
/// both paths the matrix products and attention the probes report add up to the bench's cost
/// model of a layer (2 B T (4 C^2 + 2 C I) + 4 B T^2 C), the probed forward is the forward, and
/// the report has one row per op with shares summing to 1.
#[test]
fn layer_ops_probes_cover_the_layer_and_match_the_cost_model() {
    use mslt_core::bench::{layer_ops, BenchConfig, LayerPath};
    use mslt_core::model::OpCost;
    let cfg = config();
    let dev = Device::Cpu;
    let w = init_all(&cfg, &mut Rng::new(4), &dev).unwrap();
    let mut m = BertForPreTraining::from_tensors(&cfg, &w, "init").unwrap();
    let n = m
        .use_fused_kernels(FusedOptions {
            dtype: DType::F32,
            allow_cpu: true,
        })
        .unwrap();
    assert_eq!(n, 3);
    let (b, t, c, i) = (2, 16, cfg.hidden_size, cfg.intermediate_size);
    let x = Tensor::randn(0f32, 1f32, (b, t, c), &dev).unwrap(); // (B, T, C)
    let mask = Tensor::zeros((b, 1, 1, t), DType::F32, &dev).unwrap();
    let mask2d = mask.flatten_from(1).unwrap(); // (B, T)
    let layer = &m.layers[0];
    let f = layer.fused.as_ref().unwrap();
    let flops = |r: &Recorder| -> f64 {
        r.0.iter()
            .map(|(_, c)| match c {
                OpCost::Flops(n) => *n,
                OpCost::Bytes(_) => 0.0,
            })
            .sum()
    };
    let (bf, tf, cf, inf) = (b as f64, t as f64, c as f64, i as f64);
    let model = 2.0 * bf * tf * (4.0 * cf * cf + 2.0 * cf * inf) + 4.0 * bf * tf * tf * cf;
    for dropout in [false, true] {
        // the Candle layer, probed and not (same draws: same seed)
        let mut rec = Recorder(Vec::new());
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        let (mut m1, mut m2) = if dropout {
            (Mode::Train(&mut r1), Mode::Train(&mut r2))
        } else {
            (Mode::Eval, Mode::Eval)
        };
        let y = layer.forward_probed(&x, &mask, &mut m1, &mut rec).unwrap();
        let y0 = layer.forward(&x, &mask, &mut m2).unwrap();
        assert_eq!(max_rel(&y, &y0), 0.0);
        assert_eq!((flops(&rec) - model).abs(), 0.0, "{:?}", rec.0);
        assert_eq!(rec.0.len(), if dropout { 10 } else { 8 }, "{:?}", rec.0);
        // the fused layer
        let mut rec = Recorder(Vec::new());
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        let y = if dropout {
            let y0 = f
                .forward_dropout(&x, &mask, &mask2d, &mut Mode::Train(&mut r2))
                .unwrap();
            let y = f
                .forward_dropout_probed(&x, &mask, &mask2d, &mut Mode::Train(&mut r1), &mut rec)
                .unwrap();
            assert_eq!(max_rel(&y, &y0), 0.0);
            y
        } else {
            let y = f.forward_probed(&x, &mask2d, &mut rec).unwrap();
            assert_eq!(max_rel(&y, &f.forward(&x, &mask2d).unwrap()), 0.0);
            y
        };
        assert_eq!(y.dims(), &[b, t, c]);
        assert_eq!((flops(&rec) - model).abs(), 0.0, "{:?}", rec.0);
        let names: Vec<_> = rec.0.iter().map(|(o, _)| *o).collect();
        assert_eq!(names.first(), Some(&"Q|K|V matmul"), "{names:?}");
        assert_eq!(names.last(), Some(&"output add + LayerNorm"), "{names:?}");
        assert_eq!(
            names.iter().filter(|o| o.contains("dropout")).count(),
            if dropout { 3 } else { 0 }, // the attention (on the CPU: Candle ops) and 2 outputs
            "{names:?}"
        );
        // the report
        for path in [LayerPath::Candle, LayerPath::Fused] {
            let bc = BenchConfig {
                heap: None,
                model: &cfg,
                stages: &[],
                batch_size: b,
                seq_len: t,
                warmup: 1,
                repeats: 2,
                device: &dev,
                frozen_dropout: dropout,
                kernels: mslt_core::Kernels::Fused,
                frozen_dtype: DType::F32,
                matmul_precision: "f32",
                optimizer: Default::default(),
            };
            assert_eq!(
                LayerPath::of(&bc),
                LayerPath::Candle,
                "the CPU runs the plain layer"
            );
            let r = layer_ops(&bc, path).unwrap();
            assert_eq!(r.path, path);
            assert_eq!(r.fused_layer.is_some(), path == LayerPath::Fused);
            let want = match (path, dropout) {
                (LayerPath::Candle, false) => 8,
                (LayerPath::Candle, true) => 10,
                (LayerPath::Fused, false) => 11,
                (LayerPath::Fused, true) => 14,
            };
            assert_eq!(r.ops.len(), want, "{path:?} dropout {dropout}");
            let share: f64 = r.ops.iter().map(|o| o.share).sum();
            assert!((share - 1.0).abs() < 1e-9, "{share}");
            assert!(r
                .ops
                .iter()
                .all(|o| o.time.median_ms > 0.0 && o.tflops.is_some() != o.gb_per_s.is_some()));
            let table = mslt_core::bench::layer_ops_table(&r);
            assert!(table.contains("FFN down"), "{table}");
        }
    }
}
