//! `mslt-cli prepare`: tokenise and pack a corpus into training shards.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mslt_core::data::{prepare, PrepareConfig};
use std::path::PathBuf;

#[derive(Args)]
pub struct PrepareArgs {
    /// tokenizer.json, vocab.txt, or a model directory holding one.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Tokens per sequence, [CLS]/[SEP] included.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Output directory (must not already hold prepared data).
    #[arg(long)]
    out: PathBuf,
    /// Single segments without next-sentence prediction.
    #[arg(long)]
    no_nsp: bool,
    /// Share of documents held out for validation.
    #[arg(long, default_value_t = 0.02)]
    val_fraction: f64,
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Sequences per shard file.
    #[arg(long, default_value_t = 65536)]
    shard_sequences: usize,
    /// Plain-text files or directories (*.txt, *.gz); one document per file, or documents
    /// separated by blank lines.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let cfg = PrepareConfig {
        seq_len: a.seq_len,
        nsp: !a.no_nsp,
        val_fraction: a.val_fraction,
        seed: a.seed,
        shard_sequences: a.shard_sequences,
        ..Default::default()
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} prepare [{bar:30}] {pos}/{len} files {elapsed_precise}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let r = prepare(&a.inputs, &a.tokenizer, &a.out, &cfg, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("preparing {}", a.out.display()))?;
    bar.finish_and_clear();
    let m = &r.manifest;
    eprintln!(
        "prepared {} file(s) in {:.1}s -> {}: train {} sequences ({} tokens, {} documents), val {} sequences ({} documents); seq len {}, NSP {}; skipped {} not UTF-8, {} binary, {} empty",
        m.inputs.files,
        t0.elapsed().as_secs_f64(),
        r.out.display(),
        m.train.sequences,
        m.train.tokens,
        m.train.documents,
        m.val.sequences,
        m.val.documents,
        m.seq_len,
        if m.nsp { "on" } else { "off" },
        m.inputs.skipped_not_utf8,
        m.inputs.skipped_binary,
        m.inputs.skipped_empty
    );
    Ok(())
}
