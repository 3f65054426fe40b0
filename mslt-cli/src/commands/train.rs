//! `mslt-cli train`: MLM (+NSP) pre-training. Values come from `--config FILE.toml` (keys of
//! `mslt_core::train::TrainConfig`), overridden by flags.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mslt_core::dist::{Collective, Single, WorldSpec};
use mslt_core::train::{train_on, Event, TrainConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct TrainArgs {
    /// TOML file with run settings (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prepared data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Preset (tiny, mini, small, medium, base, large) or config.json.
    #[arg(long)]
    model_config: Option<String>,
    /// Start from a HF model directory or hub id.
    #[arg(long)]
    init_from: Option<String>,
    /// Run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup_frac: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// linear, cosine or constant.
    #[arg(long)]
    decay: Option<String>,
    #[arg(long)]
    min_lr_ratio: Option<f64>,
    /// adamw or lamb (LAMB: Adam moments, per-tensor trust ratio ||p|| / ||update||).
    #[arg(long)]
    optimizer: Option<String>,
    /// LAMB: apply the trust ratio to every tensor (optax, NVLAMB), not only to the
    /// weight-decayed ones (google-research BERT, apex FusedLAMB, timm).
    #[arg(long)]
    lamb_adapt_all: bool,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    clip_norm: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    eval_batches: Option<usize>,
    #[arg(long)]
    save_every: Option<u64>,
    #[arg(long)]
    keep_last: Option<usize>,
    #[arg(long)]
    log_every: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    mask_prob: Option<f64>,
    #[arg(long)]
    whole_word_masking: bool,
    /// full, stack (Progressive Stacking 1.0) or mslt (multi-stage layerwise training).
    #[arg(long)]
    schedule: Option<String>,
    /// Model depth after each stage, e.g. 3,6,9,12.
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<usize>>,
    /// Steps of each stage, e.g. 300,300,300,300 (default: equal shares).
    #[arg(long, value_delimiter = ',')]
    stage_steps: Option<Vec<u64>>,
    /// Fraction of the stages' steps for each stage, e.g. 0.1,0.2,0.3,0.4 (adding up to 1;
    /// instead of --stage-steps).
    #[arg(long, value_delimiter = ',')]
    stage_fracs: Option<Vec<f64>>,
    /// Growth operator for new layers: copy-top, copy-stack, random or copy-top-zero.
    #[arg(long)]
    init: Option<String>,
    /// mslt: keep training the embeddings after the first stage.
    #[arg(long)]
    train_embeddings: bool,
    /// Keep the Adam moments (AdamW or LAMB) of parameters that train across a stage change
    /// (default: reset).
    #[arg(long)]
    keep_optimizer_state: bool,
    /// One LR warm-up + decay over the whole run instead of one per stage.
    #[arg(long)]
    global_lr_schedule: bool,
    /// mslt: share of the steps for a final stage where all layers train (0 disables it).
    #[arg(long)]
    final_joint_frac: Option<f64>,
    /// mslt: the top J layers of the previous stage keep training with the new ones (default 0).
    #[arg(long, value_name = "J")]
    train_old_layers: Option<usize>,
    /// Also evaluate right after each growth (the loss jump of the growth operator).
    #[arg(long)]
    eval_after_growth: bool,
    /// Give the MLM decoder its own weight instead of the word embeddings (it then trains in MSLT
    /// stages where the embeddings are frozen; from a tied --init-from it starts as their copy).
    #[arg(long)]
    untie_decoder: bool,
    /// Dropout in the frozen layers: on (default) or off (deterministic; fused kernels on GPU).
    #[arg(long)]
    frozen_dropout: Option<String>,
    /// Frozen layers on a GPU: fused (mslt-kernels; with frozen dropout on, attention stays on
    /// Candle ops) or candle.
    #[arg(long)]
    kernels: Option<String>,
    /// dtype of the fused frozen layers: f32 or bf16.
    #[arg(long)]
    frozen_dtype: Option<String>,
    /// f32 matrix products on CUDA: f32 (default, full precision) or tf32 (tensor cores,
    /// 10-bit mantissa inputs, f32 accumulation; PyTorch's allow_tf32). No effect on the CPU.
    #[arg(long)]
    matmul_precision: Option<String>,
    /// Continue from the newest complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Data-parallel: one process per GPU on this machine (NCCL; needs `--features nccl`).
    /// 1 = this process alone, through a real NCCL communicator when NCCL is built in.
    #[arg(long)]
    nproc: Option<usize>,
    /// Multi-machine data-parallel: total ranks (or WORLD_SIZE, as torchrun sets it).
    #[arg(long)]
    world_size: Option<usize>,
    /// This process's rank, 0..world-size (or RANK).
    #[arg(long)]
    rank: Option<usize>,
    /// GPU index of this rank on its machine (or LOCAL_RANK; default: the rank).
    #[arg(long)]
    local_rank: Option<usize>,
    /// Address of rank 0 for the rendezvous (or MASTER_ADDR; default 127.0.0.1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Port rank 0 listens on for the rendezvous (or MASTER_PORT; default 29500).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds to wait for every rank to join the rendezvous.
    #[arg(long, default_value_t = 300)]
    rendezvous_timeout: u64,
    /// No progress bar (log lines only).
    #[arg(long)]
    no_progress: bool,
}

macro_rules! set {
    ($cfg:ident, $a:ident, $($f:ident),*) => { $( if let Some(v) = $a.$f.clone() { $cfg.$f = v; } )* };
}

pub fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<TrainConfig>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}",
                    p.display(),
                    e.to_string().replace('\n', " ").trim()
                )
            })?
        }
        None => TrainConfig::default(),
    };
    set!(
        cfg,
        a,
        data,
        model_config,
        out,
        steps,
        batch_size,
        grad_accum,
        lr,
        warmup_frac,
        min_lr_ratio
    );
    set!(
        cfg,
        a,
        weight_decay,
        clip_norm,
        seed,
        eval_every,
        eval_batches,
        save_every,
        keep_last
    );
    set!(
        cfg,
        a,
        log_every,
        device,
        mask_prob,
        stages,
        stage_steps,
        stage_fracs,
        init,
        final_joint_frac,
        train_old_layers
    );
    if let Some(s) = &a.schedule {
        cfg.schedule = s.parse().map_err(|e| anyhow::anyhow!("--schedule {e}"))?;
    }
    cfg.train_embeddings |= a.train_embeddings;
    cfg.untie_decoder |= a.untie_decoder;
    cfg.eval_after_growth |= a.eval_after_growth;
    if let Some(v) = &a.frozen_dropout {
        cfg.frozen_dropout = super::on_off("--frozen-dropout", v)?;
    }
    if let Some(k) = &a.kernels {
        cfg.kernels = k.parse().map_err(|e| anyhow::anyhow!("--kernels {e}"))?;
    }
    if let Some(d) = &a.frozen_dtype {
        cfg.frozen_dtype = d.clone();
    }
    if let Some(p) = &a.matmul_precision {
        cfg.matmul_precision = p.clone();
    }
    cfg.keep_optimizer_state |= a.keep_optimizer_state;
    cfg.global_lr_schedule |= a.global_lr_schedule;
    if a.init_from.is_some() {
        cfg.init_from = a.init_from.clone();
    }
    if a.warmup_steps.is_some() {
        cfg.warmup_steps = a.warmup_steps;
    }
    if let Some(d) = &a.decay {
        cfg.decay = d.parse().map_err(|e| anyhow::anyhow!("--decay {e}"))?;
    }
    if let Some(o) = &a.optimizer {
        cfg.optimizer = o.parse().map_err(|e| anyhow::anyhow!("--optimizer {e}"))?;
    }
    cfg.lamb_adapt_all |= a.lamb_adapt_all;
    if a.whole_word_masking {
        cfg.whole_word_masking = true;
    }
    anyhow::ensure!(
        !cfg.data.as_os_str().is_empty(),
        "--data is required (or `data` in --config)"
    );
    anyhow::ensure!(
        !cfg.out.as_os_str().is_empty(),
        "--out is required (or `out` in --config)"
    );
    Ok(cfg)
}

/// This process's world: flags first, then torchrun's environment variables.
fn world_spec(a: &TrainArgs) -> Result<Option<WorldSpec>> {
    let flags = a.world_size.is_some()
        || a.rank.is_some()
        || a.local_rank.is_some()
        || a.master_addr.is_some()
        || a.master_port.is_some();
    let env = |k: &str| std::env::var(k).ok();
    let from_flag = |k: &str| -> Option<String> {
        match k {
            "WORLD_SIZE" => a.world_size.map(|v| v.to_string()),
            "RANK" => a.rank.map(|v| v.to_string()),
            "LOCAL_RANK" => a.local_rank.map(|v| v.to_string()),
            "MASTER_ADDR" => a.master_addr.clone(),
            "MASTER_PORT" => a.master_port.map(|v| v.to_string()),
            _ => None,
        }
        .or_else(|| env(k))
    };
    if flags && a.world_size.is_none() && env("WORLD_SIZE").is_none() {
        anyhow::bail!(
            "--rank/--local-rank/--master-addr/--master-port need --world-size (or WORLD_SIZE)"
        );
    }
    Ok(WorldSpec::from_env(from_flag)?)
}

/// A digest of the resolved run config: every rank must run the same one.
fn config_digest(cfg: &TrainConfig) -> String {
    let text = serde_json::to_string(cfg).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `--nproc N`: runs this command once per GPU with torchrun's variables set, and waits; when
/// one rank fails the others are stopped.
fn spawn_ranks(n: usize, port: u16) -> Result<()> {
    let exe = std::env::current_exe().context("locating the mslt-cli binary")?;
    let mut args = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        if x == "--nproc" {
            it.next();
        } else if !x.starts_with("--nproc=") {
            args.push(x);
        }
    }
    let mut children = Vec::new();
    for r in 0..n {
        let c = std::process::Command::new(&exe)
            .args(&args)
            .env("WORLD_SIZE", n.to_string())
            .env("RANK", r.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {r} ({})", exe.display()))?;
        children.push(Some(c));
    }
    let mut failed: Option<String> = None;
    while children.iter().any(|c| c.is_some()) {
        for (r, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Some(st) = c.try_wait()? {
                *slot = None;
                if !st.success() && failed.is_none() {
                    failed = Some(format!("rank {r} failed ({st})"));
                }
            }
        }
        if failed.is_some() {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match failed {
        Some(f) => anyhow::bail!("{f}; the other ranks were stopped"),
        None => Ok(()),
    }
}

/// The process group of `world` (NCCL) and this rank's GPU (`cfg.device` points at it). The
/// communicator lives on that device's stream: training must use this very `Device`.
#[cfg(feature = "nccl")]
fn nccl_comm(
    world: &WorldSpec,
    cfg: &mut TrainConfig,
    token: &str,
    timeout: Duration,
) -> Result<(Box<dyn Collective>, candle_core::Device)> {
    anyhow::ensure!(
        cfg.device.starts_with("cuda"),
        "data-parallel training runs on GPUs over NCCL: --device {} is not cuda",
        cfg.device
    );
    cfg.device = format!("cuda:{}", world.local_rank);
    let device = mslt_core::device(&cfg.device)?;
    let c = mslt_core::dist::nccl::NcclComm::init(world, &device, token, timeout)
        .with_context(|| format!("rank {} of {}: NCCL setup", world.rank, world.world_size))?;
    Ok((Box::new(c), device))
}

#[cfg(not(feature = "nccl"))]
fn nccl_comm(
    world: &WorldSpec,
    _: &mut TrainConfig,
    _: &str,
    _: Duration,
) -> Result<(Box<dyn Collective>, candle_core::Device)> {
    anyhow::bail!(
        "data-parallel training with {} ranks needs NCCL, which this build lacks: rebuild with `--features nccl` on a machine with CUDA GPUs (docs/distributed.md)",
        world.world_size
    )
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut cfg = resolve(&a)?;
    let timeout = Duration::from_secs(a.rendezvous_timeout);
    let mut world = world_spec(&a)?;
    if let Some(n) = a.nproc {
        anyhow::ensure!(n >= 1, "--nproc {n}: expected at least 1");
        anyhow::ensure!(
            world.is_none(),
            "--nproc starts its own ranks: do not combine it with --world-size/--rank or WORLD_SIZE"
        );
        if n > 1 {
            anyhow::ensure!(
                cfg!(feature = "nccl"),
                "--nproc {n}: data-parallel training needs NCCL, which this build lacks: rebuild with `--features nccl` on a machine with CUDA GPUs (docs/distributed.md)"
            );
            let port = match a.master_port {
                Some(p) => p,
                None => free_port()?,
            };
            return spawn_ranks(n, port);
        }
        if cfg!(feature = "nccl") {
            world = Some(WorldSpec {
                rank: 0,
                world_size: 1,
                local_rank: 0,
                master_addr: "127.0.0.1".into(),
                master_port: free_port()?,
            });
        }
    }
    let token = config_digest(&cfg);
    let (comm, device): (Box<dyn Collective>, _) = match &world {
        Some(w) if w.world_size > 1 || cfg!(feature = "nccl") => {
            nccl_comm(w, &mut cfg, &token, timeout)?
        }
        _ => (Box::new(Single), mslt_core::device(&cfg.device)?),
    };
    let rank0 = comm.rank() == 0;
    let bar = if a.no_progress || !rank0 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.steps)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:25}] {msg} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut last_eval = String::new();
    let who = if world.is_some() {
        format!("rank {} of {}", comm.rank(), comm.world_size())
    } else {
        "training".into()
    };
    let summary = train_on(&cfg, a.resume, &device, comm.as_ref(), &mut |ev| {
        if !rank0 {
            return; // rank 0 reports for the world
        }
        match ev {
        Event::Started {
            start_step,
            total_steps,
            trainable_params,
            notes,
        } => {
            for n in notes {
                bar.suspend(|| eprintln!("{n}"));
            }
            bar.suspend(|| {
                eprintln!(
                    "training {} trainable parameters, steps {}..{} -> {}",
                    trainable_params,
                    start_step,
                    total_steps,
                    cfg.out.display()
                )
            });
            bar.set_position(start_step);
        }
        Event::Step(r) => {
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s{last_eval}",
                r.loss, r.lr, r.tokens_per_s
            ));
            if a.no_progress && (r.step % cfg.log_every == 0) {
                eprintln!(
                    "step {} loss {:.4} lr {:.2e} {:.0} tok/s",
                    r.step, r.loss, r.lr, r.tokens_per_s
                );
            }
        }
        Event::Skipped { step, reason } => bar.suspend(|| eprintln!("step {step}: {reason}")),
        Event::Eval(e) => {
            last_eval = format!(
                " | eval mlm {:.4} acc {:.3}",
                e.eval_mlm_loss, e.eval_mlm_acc
            );
            bar.suspend(|| {
                eprintln!(
                    "eval @ {}: loss {:.4} mlm {:.4} mlm acc {:.4}",
                    e.step, e.eval_loss, e.eval_mlm_loss, e.eval_mlm_acc
                )
            });
        }
        Event::Stage(s) => bar.suspend(|| {
            eprintln!(
                "{} stage {} at step {}: depth {}, {} frozen layers, embeddings {}, {} trainable parameters{}",
                s.event.trim_start_matches("stage_"),
                s.stage,
                s.step,
                s.depth,
                s.frozen_layers,
                if s.train_embeddings { "train" } else { "frozen" },
                s.trainable_params,
                s.growth
                    .as_ref()
                    .map(|g| format!(" (grown {} -> {} by {})", g.from_depth, g.to_depth, g.operator))
                    .unwrap_or_default()
            )
        }),
        Event::Saved(p) => bar.suspend(|| eprintln!("checkpoint {}", p.display())),
    }
    })
    .with_context(|| who.clone())?;
    bar.finish_and_clear();
    if !rank0 {
        return Ok(());
    }
    eprintln!(
        "done: {} steps, {} tokens in {:.1}s ({:.0} tokens/s)",
        summary.steps,
        summary.tokens,
        summary.elapsed_s,
        summary.tokens as f64 / summary.elapsed_s.max(1e-9)
    );
    if let Some(e) = &summary.final_eval {
        eprintln!(
            "final eval: mlm loss {:.4}, mlm acc {:.4}",
            e.eval_mlm_loss, e.eval_mlm_acc
        );
    }
    if summary.allreduce_bytes > 0 {
        eprintln!(
            "data-parallel: {} ranks ({}), {:.1} MB of gradients all-reduced, {:.2}s in collectives",
            summary.world_size,
            comm.backend(),
            summary.allreduce_bytes as f64 / 1e6,
            summary.comm_s
        );
    }
    eprintln!(
        "results: {}/metrics.jsonl, {}/config.json, checkpoint {}",
        cfg.out.display(),
        cfg.out.display(),
        summary
            .last_checkpoint
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}
