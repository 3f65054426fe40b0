//! `mslt-cli export`: a checkpoint as a Hugging Face model directory that transformers loads
//! unchanged: `config.json` (with `architectures`), `model.safetensors` under HF names (format
//! `pt`), `tokenizer.json` and `vocab.txt` (+ `tokenizer_config.json`).

use anyhow::{Context, Result};
use clap::Args;
use mslt_core::finetune::resolve_model;
use mslt_core::weights::{load_safetensors, save_safetensors_atomic};
use mslt_core::BertForPreTraining;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ExportArgs {
    /// RUN_DIR (its newest checkpoint), a checkpoint directory, or a model directory.
    #[arg(long)]
    checkpoint: String,
    /// Output directory (must not exist, or be empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let files = resolve_model(&a.checkpoint)?;
    let cfg = files.load_config()?;
    let dev = candle_core::Device::Cpu;
    let w = load_safetensors(&files.weights, &cfg, &dev)?;
    if let Some(note) = w.unused_note() {
        tracing::warn!("{}: {note} (not exported)", files.name);
    }
    // Validates every tensor's name and shape against the config.
    let model = BertForPreTraining::from_tensors(&cfg, &w.tensors, &w.origin)?;
    let heads = model.heads();
    let arch = if heads.mlm && heads.nsp {
        "BertForPreTraining"
    } else if heads.mlm {
        "BertForMaskedLM"
    } else {
        "BertModel"
    };
    if a.out.exists() {
        let empty = a
            .out
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        anyhow::ensure!(
            empty || a.force,
            "{} exists and is not empty (use --force to replace it)",
            a.out.display()
        );
    }
    let tmp = PathBuf::from(format!("{}.partial", a.out.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

    let mut hf = cfg.to_hf_json();
    hf.as_object_mut()
        .expect("object")
        .insert("architectures".into(), serde_json::json!([arch]));
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&hf)?)?;
    let mut tensors: BTreeMap<String, candle_core::Tensor> = w.tensors.into_iter().collect();
    if !cfg.tie_word_embeddings {
        // transformers ties the decoder's bias to `cls.predictions.bias` only while the decoder
        // weight is tied; an untied model reads `cls.predictions.decoder.bias` (5.x) or either
        // (4.x, one shared parameter), so both are written, equal.
        if let Some(b) = tensors.get(mslt_core::model::names::MLM_BIAS).cloned() {
            tensors.insert(mslt_core::weights::MLM_DECODER_BIAS.to_string(), b);
        }
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors_atomic(&tensors, Some(meta), &tmp.join("model.safetensors"))?;

    let mut lowercase = true;
    if let Some(tj) = &files.tokenizer_json {
        std::fs::copy(tj, tmp.join("tokenizer.json"))
            .with_context(|| format!("copying {}", tj.display()))?;
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tj)?)
            .with_context(|| format!("{}: not JSON", tj.display()))?;
        lowercase = v["normalizer"]["lowercase"].as_bool().unwrap_or(true);
    }
    match (&files.vocab_txt, &files.tokenizer_json) {
        (Some(v), _) => {
            std::fs::copy(v, tmp.join("vocab.txt"))
                .with_context(|| format!("copying {}", v.display()))?;
        }
        (None, Some(tj)) => write_vocab_from_tokenizer_json(tj, &tmp.join("vocab.txt"))?,
        (None, None) => anyhow::bail!(
            "{}: the checkpoint has no tokenizer.json or vocab.txt to export",
            files.name
        ),
    }
    match &files.tokenizer_config {
        Some(tc) => {
            std::fs::copy(tc, tmp.join("tokenizer_config.json"))?;
        }
        None => std::fs::write(
            tmp.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": lowercase,
                "model_max_length": cfg.max_position_embeddings,
            }))?,
        )?,
    }
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("renaming to {}", a.out.display()))?;
    println!(
        "exported {} ({arch}, {} tensors) to {}",
        files.name,
        tensors.len(),
        a.out.display()
    );
    Ok(())
}

/// vocab.txt (one token per line, in id order) from a WordPiece tokenizer.json.
fn write_vocab_from_tokenizer_json(tj: &Path, out: &Path) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tj)?)
        .with_context(|| format!("{}: not JSON", tj.display()))?;
    let vocab = v["model"]["vocab"].as_object().with_context(|| {
        format!(
            "{}: no model.vocab (not a WordPiece tokenizer)",
            tj.display()
        )
    })?;
    let mut by_id: Vec<(u64, &str)> = vocab
        .iter()
        .map(|(k, id)| {
            Ok((
                id.as_u64().context("vocab id is not an integer")?,
                k.as_str(),
            ))
        })
        .collect::<Result<_>>()?;
    by_id.sort();
    anyhow::ensure!(
        by_id.iter().enumerate().all(|(i, (id, _))| *id == i as u64),
        "{}: vocabulary ids are not 0..N",
        tj.display()
    );
    let text: String = by_id.iter().map(|(_, t)| format!("{t}\n")).collect();
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}
