//! Where a training step's time goes, per stage of a schedule and for the full model: forward,
//! backward and optimizer time (median and spread over repeats after warm-up), tokens/s, peak
//! memory, FLOPs from a cost model, MFU against a measured matmul rate, and the measured speedup
//! over `full` beside the cost model's ideal one.
//!
//! Cost model (forward FLOPs; backward = 2x forward for the layers and heads that train; frozen
//! layers run forward only):
//! - one encoder layer on B x T tokens: `2 B T (4 C^2 + 2 C I) + 4 B T^2 C` (projections, FFN,
//!   QK^T and PV);
//! - the MLM head on M masked rows: `2 M C^2 + 2 M C V` (transform + decoder), NSP/pooler
//!   `2 B C^2` (negligible); the heads always train (3x), except that a tied decoder's weight
//!   gradient (`2 M C V`) is needed only when the word embeddings train (an untied one always
//!   trains);
//! - embeddings, LayerNorm, softmax, GELU and the optimizer are not counted (memory-bound).

use crate::config::BertConfig;
use crate::error::Result;
use crate::loss::MlmTargets;
use crate::nn::Mode;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use crate::train::stage_model;
use crate::train::stages::Stage;
use crate::weights::{init_all, Params};
use crate::BertInput;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Timing {
    fn from(mut xs: Vec<f64>) -> Self {
        xs.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let n = xs.len();
        let median = if n % 2 == 1 {
            xs[n / 2]
        } else {
            0.5 * (xs[n / 2 - 1] + xs[n / 2])
        };
        Self {
            median_ms: median * 1e3,
            min_ms: xs[0] * 1e3,
            max_ms: xs[n - 1] * 1e3,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub name: String,
    /// f32 gradient bytes a data-parallel step would all-reduce (the trainable parameters).
    pub allreduce_bytes: u64,
    /// Frozen layers that ran on the fused kernels.
    pub fused_layers: usize,
    pub depth: usize,
    pub trainable_layers: usize,
    pub train_embeddings: bool,
    /// steps of this stage in the schedule (0 for the `full` reference row)
    pub schedule_steps: u64,
    pub forward: Timing,
    /// The forward-only part (embeddings and frozen layers) run alone, timed apart from the
    /// step: how much of `forward` the frozen layers take (None: nothing is forward-only).
    pub frozen_forward: Option<Timing>,
    pub backward: Timing,
    pub optimizer: Timing,
    pub step: Timing,
    pub tokens_per_s: f64,
    /// cost-model FLOPs of one training step
    pub flops: f64,
    /// flops / median step time / matmul rate
    pub mfu: f64,
    /// host heap a training step needs beyond the model and optimizer state: peak allocated
    /// bytes during the timed steps minus the bytes allocated before them (CPU with a heap
    /// probe; None otherwise)
    pub step_peak_bytes: Option<u64>,
    /// full step time / this step time (measured)
    pub speedup: f64,
    /// full step FLOPs / this step FLOPs (cost model)
    pub ideal_speedup: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub threads: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub masked_rows: usize,
    /// measured f32 matmul rate at `matmul_precision`, GFLOP/s (the MFU denominator)
    pub matmul_gflops: f64,
    /// f32 matrix products: f32 or tf32 (CUDA tensor cores; no effect on the CPU)
    pub matmul_precision: String,
    /// adamw or lamb: the update the `opt ms` column times
    pub optimizer: String,
    pub rows: Vec<BenchRow>,
    /// sum over stages of steps x step time, vs the same steps at the full model's step time
    pub schedule_speedup: f64,
    pub schedule_ideal_speedup: f64,
    pub communication: &'static str,
    /// Frozen-layer settings: kernels, dtype, dropout.
    pub frozen: String,
    /// The CUDA memory pool's policy as the driver reports it (`retain` freed memory,
    /// `release` it at synchronisations, or the threshold in bytes; see `MSLT_CUDA_POOL`);
    /// absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_pool: Option<String>,
}

/// Counts the host heap (the binary's global allocator implements it).
pub trait HeapProbe {
    /// Bytes allocated now.
    fn current(&self) -> u64;
    /// Highest `current()` since the last `reset_peak`.
    fn peak(&self) -> u64;
    fn reset_peak(&self);
}

pub struct BenchConfig<'a> {
    /// Heap accounting for the memory column (CPU only).
    pub heap: Option<&'a dyn HeapProbe>,
    pub model: &'a BertConfig,
    pub stages: &'a [Stage],
    pub batch_size: usize,
    pub seq_len: usize,
    pub warmup: usize,
    pub repeats: usize,
    pub device: &'a Device,
    /// Dropout in the frozen layers (off: every frozen op fused; on: attention on Candle ops).
    pub frozen_dropout: bool,
    pub kernels: crate::Kernels,
    pub frozen_dtype: candle_core::DType,
    /// f32 matrix products: f32 or tf32 (see [`crate::set_matmul_precision`]).
    pub matmul_precision: &'a str,
    /// The optimizer the step rows time.
    pub optimizer: crate::optim::Algorithm,
}

fn layer_flops(c: f64, i: f64, b: f64, t: f64) -> f64 {
    2.0 * b * t * (4.0 * c * c + 2.0 * c * i) + 4.0 * b * t * t * c
}

/// Cost-model FLOPs of one training step of `stage`.
pub fn step_flops(cfg: &BertConfig, stage: &Stage, b: usize, t: usize, m: usize) -> f64 {
    let (c, i, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let l = layer_flops(c, i, b as f64, t as f64);
    let frozen = stage.train_from_layer as f64;
    let trained = (stage.depth - stage.train_from_layer) as f64;
    let (m, b) = (m as f64, b as f64);
    let transform = 2.0 * m * c * c + 2.0 * b * c * c;
    let decoder = 2.0 * m * c * v;
    let decoder_passes = if stage.train_embeddings || !cfg.tie_word_embeddings {
        3.0
    } else {
        2.0
    };
    frozen * l + 3.0 * (trained * l + transform) + decoder_passes * decoder
}

/// Cost-model FLOPs of one inference forward of the whole model (MLM head on `m` rows).
pub fn forward_flops(cfg: &BertConfig, b: usize, t: usize, m: usize) -> f64 {
    let (c, i, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let l = layer_flops(c, i, b as f64, t as f64);
    let (m, b) = (m as f64, b as f64);
    cfg.num_hidden_layers as f64 * l + 2.0 * m * c * c + 2.0 * b * c * c + 2.0 * m * c * v
}

/// f32 gradient bytes a data-parallel step all-reduces in `stage`: its trainable parameters only
/// (frozen layers and, unless they train, the embeddings with the tied decoder are not reduced).
pub fn allreduce_bytes(cfg: &BertConfig, stage: &Stage) -> u64 {
    let mut c = cfg.clone();
    c.num_hidden_layers = stage.depth;
    crate::model::parameter_shapes(&c, crate::model::Heads::ALL)
        .iter()
        .filter(|(n, _)| stage.trains(n))
        .map(|(_, s)| 4 * s.iter().product::<usize>() as u64)
        .sum()
}

/// Ring all-reduce time of `bytes` over `n` ranks on links of `gbit_per_s`:
/// 2 (n - 1) / n x bytes / bandwidth (latency terms ignored).
pub fn ring_allreduce_s(bytes: u64, n: usize, gbit_per_s: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    2.0 * (n - 1) as f64 / n as f64 * bytes as f64 / (gbit_per_s * 1e9 / 8.0)
}

/// Projected data-parallel step time at `gpus` ranks for each link bandwidth: each row's measured
/// step (one rank's batch, this device) plus its ring all-reduce, not overlapped; speedup of each
/// stage against `full` at the same scale. A cost model, not a measurement.
pub fn projection_table(r: &BenchReport, gpus: &[usize], links: &[f64]) -> String {
    let mut s = String::from(
        "\ndata-parallel projection (measured step on this device + ring all-reduce of the trainable f32 gradients, no overlap):\n",
    );
    s.push_str(&format!(
        "{:<18} {:>10} {:>6} {:>9} {:>10} {:>10} {:>10} {:>9}\n",
        "config", "grad MB", "GPUs", "Gbit/s", "step ms", "comm ms", "total ms", "vs full"
    ));
    let rows: Vec<&BenchRow> = r.rows.iter().filter(|x| x.name != "forward-only").collect();
    for &n in gpus {
        for &g in links {
            let total =
                |x: &BenchRow| x.step.median_ms + 1e3 * ring_allreduce_s(x.allreduce_bytes, n, g);
            let full = rows.iter().find(|x| x.name == "full").map(|x| total(x));
            for x in &rows {
                let comm = 1e3 * ring_allreduce_s(x.allreduce_bytes, n, g);
                s.push_str(&format!(
                    "{:<18} {:>10.1} {:>6} {:>9.0} {:>10.1} {:>10.1} {:>10.1} {:>9}\n",
                    x.name,
                    x.allreduce_bytes as f64 / 1048576.0,
                    n,
                    g,
                    x.step.median_ms,
                    comm,
                    total(x),
                    full.map(|f| format!("{:.2}", f / total(x)))
                        .unwrap_or_default()
                ));
            }
        }
    }
    s
}

fn sync(d: &Device) -> Result<()> {
    Ok(d.synchronize()?)
}

/// Runs `pass(it)` `bc.warmup` times untimed, then `bc.repeats` times timed, the device
/// synchronised before each pass and after it: (the passes' times, the host's times until each
/// pass returned, i.e. until every op was issued; on the CPU the two are one).
fn time_passes<R>(
    bc: &BenchConfig,
    mut pass: impl FnMut(usize) -> Result<R>,
) -> Result<(Timing, Timing)> {
    let (mut ts, mut issue) = (Vec::new(), Vec::new());
    for it in 0..bc.warmup + bc.repeats {
        sync(bc.device)?;
        let t0 = Instant::now();
        let y = pass(it)?;
        let t_issue = t0.elapsed().as_secs_f64();
        sync(bc.device)?;
        if it >= bc.warmup {
            ts.push(t0.elapsed().as_secs_f64());
            issue.push(t_issue);
        }
        drop(y);
    }
    Ok((Timing::from(ts), Timing::from(issue)))
}

/// Measured f32 matmul rate (GFLOP/s) on `device`: median of 5 products of 1024^3.
pub fn matmul_gflops(device: &Device) -> Result<f64> {
    let n = 1024;
    let mut rng = Rng::new(9);
    let a = Tensor::from_vec(rng.normal_vec(n * n, 0.0, 1.0), (n, n), device)?;
    let b = Tensor::from_vec(rng.normal_vec(n * n, 0.0, 1.0), (n, n), device)?;
    let _ = a.matmul(&b)?;
    sync(device)?;
    let mut ts = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let _ = a.matmul(&b)?;
        sync(device)?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    ts.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    Ok(2.0 * (n as f64).powi(3) / ts[2] / 1e9)
}

/// A random batch: full-length sequences, 15% of the positions predicted, NSP labels.
fn batch(
    cfg: &BertConfig,
    b: usize,
    t: usize,
    device: &Device,
) -> Result<(BertInput, MlmTargets, Tensor)> {
    let mut rng = Rng::new(3);
    let ids: Vec<i64> = (0..b * t)
        .map(|_| 1000 + rng.below(cfg.vocab_size as u64 - 1000) as i64)
        .collect();
    let tt: Vec<i64> = (0..b * t).map(|k| ((k % t) >= t / 2) as i64).collect();
    // Exactly 15% of the non-[CLS] positions predicted (round(0.15 B (T - 1)), as
    // tools/torch_baseline.py does), drawn without replacement: equal MLM-head work on both sides.
    let mut cand: Vec<usize> = (0..b * t).filter(|k| k % t != 0).collect();
    let m = (0.15 * cand.len() as f64).round() as usize;
    for i in 0..m {
        let j = i + rng.below((cand.len() - i) as u64) as usize;
        cand.swap(i, j);
    }
    let mut labels = vec![-100i64; b * t];
    for &k in &cand[..m] {
        labels[k] = ids[k];
    }
    let input = BertInput::from_host(cfg, (b, t), &ids, None, Some(&tt), device)?;
    let mlm = MlmTargets::from_labels(&labels, cfg.vocab_size, device)?;
    let nsp = Tensor::from_vec((0..b as u32).map(|i| i % 2).collect::<Vec<_>>(), b, device)?;
    Ok((input, mlm, nsp))
}

/// The dropout randomness of repeat `it`: a host RNG, and the device generator seeded alike
/// (dropout masks are drawn on a GPU), so every timed pass draws the same masks.
fn repeat_rng(dev: &Device, it: usize) -> Result<Rng> {
    if !dev.is_cpu() {
        dev.set_seed(it as u64)?;
    }
    Ok(Rng::new(it as u64))
}

fn bench_stage(bc: &BenchConfig, stage: &Stage, name: &str) -> Result<(BenchRow, usize)> {
    let mut cfg = bc.model.clone();
    cfg.num_hidden_layers = stage.depth;
    let mut rng = Rng::new(1);
    let params = Params::from_tensors(&init_all(&cfg, &mut rng, bc.device)?)?;
    let (mut model, named) = stage_model(&cfg, &params, stage)?;
    model.frozen_dropout = bc.frozen_dropout;
    let fused = if bc.kernels == crate::Kernels::Fused {
        model.use_fused_kernels(crate::model::FusedOptions {
            dtype: bc.frozen_dtype,
            allow_cpu: false,
        })?
    } else {
        0
    };
    let mut opt = Optimizer::new(
        named.clone(),
        OptimizerConfig {
            algorithm: bc.optimizer,
            ..Default::default()
        },
    )?;
    let (input, mlm, nsp) = batch(&cfg, bc.batch_size, bc.seq_len, bc.device)?;
    let (mut f, mut bw, mut o, mut st) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let heap = bc.heap.filter(|_| bc.device.is_cpu());
    let base = heap.map(|h| {
        h.reset_peak();
        h.current()
    });
    for it in 0..bc.warmup + bc.repeats {
        let mut drng = repeat_rng(bc.device, it)?;
        sync(bc.device)?;
        let t0 = Instant::now();
        let l = model.pretraining_loss(&input, &mlm, Some(&nsp), &mut Mode::Train(&mut drng))?;
        let _ = l.loss.to_scalar::<f32>()?; // forces the forward on lazy devices
        sync(bc.device)?;
        let t1 = Instant::now();
        let store = l.loss.backward()?;
        let grads: Vec<Option<Tensor>> = named
            .iter()
            .map(|(_, v)| store.get(v.as_tensor()).cloned())
            .collect();
        drop(store);
        sync(bc.device)?;
        let t2 = Instant::now();
        opt.step_grads(&grads)?;
        sync(bc.device)?;
        let t3 = Instant::now();
        if it >= bc.warmup {
            f.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
            o.push((t3 - t2).as_secs_f64());
            st.push((t3 - t0).as_secs_f64());
        }
    }
    let step_peak = heap.zip(base).map(|(h, b)| h.peak().saturating_sub(b));
    // the forward-only part alone, same modes and random streams as in the step
    let mut fz = Vec::new();
    for it in 0..bc.warmup + bc.repeats {
        let mut drng = repeat_rng(bc.device, it)?;
        sync(bc.device)?;
        let t0 = Instant::now();
        let Some(h) = model.encode_frozen(&input, &mut Mode::Train(&mut drng))? else {
            break;
        };
        drop(h);
        sync(bc.device)?;
        if it >= bc.warmup {
            fz.push(t0.elapsed().as_secs_f64());
        }
    }
    let frozen_forward = (!fz.is_empty()).then(|| Timing::from(fz));
    let step = Timing::from(st);
    let tokens = (bc.batch_size * bc.seq_len) as f64;
    let flops = step_flops(bc.model, stage, bc.batch_size, bc.seq_len, mlm.len());
    Ok((
        BenchRow {
            name: name.into(),
            allreduce_bytes: allreduce_bytes(bc.model, stage),
            fused_layers: fused,
            depth: stage.depth,
            trainable_layers: stage.depth - stage.train_from_layer,
            train_embeddings: stage.train_embeddings,
            schedule_steps: 0,
            forward: Timing::from(f),
            frozen_forward,
            backward: Timing::from(bw),
            optimizer: Timing::from(o),
            tokens_per_s: tokens / (step.median_ms / 1e3),
            flops,
            mfu: 0.0,
            step_peak_bytes: step_peak,
            step,
            speedup: 1.0,
            ideal_speedup: 1.0,
        },
        mlm.len(),
    ))
}

/// Inference forward of the whole model (eval mode, nothing tracked: every layer on the
/// no-backward path, fused kernels on CUDA when `--kernels fused`), MLM head on the masked rows.
fn bench_forward(bc: &BenchConfig) -> Result<BenchRow> {
    let cfg = bc.model.clone();
    let mut rng = Rng::new(1);
    let w = init_all(&cfg, &mut rng, bc.device)?;
    let mut model = crate::BertForPreTraining::from_tensors(&cfg, &w, "init")?;
    let fused = if bc.kernels == crate::Kernels::Fused {
        model.use_fused_kernels(crate::model::FusedOptions {
            dtype: bc.frozen_dtype,
            allow_cpu: false,
        })?
    } else {
        0
    };
    let (input, mlm, nsp) = batch(&cfg, bc.batch_size, bc.seq_len, bc.device)?;
    let (step, _) = time_passes(bc, |_| {
        let l = model.pretraining_loss(&input, &mlm, Some(&nsp), &mut Mode::Eval)?;
        Ok(l.loss.to_scalar::<f32>()?)
    })?;
    let zero = Timing::from(vec![0.0]);
    Ok(BenchRow {
        name: "forward-only".into(),
        allreduce_bytes: 0,
        fused_layers: fused,
        depth: cfg.num_hidden_layers,
        trainable_layers: 0,
        train_embeddings: false,
        schedule_steps: 0,
        forward: step.clone(),
        frozen_forward: None,
        backward: zero.clone(),
        optimizer: zero,
        tokens_per_s: (bc.batch_size * bc.seq_len) as f64 / (step.median_ms / 1e3),
        flops: forward_flops(&cfg, bc.batch_size, bc.seq_len, mlm.len()),
        mfu: 0.0,
        step_peak_bytes: None,
        step,
        speedup: 1.0,
        ideal_speedup: 1.0,
    })
}

/// Benchmarks the full model and every stage of `stages`.
pub fn run(bc: &BenchConfig) -> Result<BenchReport> {
    if bc.repeats == 0 {
        return Err(crate::Error::Input("--repeats must be at least 1".into()));
    }
    crate::set_matmul_precision(bc.matmul_precision, bc.device)?;
    let rate = matmul_gflops(bc.device)?;
    let full = Stage {
        index: 0,
        depth: bc.model.num_hidden_layers,
        start: 0,
        steps: 0,
        train_from_layer: 0,
        train_embeddings: true,
        joint: false,
    };
    let (mut full_row, m) = bench_stage(bc, &full, "full")?;
    let mut rows = Vec::new();
    for s in bc.stages {
        let name = if s.joint {
            format!("stage {} (joint)", s.index)
        } else {
            format!("stage {}", s.index)
        };
        let (mut r, _) = bench_stage(bc, s, &name)?;
        r.schedule_steps = s.steps;
        rows.push(r);
    }
    let fstep = full_row.step.median_ms;
    let fflops = full_row.flops;
    full_row.mfu = fflops / (fstep / 1e3) / (rate * 1e9);
    for r in &mut rows {
        r.speedup = fstep / r.step.median_ms;
        r.ideal_speedup = fflops / r.flops;
        r.mfu = r.flops / (r.step.median_ms / 1e3) / (rate * 1e9);
    }
    let mut fwd = bench_forward(bc)?;
    fwd.speedup = fstep / fwd.step.median_ms;
    fwd.ideal_speedup = fflops / fwd.flops;
    fwd.mfu = fwd.flops / (fwd.step.median_ms / 1e3) / (rate * 1e9);
    let total: u64 = rows.iter().map(|r| r.schedule_steps).sum();
    let sched_time: f64 = rows
        .iter()
        .map(|r| r.schedule_steps as f64 * r.step.median_ms)
        .sum();
    let sched_flops: f64 = rows.iter().map(|r| r.schedule_steps as f64 * r.flops).sum();
    let mut all = vec![full_row];
    all.extend(rows);
    all.push(fwd);
    Ok(BenchReport {
        device: format!("{:?}", bc.device),
        threads: candle_core::utils::get_num_threads(),
        batch_size: bc.batch_size,
        seq_len: bc.seq_len,
        masked_rows: m,
        matmul_gflops: rate,
        matmul_precision: bc.matmul_precision.to_string(),
        optimizer: {
            let env = std::env::var("MSLT_OPTIMIZER_KERNEL").ok();
            let fused = crate::optim::fused_optimizer_kernel(env.as_deref())?
                && bc.optimizer == crate::optim::Algorithm::AdamW
                && bc.device.is_cuda();
            format!(
                "{}{}",
                bc.optimizer,
                if fused { " (fused kernel)" } else { "" }
            )
        },
        schedule_speedup: total as f64 * fstep / sched_time.max(1e-12),
        schedule_ideal_speedup: total as f64 * fflops / sched_flops.max(1e-12),
        rows: all,
        communication: "none: one process on one device (data-parallel cost: --project-gpus)",
        frozen: format!(
            "kernels {}, frozen dtype {:?}, frozen dropout {}{}",
            bc.kernels,
            bc.frozen_dtype,
            if bc.frozen_dropout { "on" } else { "off" },
            attention_dropout_note(bc)
        ),
        cuda_pool: cuda_pool_policy(bc.device)?,
    })
}

/// Where the fused frozen layers apply their attention-probability dropout, when they do (frozen
/// dropout on, fused kernels): ", attention dropout kernel" or "... candle"
/// ([`crate::model::AttentionDropout`], from `MSLT_ATTENTION_DROPOUT` and the device).
fn attention_dropout_note(bc: &BenchConfig<'_>) -> &'static str {
    use crate::model::AttentionDropout;
    if !bc.frozen_dropout || bc.kernels != crate::Kernels::Fused {
        return "";
    }
    match AttentionDropout::from_env(bc.device.is_cuda()) {
        Ok(AttentionDropout::Kernel) => ", attention dropout kernel",
        Ok(_) => ", attention dropout candle",
        Err(_) => "",
    }
}

/// The device's memory pool release threshold as a policy name (None on the CPU).
fn cuda_pool_policy(dev: &Device) -> Result<Option<String>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return Ok(
            mslt_kernels::cuda::pool_release_threshold(d)?.map(|t| match t {
                u64::MAX => "retain".to_string(),
                0 => "release".to_string(),
                t => format!("release threshold {t} bytes"),
            }),
        );
    }
    let _ = dev;
    Ok(None)
}

/// The report as a text table.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "device {} | threads {} | batch {} x seq {} | {} masked rows | matmul {:.1} GFLOP/s ({}) | optimizer {}\n",
        r.device,
        r.threads,
        r.batch_size,
        r.seq_len,
        r.masked_rows,
        r.matmul_gflops,
        r.matmul_precision,
        r.optimizer
    );
    if let Some(p) = &r.cuda_pool {
        s.push_str(&format!(
            "CUDA memory pool: {p} freed memory (MSLT_CUDA_POOL)\n"
        ));
    }
    s.push_str(&format!(
        "{:<18} {:>5} {:>5} {:>4} {:>6} {:>9} {:>9} {:>9} {:>8} {:>20} {:>8} {:>7} {:>5} {:>8} {:>7} {:>8}\n",
        "config", "depth", "train", "emb", "steps", "fwd ms", "frozen ms", "bwd ms", "opt ms", "step ms (min-max)", "tok/s", "GFLOP", "MFU", "step MB", "speedup", "ideal"
    ));
    for x in &r.rows {
        s.push_str(&format!(
            "{:<18} {:>5} {:>5} {:>4} {:>6} {:>9.1} {:>9} {:>9.1} {:>8.1} {:>8.1} ({:>5.0}-{:>5.0}) {:>8.0} {:>7.1} {:>5.2} {:>8} {:>7.2} {:>8.2}\n",
            x.name,
            x.depth,
            x.trainable_layers,
            if x.train_embeddings { "yes" } else { "no" },
            x.schedule_steps,
            x.forward.median_ms,
            x.frozen_forward
                .as_ref()
                .map(|t| format!("{:.1}", t.median_ms))
                .unwrap_or_else(|| "-".into()),
            x.backward.median_ms,
            x.optimizer.median_ms,
            x.step.median_ms,
            x.step.min_ms,
            x.step.max_ms,
            x.tokens_per_s,
            x.flops / 1e9,
            x.mfu,
            x.step_peak_bytes.map(|b| format!("{:.0}", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into()),
            x.speedup,
            x.ideal_speedup
        ));
    }
    s.push_str(&format!(
        "schedule (stages weighted by their steps) vs full at equal steps: speedup {:.2} measured, {:.2} ideal (cost model)\n",
        r.schedule_speedup, r.schedule_ideal_speedup
    ));
    s.push_str(
        "frozen ms: the embeddings and frozen layers run alone, timed apart from the step (part of fwd ms)\n",
    );
    s.push_str(&format!("communication: {}\n", r.communication));
    s.push_str(&format!(
        "frozen layers: {} (fused layers per row: {:?})\n",
        r.frozen,
        r.rows.iter().map(|x| x.fused_layers).collect::<Vec<_>>()
    ));
    s
}

#[cfg(test)]
mod projection_tests {
    use super::*;

    #[test]
    fn an_untied_decoder_adds_its_weight_gradient_to_every_stage() {
        let tied = BertConfig::preset("mini").unwrap();
        let mut untied = tied.clone();
        untied.tie_word_embeddings = false;
        let (b, t, m) = (16, 128, 300);
        let stage = |from, emb| Stage {
            index: 0,
            depth: 4,
            start: 0,
            steps: 0,
            train_from_layer: from,
            train_embeddings: emb,
            joint: false,
        };
        let dec = 2.0 * m as f64 * 256.0 * 30522.0; // 2 M C V
                                                    // frozen embeddings: a tied decoder skips its weight gradient, an untied one does not
        let d = step_flops(&untied, &stage(3, false), b, t, m)
            - step_flops(&tied, &stage(3, false), b, t, m);
        assert!((d - dec).abs() < 1e-6 * dec, "{d} vs {dec}");
        // trainable embeddings: both compute it
        assert_eq!(
            step_flops(&untied, &stage(0, true), b, t, m),
            step_flops(&tied, &stage(0, true), b, t, m)
        );
        // and the all-reduce carries the decoder's V x C weight
        assert_eq!(
            allreduce_bytes(&untied, &stage(3, false)) - allreduce_bytes(&tied, &stage(3, false)),
            4 * 30522 * 256
        );
    }

    #[test]
    fn allreduce_counts_only_trainable_parameters() {
        let cfg = BertConfig::preset("mini").unwrap(); // 4 x 256, I 1024, V 30522
        let (c, i, v) = (256u64, 1024u64, 30522u64);
        let layer = 4 * (c * c + c) + 2 * (c * i) + i + c + 4 * c; // 4 linears C x C, FFN, 2 LNs
        let heads = (c * c + c) + (c * c + c + 2 * c + v) + (2 * c + 2); // pooler, MLM head, NSP
        let emb = v * c + 512 * c + 2 * c + 2 * c;
        let stage = |depth, from, emb| Stage {
            index: 0,
            depth,
            start: 0,
            steps: 0,
            train_from_layer: from,
            train_embeddings: emb,
            joint: false,
        };
        assert_eq!(
            allreduce_bytes(&cfg, &stage(4, 0, true)),
            4 * (emb + 4 * layer + heads)
        );
        // MSLT stage: bottom 3 layers and the embeddings (with the tied decoder) frozen
        assert_eq!(
            allreduce_bytes(&cfg, &stage(4, 3, false)),
            4 * (layer + heads)
        );
        // ring: 2 (n - 1) / n x bytes / bandwidth; 1 GB over 8 ranks at 100 Gbit/s = 0.14 s
        let t = ring_allreduce_s(1_000_000_000, 8, 100.0);
        assert!((t - 2.0 * 7.0 / 8.0 * 1e9 / 12.5e9).abs() < 1e-12);
        assert_eq!(ring_allreduce_s(123, 1, 100.0), 0.0);
    }
}

/// One op of a frozen layer timed alone (`bench --layer-ops`): the device synchronised before and
/// after it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerOpRow {
    pub op: String,
    pub time: Timing,
    /// this op's median / the sum of every op's median
    pub share: f64,
    /// matrix products and attention (QK^T and PV)
    pub tflops: Option<f64>,
    /// memory-bound ops: the bytes they read and write at least, per second
    pub gb_per_s: Option<f64>,
}

/// Which forward of a frozen layer `bench --layer-ops` takes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPath {
    /// [`crate::model::FusedLayer`]: the fused kernels, in the frozen dtype
    Fused,
    /// [`crate::model::BertLayer`]: Candle ops (and this crate's CPU ops), f32
    Candle,
}

impl LayerPath {
    /// The path the model's frozen layers take under `bc`: fused on a CUDA device with
    /// `--kernels fused` (in a build with the `cuda` feature), Candle otherwise (on the CPU the
    /// frozen layers run the plain layer, whose attention, LayerNorm and GELU are this crate's
    /// CPU ops).
    pub fn of(bc: &BenchConfig) -> Self {
        if bc.kernels == crate::Kernels::Fused && bc.device.is_cuda() && mslt_kernels::CUDA_ENABLED
        {
            Self::Fused
        } else {
            Self::Candle
        }
    }
}

/// Where the time of one frozen layer goes, op by op (`bench --layer-ops`).
#[derive(Clone, Debug, Serialize)]
pub struct LayerOpsReport {
    /// the forward taken apart
    pub path: LayerPath,
    pub device: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    /// dtype of the layer taken apart (the frozen dtype on the fused path, f32 on Candle's)
    pub dtype: String,
    pub frozen_dropout: bool,
    pub ops: Vec<LayerOpRow>,
    /// the sum of the ops' medians
    pub ops_sum_ms: f64,
    /// the fused layer's forward with one synchronisation at its end (launches overlap the GPU's
    /// work, as in training); on the fused path only
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_layer: Option<Timing>,
    /// the host's time until that forward returned, every op issued: close to `fused_layer`,
    /// the layer is bound by the host's op dispatch, not by the GPU (on the CPU they are one)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_layer_issue: Option<Timing>,
    /// the plain Candle layer on the same input in f32 (what `--kernels candle` runs)
    pub candle_layer: Timing,
    /// its host time until the forward returned
    pub candle_layer_issue: Timing,
}

/// Synchronises the device at each op of the layer and times it.
struct OpTimer<'a> {
    dev: &'a Device,
    last: Instant,
    ops: Vec<(&'static str, crate::model::OpCost, f64)>,
}

impl crate::model::OpProbe for OpTimer<'_> {
    fn done(&mut self, op: &'static str, cost: crate::model::OpCost) -> Result<()> {
        sync(self.dev)?;
        let now = Instant::now();
        self.ops.push((op, cost, (now - self.last).as_secs_f64()));
        self.last = now;
        Ok(())
    }
}

/// Times each op of one frozen layer of `bc.model` (randomly initialised) on `path` (the fused
/// layer in `bc.frozen_dtype`, on the CPU through the ops' CPU side; or the plain layer in f32)
/// on a full-length batch of `bc.batch_size` x `bc.seq_len`, with BERT's dropouts when
/// `bc.frozen_dropout` (as the frozen layers run in training): `bc.warmup` untimed passes, then
/// `bc.repeats` timed ones, the device synchronised after every op. Beside it, the whole layer
/// with one synchronisation at its end: plain Candle, and fused on the fused path.
pub fn layer_ops(bc: &BenchConfig, path: LayerPath) -> Result<LayerOpsReport> {
    use crate::model::{BertForPreTraining, FusedOptions, OpCost};
    if bc.repeats == 0 {
        return Err(crate::Error::Input("--repeats must be at least 1".into()));
    }
    crate::set_matmul_precision(bc.matmul_precision, bc.device)?;
    let mut cfg = bc.model.clone();
    cfg.num_hidden_layers = 1;
    let w = init_all(&cfg, &mut Rng::new(1), bc.device)?;
    let mut model = BertForPreTraining::from_tensors(&cfg, &w, "init")?;
    let fused = model.use_fused_kernels(FusedOptions {
        dtype: bc.frozen_dtype,
        allow_cpu: true,
    })?;
    let (b, t, c) = (bc.batch_size, bc.seq_len, cfg.hidden_size);
    let layer = &model.layers[0];
    let f = match (&layer.fused, fused) {
        (Some(f), 1) => f,
        _ => {
            return Err(crate::Error::Input(format!(
                "--layer-ops: the fused kernels have no attention for head dim {} ({} / {} heads)",
                c / cfg.num_attention_heads,
                c,
                cfg.num_attention_heads
            )))
        }
    };
    let mut rng = Rng::new(2);
    let x = Tensor::from_vec(rng.normal_vec(b * t * c, 0.0, 1.0), (b, t, c), bc.device)?; // (B, T, C)
    let xf = x.to_dtype(bc.frozen_dtype)?;
    let mask2d = Tensor::zeros((b, t), candle_core::DType::F32, bc.device)?; // (B, T): no padding
    let mask = mask2d.reshape((b, 1, 1, t))?; // (B, 1, 1, T)
    let fused_pass = |it: usize, probe: &mut dyn crate::model::OpProbe| -> Result<Tensor> {
        if bc.frozen_dropout {
            let mut rng = repeat_rng(bc.device, it)?;
            let mut mode = Mode::Train(&mut rng);
            f.forward_dropout_probed(&xf, &mask, &mask2d, &mut mode, probe)
        } else {
            f.forward_probed(&xf, &mask2d, probe)
        }
    };
    let candle_pass = |it: usize, probe: &mut dyn crate::model::OpProbe| -> Result<Tensor> {
        if bc.frozen_dropout {
            let mut rng = repeat_rng(bc.device, it)?;
            layer.forward_probed(&x, &mask, &mut Mode::Train(&mut rng), probe)
        } else {
            layer.forward_probed(&x, &mask, &mut Mode::Eval, probe)
        }
    };
    let pass = |it: usize, probe: &mut dyn crate::model::OpProbe| match path {
        LayerPath::Fused => fused_pass(it, probe),
        LayerPath::Candle => candle_pass(it, probe),
    };
    // op by op
    let mut per_op: Vec<(&'static str, OpCost, Vec<f64>)> = Vec::new();
    for it in 0..bc.warmup + bc.repeats {
        sync(bc.device)?;
        let mut timer = OpTimer {
            dev: bc.device,
            last: Instant::now(),
            ops: Vec::new(),
        };
        pass(it, &mut timer)?;
        if it < bc.warmup {
            continue;
        }
        if per_op.is_empty() {
            per_op = timer
                .ops
                .iter()
                .map(|&(o, c, _)| (o, c, Vec::new()))
                .collect();
        }
        if timer.ops.len() != per_op.len() {
            return Err(crate::Error::Input(format!(
                "--layer-ops: pass {it} ran {} ops, the first {}",
                timer.ops.len(),
                per_op.len()
            )));
        }
        for (slot, (_, _, s)) in per_op.iter_mut().zip(timer.ops) {
            slot.2.push(s);
        }
    }
    // the whole layer, one synchronisation at its end
    let (fused_layer, fused_layer_issue) = match path {
        LayerPath::Fused => {
            let (t, i) = time_passes(bc, |it| fused_pass(it, &mut crate::model::NoProbe))?;
            (Some(t), Some(i))
        }
        LayerPath::Candle => (None, None),
    };
    let (candle_layer, candle_layer_issue) =
        time_passes(bc, |it| candle_pass(it, &mut crate::model::NoProbe))?;
    let timings: Vec<(&str, OpCost, Timing)> = per_op
        .into_iter()
        .map(|(o, c, s)| (o, c, Timing::from(s)))
        .collect();
    let sum: f64 = timings.iter().map(|(_, _, t)| t.median_ms).sum();
    let ops = timings
        .into_iter()
        .map(|(op, cost, time)| {
            let s = time.median_ms * 1e-3;
            let (tflops, gb_per_s) = match cost {
                OpCost::Flops(n) => (Some(n / s / 1e12), None),
                OpCost::Bytes(n) => (None, Some(n / s / 1e9)),
            };
            LayerOpRow {
                op: op.into(),
                share: time.median_ms / sum.max(1e-12),
                time,
                tflops,
                gb_per_s,
            }
        })
        .collect();
    Ok(LayerOpsReport {
        path,
        device: format!("{:?}", bc.device),
        batch_size: b,
        seq_len: t,
        hidden: c,
        intermediate: cfg.intermediate_size,
        heads: cfg.num_attention_heads,
        dtype: match path {
            LayerPath::Fused => format!("{:?}", bc.frozen_dtype).to_lowercase(),
            LayerPath::Candle => "f32".into(),
        },
        frozen_dropout: bc.frozen_dropout,
        ops,
        ops_sum_ms: sum,
        fused_layer,
        fused_layer_issue,
        candle_layer,
        candle_layer_issue,
    })
}

/// The layer-op report as a text table.
pub fn layer_ops_table(r: &LayerOpsReport) -> String {
    let mut s = format!(
        "layer ops: one frozen layer on the {} path ({} x {}, {} heads), batch {} x seq {}, {}, frozen dropout {}, {}\n",
        match r.path {
            LayerPath::Fused => "fused",
            LayerPath::Candle => "Candle",
        },
        r.hidden,
        r.intermediate,
        r.heads,
        r.batch_size,
        r.seq_len,
        r.dtype,
        if r.frozen_dropout { "on" } else { "off" },
        r.device
    );
    s += &format!(
        "{:<34} {:>10} {:>21} {:>6} {:>8} {:>8}\n",
        "op", "median ms", "(min-max)", "share", "TFLOP/s", "GB/s"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for o in &r.ops {
        s += &format!(
            "{:<34} {:>10.3} {:>21} {:>5.1}% {:>8} {:>8}\n",
            o.op,
            o.time.median_ms,
            format!("({:.3}-{:.3})", o.time.min_ms, o.time.max_ms),
            100.0 * o.share,
            opt(o.tflops, 2),
            opt(o.gb_per_s, 0),
        );
    }
    s += &format!(
        "sum of the ops {:.3} ms (each op timed alone: the device synchronised around it)\n",
        r.ops_sum_ms
    );
    let t = |x: &Timing, i: &Timing| {
        format!(
            "{:.3} ms ({:.3}-{:.3}; the host issued it in {:.3})",
            x.median_ms, x.min_ms, x.max_ms, i.median_ms
        )
    };
    s += &match (&r.fused_layer, &r.fused_layer_issue) {
        (Some(f), Some(fi)) => format!(
            "the whole layer, one synchronisation at its end: fused {}, Candle f32 {}; Candle / fused {:.2}x\n",
            t(f, fi),
            t(&r.candle_layer, &r.candle_layer_issue),
            r.candle_layer.median_ms / f.median_ms.max(1e-12)
        ),
        _ => format!(
            "the whole layer, one synchronisation at its end: {}\n",
            t(&r.candle_layer, &r.candle_layer_issue)
        ),
    };
    s
}
