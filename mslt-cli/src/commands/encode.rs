//! `mslt-cli encode`: a forward pass in eval mode over token ids (safetensors) or text lines.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use mslt_core::tokenizer::{pad_batch, BertTokenizer};
use mslt_core::weights::{load_safetensors, save_safetensors_atomic, ModelFiles};
use mslt_core::{BertConfig, BertForPreTraining, BertInput, Mode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "text_file"])))]
pub struct EncodeArgs {
    /// Model directory (config.json, model.safetensors, tokenizer) or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Safetensors with `input_ids` (B, T) and optionally `attention_mask`, `token_type_ids`
    /// (integer tensors; others are ignored).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Text file: one sentence per line, tokenised with the model's tokenizer, padded to the
    /// longest line.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// fused (mslt-kernels on a GPU) or candle (plain Candle ops everywhere).
    #[arg(long, default_value = "fused")]
    kernels: String,
    /// dtype of the fused layers on a GPU: f32 or bf16 (outputs are f32 either way).
    #[arg(long, default_value = "f32")]
    kernels_dtype: String,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Do not write `prediction_logits` (B, T, V), which is large for long inputs.
    #[arg(long)]
    no_logits: bool,
}

/// Host-side batch: row-major (B, T) i64.
struct HostBatch {
    b: usize,
    t: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    tt: Vec<i64>,
}

pub fn run(a: EncodeArgs) -> Result<()> {
    anyhow::ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    let device = mslt_core::device(&a.device)?;
    let files = ModelFiles::resolve(&a.model)?;
    let cfg = files.load_config()?;
    let batch = match (&a.input, &a.text_file) {
        (Some(p), _) => read_ids(p)?,
        (None, Some(p)) => read_text(p, &files, &cfg)?,
        (None, None) => unreachable!("clap requires one source"),
    };
    // Validate every id before any compute: one clear error for the first bad value.
    BertInput::from_host(
        &cfg,
        (batch.b, batch.t),
        &batch.ids,
        Some(&batch.mask),
        Some(&batch.tt),
        &Device::Cpu,
    )
    .with_context(|| format!("input {}", source_name(&a)))?;

    let weights = load_safetensors(&files.weights, &cfg, &device)?;
    if let Some(note) = weights.unused_note() {
        tracing::warn!("{}: {note}", files.name);
    }
    // Plain tensors: nothing is tracked, the whole forward runs on no-backward ops.
    let mut model = BertForPreTraining::from_tensors(&cfg, &weights.tensors, &weights.origin)?;
    let kernels: mslt_core::Kernels = a
        .kernels
        .parse()
        .map_err(|e| anyhow::anyhow!("--kernels {e}"))?;
    if kernels == mslt_core::Kernels::Fused {
        let dtype = mslt_core::train::frozen_dtype(&a.kernels_dtype).map_err(|_| {
            anyhow::anyhow!(
                "--kernels-dtype {:?}: expected f32 or bf16",
                a.kernels_dtype
            )
        })?;
        let n = model.use_fused_kernels(mslt_core::model::FusedOptions {
            dtype,
            allow_cpu: false,
        })?;
        tracing::info!("{n} of {} layers on the fused kernels", model.layers.len());
    }
    let heads = model.heads();

    let mut outs: BTreeMap<&str, Vec<Tensor>> = BTreeMap::new();
    for start in (0..batch.b).step_by(a.batch_size) {
        let rows = a.batch_size.min(batch.b - start);
        let r = start * batch.t..(start + rows) * batch.t;
        let input = BertInput::from_host(
            &cfg,
            (rows, batch.t),
            &batch.ids[r.clone()],
            Some(&batch.mask[r.clone()]),
            Some(&batch.tt[r]),
            &device,
        )?;
        let enc = model.encode(&input, &mut Mode::Eval, false)?;
        let h = enc.last_hidden_state; // (B, T, C)
        if heads.mlm && !a.no_logits {
            outs.entry("prediction_logits")
                .or_default()
                .push(model.mlm_logits(&h)?);
        }
        if let Some(p) = model.pool(&h)? {
            if heads.nsp {
                outs.entry("seq_relationship_logits")
                    .or_default()
                    .push(model.nsp_logits(&p)?);
            }
            outs.entry("pooler_output").or_default().push(p);
        }
        outs.entry("last_hidden_state").or_default().push(h);
    }

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let shape = (batch.b, batch.t);
    tensors.insert(
        "input_ids".into(),
        Tensor::from_vec(batch.ids, shape, &Device::Cpu)?,
    );
    tensors.insert(
        "attention_mask".into(),
        Tensor::from_vec(batch.mask, shape, &Device::Cpu)?,
    );
    tensors.insert(
        "token_type_ids".into(),
        Tensor::from_vec(batch.tt, shape, &Device::Cpu)?,
    );
    for (name, parts) in outs {
        let t = Tensor::cat(&parts, 0)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        tensors.insert(name.to_string(), t);
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("mslt.model".to_string(), files.name.clone());
    save_safetensors_atomic(&tensors, Some(meta), &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let names: Vec<&String> = tensors.keys().collect();
    eprintln!(
        "encoded {} sequence(s) of {} tokens with {} ({} layers x {}) -> {} [{}]",
        shape.0,
        shape.1,
        files.name,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        a.output.display(),
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !heads.mlm || !heads.nsp || !heads.pooler {
        eprintln!(
            "note: {} has no {}; those outputs are absent",
            files.name,
            [
                (!heads.pooler).then_some("pooler"),
                (!heads.mlm).then_some("MLM head"),
                (!heads.nsp).then_some("NSP head")
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
        );
    }
    Ok(())
}

fn source_name(a: &EncodeArgs) -> String {
    a.input
        .as_ref()
        .or(a.text_file.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Row-major integer values and their (B, T) shape.
type IdsAndShape = (Vec<i64>, (usize, usize));

/// Reads `input_ids` and optional `attention_mask` / `token_type_ids` from safetensors.
fn read_ids(path: &Path) -> Result<HostBatch> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid safetensors file: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        )
    })?;
    let get = |name: &str, required: bool| -> Result<Option<IdsAndShape>> {
        let Some(t) = map.get(name) else {
            if required {
                bail!(
                    "{}: has no `{name}` tensor (expected integer ids of shape (B, T))",
                    path.display()
                );
            }
            return Ok(None);
        };
        let dims = t.dims2().map_err(|_| {
            anyhow::anyhow!(
                "{}: `{name}` has shape {:?}, expected (B, T)",
                path.display(),
                t.dims()
            )
        })?;
        if t.dtype().is_float() {
            bail!(
                "{}: `{name}` has dtype {:?}, expected an integer type (I64)",
                path.display(),
                t.dtype()
            );
        }
        let v = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        Ok(Some((v, dims)))
    };
    let (ids, (b, t)) = get("input_ids", true)?.expect("required");
    let mut out = HostBatch {
        b,
        t,
        mask: vec![1; b * t],
        tt: vec![0; b * t],
        ids,
    };
    for (name, slot) in [
        ("attention_mask", &mut out.mask),
        ("token_type_ids", &mut out.tt),
    ] {
        if let Some((v, dims)) = get(name, false)? {
            if dims != (b, t) {
                bail!(
                    "{}: `{name}` has shape {dims:?}, input_ids has ({b}, {t})",
                    path.display()
                );
            }
            *slot = v;
        }
    }
    Ok(out)
}

/// One sentence per line, tokenised with the model's tokenizer, padded to the longest.
fn read_text(path: &Path, files: &ModelFiles, cfg: &BertConfig) -> Result<HostBatch> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        bail!("{}: no lines to encode", path.display());
    }
    let tok = BertTokenizer::from_model(&files.clone())?;
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "tokenizer {} has {} tokens but the model's vocab_size is {}",
            tok.origin(),
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    let mut enc = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let e = tok.encode(line)?;
        if e.ids.len() > cfg.max_position_embeddings {
            bail!(
                "{}:{}: {} tokens, more than the model's max_position_embeddings {} (split the line)",
                path.display(),
                i + 1,
                e.ids.len(),
                cfg.max_position_embeddings
            );
        }
        enc.push(e);
    }
    let (ids, mask, tt, t) = pad_batch(&enc, tok.pad_id);
    Ok(HostBatch {
        b: enc.len(),
        t,
        ids,
        mask,
        tt,
    })
}
