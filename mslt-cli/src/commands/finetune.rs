//! `mslt-cli finetune`: sequence classification on a GLUE-TSV or CSV task, several seeds.

use anyhow::{Context, Result};
use clap::Args;
use mslt_core::data::shards::write_atomic;
use mslt_core::finetune::{finetune, load_task, mean_std, FinetuneConfig, FinetuneResult, Trained};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct FinetuneArgs {
    /// RUN_DIR (its newest checkpoint), a checkpoint / HF model directory, or a hub id.
    #[arg(long)]
    checkpoint: String,
    /// Task directory (train.tsv + dev.tsv, or train.csv + dev.csv) or one CSV/TSV file.
    #[arg(long)]
    task: PathBuf,
    /// Output directory: result.json (+ model/ of the first seed).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    warmup_frac: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 128)]
    max_seq_len: usize,
    /// First seed; --seeds N runs seeds seed .. seed + N - 1.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Only the first N training examples (0: all).
    #[arg(long, default_value_t = 0)]
    max_train: usize,
    /// Only the first N dev examples (0: all).
    #[arg(long, default_value_t = 0)]
    max_dev: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 matrix products on CUDA: f32 (full precision) or tf32 (tensor cores, 10-bit
    /// mantissa inputs, f32 accumulation). No effect on the CPU.
    #[arg(long, default_value = "f32")]
    matmul_precision: String,
    /// Do not write the fine-tuned model (of the first seed) to OUT/model.
    #[arg(long)]
    no_save: bool,
    #[arg(long)]
    no_progress: bool,
}

/// result.json: every seed's result and the mean / std over seeds.
#[derive(serde::Serialize)]
pub struct Summary {
    pub task: String,
    pub metric: mslt_core::finetune::Metric,
    pub seeds: usize,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub metric_mean: f64,
    pub metric_std: f64,
    pub runs: Vec<FinetuneResult>,
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    anyhow::ensure!(a.seeds >= 1, "--seeds must be at least 1");
    let task = load_task(&a.task)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    println!(
        "task {}: {} train / {} dev examples, labels {:?}, {}, metric {:?}",
        task.name,
        task.train.len(),
        task.dev.len(),
        task.labels,
        if task.pair {
            "sentence pairs"
        } else {
            "single sentences"
        },
        task.metric
    );
    let mut runs = Vec::new();
    for s in 0..a.seeds {
        let cfg = FinetuneConfig {
            checkpoint: a.checkpoint.clone(),
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            warmup_frac: a.warmup_frac,
            weight_decay: a.weight_decay,
            clip_norm: 1.0,
            max_seq_len: a.max_seq_len,
            seed: a.seed + s,
            max_train: a.max_train,
            max_dev: a.max_dev,
            device: a.device.clone(),
            matmul_precision: a.matmul_precision.clone(),
        };
        let bar = if a.no_progress {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "seed {msg} [{bar:30}] {pos}/{len} {elapsed_precise}",
            )
            .expect("template"),
        );
        let mut progress = |epoch: usize, step: usize, per_epoch: usize, loss: f64| {
            bar.set_length((per_epoch * a.epochs) as u64);
            bar.set_position(((epoch - 1) * per_epoch + step) as u64);
            bar.set_message(format!("{} epoch {epoch} loss {loss:.4}", cfg.seed));
        };
        let trained = finetune(&cfg, &task, &mut progress)?;
        bar.finish_and_clear();
        for e in &trained.result.epochs {
            eprintln!(
                "seed {} epoch {}: train loss {:.4}, dev loss {:.4}, accuracy {:.4}{}{} ({:.0} s)",
                cfg.seed,
                e.epoch,
                e.train_loss,
                e.dev.loss,
                e.dev.accuracy,
                e.dev.f1.map(|v| format!(", F1 {v:.4}")).unwrap_or_default(),
                e.dev
                    .matthews
                    .map(|v| format!(", MCC {v:.4}"))
                    .unwrap_or_default(),
                e.elapsed_s
            );
        }
        if s == 0 && !a.no_save {
            save_model(&trained, &a.out.join("model"))?;
        }
        runs.push(trained.result);
    }
    let acc: Vec<f64> = runs.iter().map(|r| r.final_dev.accuracy).collect();
    let prim: Vec<f64> = runs
        .iter()
        .map(|r| r.final_dev.primary(task.metric))
        .collect();
    let (am, asd) = mean_std(&acc);
    let (pm, psd) = mean_std(&prim);
    let summary = Summary {
        task: task.name.clone(),
        metric: task.metric,
        seeds: runs.len(),
        accuracy_mean: am,
        accuracy_std: asd,
        metric_mean: pm,
        metric_std: psd,
        runs,
    };
    let path = a.out.join("result.json");
    write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!(
        "{}: dev accuracy {am:.4} +- {asd:.4}, {:?} {pm:.4} +- {psd:.4} over {} seed(s); {}",
        task.name,
        task.metric,
        summary.seeds,
        path.display()
    );
    Ok(())
}

/// A Hugging Face `BertForSequenceClassification` directory.
fn save_model(t: &Trained, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cfg = t.config.to_hf_json();
    let o = cfg.as_object_mut().expect("object");
    o.insert(
        "architectures".into(),
        serde_json::json!(["BertForSequenceClassification"]),
    );
    let id2label: serde_json::Map<String, serde_json::Value> = t
        .result
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = t
        .result
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    o.insert("id2label".into(), id2label.into());
    o.insert("label2id".into(), label2id.into());
    write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    mslt_core::weights::save_safetensors_atomic(
        &t.tensors,
        Some(meta),
        &dir.join("model.safetensors"),
    )?;
    if let Some(tf) = &t.tokenizer_file {
        let name = tf.file_name().expect("a file");
        std::fs::copy(tf, dir.join(name)).with_context(|| format!("copying {}", tf.display()))?;
    }
    Ok(())
}
