//! `mslt-cli inspect`: config, parameter count and tensors of a model directory, a safetensors
//! file or a config.json.

use anyhow::{bail, Context, Result};
use clap::Args;
use mslt_core::weights::ModelFiles;
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
        let used = print_files(&files.weights, cfg.tie_word_embeddings)?;
        if files.weights.len() > 1 {
            outln!(
                "all {} shards: {used} elements in BERT parameters mslt uses",
                files.weights.len()
            );
        }
    } else if p.is_file() {
        if p.extension().is_some_and(|e| e == "json") {
            let cfg = BertConfig::from_file(p)?;
            print_config(&cfg, p);
        } else {
            // no config: HF's default, a tied decoder (a decoder weight is not counted as used)
            print_files(std::slice::from_ref(p), true)?;
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

/// A safetensors file's header, read from a read-only map.
fn read_header(path: &Path) -> Result<safetensors::tensor::Metadata> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only map of a file we do not modify while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    Ok(meta)
}

/// Prints the metadata and tensors of a checkpoint's files (one, or every shard) and returns how
/// many of their elements are in BERT parameters mslt reads. `tied`: the config ties the MLM
/// decoder to the word embeddings, so a stored decoder weight is not one mslt uses.
fn print_files(paths: &[PathBuf], tied: bool) -> Result<usize> {
    let headers = paths
        .iter()
        .map(|p| read_header(p))
        .collect::<Result<Vec<_>>>()?;
    // Of two MLM bias names, the one mslt reads depends on every shard's names.
    let names: Vec<String> = headers
        .iter()
        .flat_map(|h| h.tensors().into_keys())
        .collect();
    let shadowed = mslt_core::weights::shadowed_mlm_bias(names.iter().map(String::as_str), tied);
    let mut used = 0;
    for (path, meta) in paths.iter().zip(&headers) {
        used += print_tensors(path, meta, tied, shadowed);
    }
    Ok(used)
}

/// Prints one file's metadata and tensors and returns how many of its elements mslt reads;
/// `shadowed`: the MLM bias name mslt does not read (both present, over all shards).
fn print_tensors(
    path: &Path,
    meta: &safetensors::tensor::Metadata,
    tied: bool,
    shadowed: Option<&str>,
) -> usize {
    let mut tensors: Vec<_> = meta.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let total: usize = tensors
        .iter()
        .map(|(_, i)| i.shape.iter().product::<usize>())
        .sum();
    let used: usize = tensors
        .iter()
        .filter(|(n, _)| mslt_core::weights::is_read(n, tied, shadowed))
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
    used
}
