//! `mslt-cli eval`: MLM loss and accuracy of a checkpoint on a prepared validation split.

use anyhow::{Context, Result};
use clap::Args;
use mslt_core::data::{DataSet, MaskingConfig};
use mslt_core::train::{eval::evaluate, load_for_eval};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint directory, a run directory (its newest checkpoint) or a HF model directory
    /// with an MLM head.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prepared data directory.
    #[arg(long)]
    data: PathBuf,
    /// Split to evaluate: val or train.
    #[arg(long, default_value = "val")]
    split: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Batches (in file order) to evaluate.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Masking seed (the training loop's evaluations use the run's seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: EvalArgs) -> Result<()> {
    anyhow::ensure!(
        a.batch_size > 0 && a.batches > 0,
        "--batch-size and --batches must be at least 1"
    );
    let device = mslt_core::device(&a.device)?;
    let data = DataSet::open(&a.data, &a.split)?;
    let (model, dir) = load_for_eval(&a.checkpoint, &device)?;
    anyhow::ensure!(
        data.manifest.vocab_size <= model.config.vocab_size,
        "{}: the data's vocabulary ({} tokens) is larger than the model's ({})",
        a.data.display(),
        data.manifest.vocab_size,
        model.config.vocab_size
    );
    let r = evaluate(
        &model,
        &data,
        &MaskingConfig::default(),
        a.batch_size,
        a.batches,
        a.seed,
    )
    .with_context(|| format!("evaluating {}", dir.display()))?;
    let mut v = serde_json::to_value(&r)?;
    v["checkpoint"] = serde_json::Value::String(dir.display().to_string());
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}
