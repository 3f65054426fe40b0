//! `mslt-cli inspect`: config, parameter count and tensors of a model directory, a safetensors
//! file or a config.json.

use anyhow::{bail, Context, Result};
use clap::Args;
use mslt_core::weights::{canonical_name, ModelFiles};
use mslt_core::BertConfig;
use std::path::{Path, PathBuf};

/// println! that stops quietly when stdout is closed (e.g. piped into `head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

#[derive(Args)]
pub struct InspectArgs {
    /// A model directory, a .safetensors file or a config.json.
    path: PathBuf,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let p = &a.path;
    if p.is_dir() {
        let files = ModelFiles::from_dir(p)?;
        let cfg = files.load_config()?;
        print_config(&cfg, &files.config);
        let tok = match (&files.tokenizer_json, &files.vocab_txt) {
            (Some(j), _) => j.display().to_string(),
            (None, Some(v)) => v.display().to_string(),
            (None, None) => "none".into(),
        };
        outln!("tokenizer: {tok}");
        for w in &files.weights {
            print_tensors(w, cfg.tie_word_embeddings)?;
        }
    } else if p.is_file() {
        if p.extension().is_some_and(|e| e == "json") {
            let cfg = BertConfig::from_file(p)?;
            print_config(&cfg, p);
        } else {
            // no config: HF's default, a tied decoder (a decoder weight is not counted as used)
            print_tensors(p, true)?;
        }
    } else {
        bail!("{}: no such file or directory", p.display());
    }
    Ok(())
}

fn print_config(cfg: &BertConfig, path: &Path) {
    outln!("config: {}", path.display());
    outln!(
        "  layers {}  hidden {}  heads {}  intermediate {}  vocab {}  positions {}  token types {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.max_position_embeddings,
        cfg.type_vocab_size
    );
    outln!(
        "  act {:?}  dropout {}/{}  layer_norm_eps {}  initializer_range {}",
        cfg.hidden_act,
        cfg.hidden_dropout_prob,
        cfg.attention_probs_dropout_prob,
        cfg.layer_norm_eps,
        cfg.initializer_range
    );
    outln!(
        "  parameters with all heads (BertForPreTraining): {}  (MLM decoder {})",
        cfg.num_parameters(),
        if cfg.tie_word_embeddings {
            "tied to the word embeddings"
        } else {
            "untied: its own weight"
        }
    );
}

/// `tied`: the config ties the MLM decoder to the word embeddings, so a stored decoder weight is
/// not one mslt uses.
fn print_tensors(path: &Path, tied: bool) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only map of a file we do not modify while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut tensors: Vec<_> = meta.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let total: usize = tensors
        .iter()
        .map(|(_, i)| i.shape.iter().product::<usize>())
        .sum();
    let shadowed =
        mslt_core::weights::shadowed_mlm_bias(tensors.iter().map(|(n, _)| n.as_str()), tied);
    let used: usize = tensors
        .iter()
        .filter(|(n, _)| {
            Some(n.as_str()) != shadowed
                && canonical_name(n)
                    .is_some_and(|c| !(tied && c == mslt_core::model::names::MLM_DECODER))
        })
        .map(|(_, i)| i.shape.iter().product::<usize>())
        .sum();
    outln!(
        "tensors: {} ({} tensors, {} elements; {} in BERT parameters mslt uses)",
        path.display(),
        tensors.len(),
        total,
        used
    );
    if let Some(m) = meta.metadata() {
        let mut kv: Vec<_> = m.iter().collect();
        kv.sort();
        for (k, v) in kv {
            let v = if v.len() > 120 {
                format!("{}...", &v[..v.floor_char_boundary(117)])
            } else {
                v.clone()
            };
            outln!("  metadata {k} = {v}");
        }
    }
    for (name, info) in tensors {
        outln!("  {name:<64} {:>5?} {:?}", info.dtype, info.shape);
    }
    Ok(())
}
