//! `mslt-cli train`: MLM (+NSP) pre-training. Values come from `--config FILE.toml` (keys of
//! `mslt_core::train::TrainConfig`), overridden by flags.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mslt_core::train::{train, Event, TrainConfig};
use std::path::PathBuf;

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
    /// Growth operator for new layers: copy-top, copy-stack or random.
    #[arg(long)]
    init: Option<String>,
    /// mslt: keep training the embeddings after the first stage.
    #[arg(long)]
    train_embeddings: bool,
    /// Keep AdamW moments of parameters that train across a stage change (default: reset).
    #[arg(long)]
    keep_optimizer_state: bool,
    /// One LR warm-up + decay over the whole run instead of one per stage.
    #[arg(long)]
    global_lr_schedule: bool,
    /// mslt: share of the steps for a final stage where all layers train (0 disables it).
    #[arg(long)]
    final_joint_frac: Option<f64>,
    /// Dropout in the frozen layers: on (default) or off (deterministic; fused kernels on GPU).
    #[arg(long)]
    frozen_dropout: Option<String>,
    /// Frozen layers on a GPU: fused (mslt-kernels; needs --frozen-dropout off) or candle.
    #[arg(long)]
    kernels: Option<String>,
    /// dtype of the fused frozen layers: f32 or bf16.
    #[arg(long)]
    frozen_dtype: Option<String>,
    /// Continue from the newest complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
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
        init,
        final_joint_frac
    );
    if let Some(s) = &a.schedule {
        cfg.schedule = s.parse().map_err(|e| anyhow::anyhow!("--schedule {e}"))?;
    }
    cfg.train_embeddings |= a.train_embeddings;
    if let Some(v) = &a.frozen_dropout {
        cfg.frozen_dropout = super::on_off("--frozen-dropout", v)?;
    }
    if let Some(k) = &a.kernels {
        cfg.kernels = k.parse().map_err(|e| anyhow::anyhow!("--kernels {e}"))?;
    }
    if let Some(d) = &a.frozen_dtype {
        cfg.frozen_dtype = d.clone();
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

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = resolve(&a)?;
    let bar = if a.no_progress {
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
    let summary = train(&cfg, a.resume, &mut |ev| {
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
    })?;
    bar.finish_and_clear();
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
    eprintln!(
        "results: {}/metrics.jsonl, {}/config.json, checkpoint {}",
        cfg.out.display(),
        cfg.out.display(),
        summary.last_checkpoint.display()
    );
    Ok(())
}
