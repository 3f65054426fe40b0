//! Checkpoints: `RUN_DIR/checkpoints/step-NNNNNNNN/` holding
//! - `config.json` + `model.safetensors` — a Hugging Face `BertForPreTraining` directory
//!   (loadable by `mslt-cli encode` and by transformers), plus the tokenizer file of the data;
//! - `optimizer.safetensors` — Adam moments (AdamW or LAMB) (`{param}.exp_avg`, `{param}.exp_avg_sq`);
//! - `state.json` — step, data position, counters, the resolved run and model config.
//!
//! A checkpoint is written into `checkpoints/.tmp-step-N/` and renamed into place, so a
//! directory named `step-*` is always complete; a crash mid-save leaves only a `.tmp-*`
//! directory, which is ignored and removed at the next start.

use crate::config::BertConfig;
use crate::error::{Error, Result};
use crate::weights::save_safetensors_atomic;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "mslt-ckpt-v1";

/// What the data a run was trained on looked like (checked on resume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub vocab_hash: String,
    pub seq_len: usize,
    pub nsp: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// Optimizer steps completed (the next step to run has this 0-based index).
    pub step: u64,
    /// Training sequences consumed (the data position).
    pub samples: u64,
    /// Non-padding tokens consumed.
    pub tokens: u64,
    /// Training wall-clock so far, seconds.
    pub elapsed_s: f64,
    /// Steps skipped for non-finite loss or gradients.
    pub skipped_steps: u64,
    pub data: DataFingerprint,
    /// The stage holding the next step to run (0 for schedules with one stage).
    #[serde(default)]
    pub stage: usize,
    /// The resolved run config (`TrainConfig`) as JSON.
    pub run: serde_json::Value,
    /// Data-parallel ranks the run was trained with (1 for a single process).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(checkpoints_dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The model directory `spec` names: a run directory's newest complete checkpoint, or `spec`
/// itself (a checkpoint or model directory).
pub fn resolve_dir(spec: &Path) -> crate::error::Result<PathBuf> {
    if spec.join("checkpoints").is_dir() {
        return latest(spec).ok_or_else(|| {
            crate::error::Error::Input(format!(
                "{}: the run has no complete checkpoint",
                spec.display()
            ))
        });
    }
    Ok(spec.to_path_buf())
}

/// The newest complete checkpoint.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    list(run_dir).pop().map(|(_, p)| p)
}

/// Removes `.tmp-*` leftovers of interrupted saves.
pub fn clean_partial(run_dir: &Path) {
    for e in std::fs::read_dir(checkpoints_dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub struct SaveRequest<'a> {
    pub run_dir: &'a Path,
    pub model: &'a BTreeMap<String, Tensor>,
    pub config: &'a BertConfig,
    pub optimizer: HashMap<String, Tensor>,
    pub state: &'a TrainState,
    /// Tokenizer file to copy next to the model (tokenizer.json or vocab.txt).
    pub tokenizer: Option<&'a Path>,
    pub keep_last: usize,
}

/// Writes a checkpoint atomically and prunes old ones; returns its directory.
pub fn save(req: SaveRequest) -> Result<PathBuf> {
    let ckdir = checkpoints_dir(req.run_dir);
    std::fs::create_dir_all(&ckdir).map_err(|e| Error::io(&ckdir, e))?;
    let name = format!("step-{:08}", req.state.step);
    let tmp = ckdir.join(format!(".tmp-{name}"));
    let fin = ckdir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json");
    crate::data::shards::write_atomic(
        &tmp.join("config.json"),
        json(&req.config.to_hf_json()).as_bytes(),
    )?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors_atomic(req.model, Some(meta), &tmp.join("model.safetensors"))?;
    if let Ok(s) = std::env::var("MSLT_TEST_CRASH_DURING_SAVE") {
        // Fault injection for the crash-safety test: die mid-save, like a kill -9 would.
        if s.parse::<u64>().ok() == Some(req.state.step) {
            std::process::abort();
        }
    }
    let opt: BTreeMap<String, Tensor> = req.optimizer.into_iter().collect();
    save_safetensors_atomic(&opt, None, &tmp.join("optimizer.safetensors"))?;
    if let Some(t) = req.tokenizer {
        if let Some(n) = t.file_name() {
            std::fs::copy(t, tmp.join(n)).map_err(|e| Error::io(t, e))?;
        }
    }
    let state = serde_json::to_string_pretty(req.state).expect("state serialises");
    crate::data::shards::write_atomic(&tmp.join("state.json"), state.as_bytes())?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    if let Ok(d) = std::fs::File::open(&ckdir) {
        let _ = d.sync_all();
    }
    let all = list(req.run_dir);
    if req.keep_last > 0 && all.len() > req.keep_last {
        for (_, p) in &all[..all.len() - req.keep_last] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(fin)
}

pub fn load_state(dir: &Path) -> Result<TrainState> {
    crate::error::read_versioned_json(&dir.join("state.json"), FORMAT, |s: &TrainState| &s.format)
}

/// Reads `optimizer.safetensors` (Adam moments and per-parameter step counts).
pub fn load_optimizer(dir: &Path, device: &candle_core::Device) -> Result<HashMap<String, Tensor>> {
    let p = dir.join("optimizer.safetensors");
    candle_core::safetensors::load(&p, device).map_err(|e| Error::Safetensors {
        path: p.clone(),
        msg: e.to_string().lines().next().unwrap_or("").to_string(),
    })
}
