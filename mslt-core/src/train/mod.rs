//! The pre-training loop: MLM (+ NSP) on prepared data, our AdamW or LAMB with warm-up and decay,
//! global-norm clipping, gradient accumulation, evaluation, atomic checkpoints, exact resume.
//!
//! Determinism: the data position, the masking RNG and the dropout RNG of a step are functions
//! of (seed, step, micro-batch) alone, and model + optimizer state are saved exactly, so a run
//! resumed from a checkpoint reproduces the uninterrupted run bit for bit on CPU.

pub mod checkpoint;
pub mod eval;
pub mod schedule;
pub mod stages;

use crate::config::BertConfig;
use crate::data::{DataSet, MaskingConfig};
use crate::error::{Error, Result};
use crate::loss::MlmTargets;
use crate::model::BertForPreTraining;
use crate::nn::Mode;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use crate::weights::{init_all, init_missing_heads, load_safetensors, ModelFiles, Params};
use crate::BertInput;
use candle_core::{Device, Tensor, Var};
use checkpoint::{DataFingerprint, TrainState};
use schedule::{Decay, LrSchedule};
use serde::{Deserialize, Serialize};
use stages::{ScheduleKind, ScheduleSpec, Stage};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every knob of a pre-training run. Read from a TOML file (unknown keys are errors) and
/// overridden by command-line flags; written resolved to `RUN_DIR/config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Prepared data directory (`mslt-cli prepare`).
    pub data: PathBuf,
    /// Run directory: config.json, metrics.jsonl, checkpoints/.
    pub out: PathBuf,
    /// Preset name (tiny, mini, small, medium, base, large) or path to a HF config.json.
    /// Ignored when `init_from` is set (the checkpoint's config is used).
    pub model_config: String,
    /// Initialise from a HF model directory or hub id instead of from scratch.
    pub init_from: Option<String>,
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up as a share of `steps` (used when `warmup_steps` is unset).
    pub warmup_frac: f64,
    pub warmup_steps: Option<u64>,
    /// linear, cosine or constant after warm-up.
    pub decay: Decay,
    /// Final LR as a share of the peak.
    pub min_lr_ratio: f64,
    /// adamw or lamb (layer-wise trust ratio, for large batches; see [`crate::optim`]).
    pub optimizer: crate::optim::Algorithm,
    /// LAMB: the trust ratio on every tensor (optax, NVLAMB) instead of only on the weight-decayed
    /// ones (google-research BERT, apex FusedLAMB, timm).
    pub lamb_adapt_all: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip_norm: f64,
    pub seed: u64,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_every: u64,
    /// Checkpoints kept (oldest deleted first; 0 = keep all).
    pub keep_last: usize,
    /// Write a metrics line every N steps.
    pub log_every: u64,
    /// cpu, cuda or cuda:N.
    pub device: String,
    /// Share of non-special tokens predicted by MLM.
    pub mask_prob: f64,
    pub whole_word_masking: bool,
    /// Evaluate right after each growth too (besides `eval_every` and the stage ends), to see
    /// the loss jump a growth operator causes (needs validation data).
    pub eval_after_growth: bool,
    /// Consecutive steps with non-finite loss/gradients before the run stops.
    pub max_bad_steps: u64,
    /// full, stack (Progressive Stacking 1.0) or mslt (multi-stage layerwise training).
    pub schedule: ScheduleKind,
    /// Model depth after each stage, e.g. [3, 6, 9, 12] (empty: the schedule's default).
    pub stages: Vec<usize>,
    /// Steps of each stage (empty: equal shares of the budget left after the joint stage).
    pub stage_steps: Vec<u64>,
    /// Fraction of that budget for each stage, adding up to 1 (instead of `stage_steps`).
    pub stage_fracs: Vec<f64>,
    /// Growth operator for new layers: copy-top, copy-stack or random (empty: copy-top for
    /// mslt, copy-stack for stack).
    pub init: String,
    /// mslt: the embeddings keep training after the first stage (then the frozen layers are
    /// on the backward path: forward-only no longer holds).
    pub train_embeddings: bool,
    /// At a stage change keep the Adam moments of parameters that train in both stages
    /// (default: a fresh optimizer per stage).
    pub keep_optimizer_state: bool,
    /// One warm-up + decay over the whole run instead of one per stage.
    pub global_lr_schedule: bool,
    /// mslt: share of the steps for a final stage where every layer trains (0 disables it).
    pub final_joint_frac: f64,
    /// mslt: the top j layers of the previous stage keep training with the new ones in every
    /// stage after the first (0: only the new layers train).
    pub train_old_layers: usize,
    /// The MLM decoder gets its own weight (`tie_word_embeddings: false`), so it can train in
    /// MSLT stages where the embeddings are frozen. From scratch it is BERT-initialised; from a
    /// tied `init_from` checkpoint it starts as a copy of the word embeddings.
    pub untie_decoder: bool,
    /// Dropout in the frozen layers (default on). Off: a deterministic frozen forward that can
    /// run the fused kernels.
    pub frozen_dropout: bool,
    /// Frozen layers on a GPU: fused (mslt-kernels; with frozen dropout on, attention stays on
    /// Candle ops) or candle.
    pub kernels: mslt_kernels::Kernels,
    /// dtype of the fused frozen layers: f32 or bf16 (the trainable layers stay f32).
    pub frozen_dtype: String,
    /// f32 matrix products on CUDA: f32 (full precision) or tf32 (tensor cores, 10-bit mantissa
    /// inputs, f32 accumulation). No effect on the CPU.
    pub matmul_precision: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::new(),
            model_config: "mini".into(),
            init_from: None,
            steps: 1000,
            batch_size: 32,
            grad_accum: 1,
            lr: 5e-4,
            warmup_frac: 0.06,
            warmup_steps: None,
            decay: Decay::Linear,
            min_lr_ratio: 0.0,
            optimizer: crate::optim::Algorithm::AdamW,
            lamb_adapt_all: false,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-6,
            clip_norm: 1.0,
            seed: 0,
            eval_every: 0,
            eval_batches: 20,
            save_every: 0,
            keep_last: 3,
            log_every: 1,
            device: "cpu".into(),
            mask_prob: 0.15,
            whole_word_masking: false,
            eval_after_growth: false,
            max_bad_steps: 5,
            schedule: ScheduleKind::Full,
            stages: Vec::new(),
            stage_steps: Vec::new(),
            stage_fracs: Vec::new(),
            init: String::new(),
            train_embeddings: false,
            keep_optimizer_state: false,
            global_lr_schedule: false,
            final_joint_frac: 0.1,
            train_old_layers: 0,
            untie_decoder: false,
            frozen_dropout: true,
            kernels: mslt_kernels::Kernels::Fused,
            frozen_dtype: "f32".into(),
            matmul_precision: "f32".into(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        frozen_dtype(&self.frozen_dtype)?;
        crate::matmul_tf32(&self.matmul_precision)?;
        let bad = |f: &str, m: String| {
            Err(Error::Config {
                origin: "train config".into(),
                field: f.into(),
                msg: m,
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup_frac) {
            return bad(
                "warmup_frac",
                format!("{} is outside [0, 1)", self.warmup_frac),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(
                "min_lr_ratio",
                format!("{} is outside [0, 1]", self.min_lr_ratio),
            );
        }
        if self.lamb_adapt_all && self.optimizer != crate::optim::Algorithm::Lamb {
            return bad(
                "lamb_adapt_all",
                format!(
                    "is set, but the optimizer is {} (expected lamb)",
                    self.optimizer
                ),
            );
        }
        if !(self.mask_prob > 0.0 && self.mask_prob < 1.0) {
            return bad("mask_prob", format!("{} is outside (0, 1)", self.mask_prob));
        }
        if self.log_every == 0 {
            return bad("log_every", "must be at least 1".into());
        }
        if self.data.as_os_str().is_empty() {
            return bad("data", "is required".into());
        }
        if self.out.as_os_str().is_empty() {
            return bad("out", "is required".into());
        }
        Ok(())
    }

    /// The LR schedule over `steps` steps (the run, or one stage).
    pub fn lr_schedule(&self, steps: u64) -> LrSchedule {
        let warmup = self
            .warmup_steps
            .unwrap_or_else(|| (self.warmup_frac * steps as f64).round() as u64)
            .min(steps);
        LrSchedule {
            peak: self.lr,
            warmup_steps: warmup,
            total_steps: steps,
            decay: self.decay,
            min_lr_ratio: self.min_lr_ratio,
        }
    }

    /// The learning rate of global step `step` in `stage`.
    pub fn lr_at(&self, stage: &Stage, step: u64) -> f64 {
        if self.global_lr_schedule || stage.steps == self.steps {
            self.lr_schedule(self.steps).lr(step)
        } else {
            self.lr_schedule(stage.steps).lr(step - stage.start)
        }
    }

    /// The stages of this run for a model of `target_depth` layers.
    pub fn plan(&self, target_depth: usize) -> Result<Vec<Stage>> {
        stages::plan(&ScheduleSpec {
            kind: self.schedule,
            target_depth,
            steps: self.steps,
            stages: &self.stages,
            stage_steps: &self.stage_steps,
            stage_fracs: &self.stage_fracs,
            final_joint_frac: self.final_joint_frac,
            train_embeddings: self.train_embeddings,
            train_old_layers: self.train_old_layers,
        })
    }

    /// The growth operator's name for this schedule.
    pub fn growth_init(&self) -> &str {
        match (self.init.as_str(), self.schedule) {
            ("", ScheduleKind::Stack) => "copy-stack",
            ("", _) => "copy-top",
            (s, _) => s,
        }
    }

    /// The fields that define the schedule: a resumed run must not change them (`steps` may
    /// change for the single-stage `full` schedule: extending a run is allowed there). Knobs
    /// added later appear only when set, so runs saved before them still resume.
    fn schedule_fingerprint(&self) -> String {
        let steps = if self.schedule == ScheduleKind::Full {
            0
        } else {
            self.steps
        };
        let mut later = String::new();
        if !self.stage_fracs.is_empty() {
            later += &format!(", stage_fracs {:?}", self.stage_fracs);
        }
        if self.train_old_layers > 0 {
            later += &format!(", train_old_layers {}", self.train_old_layers);
        }
        format!(
            "schedule {:?}, stages {:?}, stage_steps {:?}, steps {}, init {}, train_embeddings {}, final_joint_frac {}, keep_optimizer_state {}, global_lr_schedule {}{later}",
            self.schedule,
            self.stages,
            self.stage_steps,
            steps,
            self.growth_init(),
            self.train_embeddings,
            self.final_joint_frac,
            self.keep_optimizer_state,
            self.global_lr_schedule
        )
    }

    fn masking(&self) -> MaskingConfig {
        MaskingConfig {
            prob: self.mask_prob,
            whole_word: self.whole_word_masking,
            ..Default::default()
        }
    }

    fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig {
            algorithm: self.optimizer,
            lamb_adapt_all: self.lamb_adapt_all,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// One optimizer step, as written to metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub stage: usize,
    pub loss: f64,
    pub mlm_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsp_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    /// cumulative non-padding tokens
    pub tokens: u64,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    /// data-parallel runs: gradient bytes all-reduced this step (trainable parameters only)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_bytes: Option<u64>,
    /// data-parallel runs: seconds spent in the step's collectives (waiting for peers included)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    pub stage: usize,
    /// training wall-clock at this evaluation (evaluation time excluded)
    pub elapsed_s: f64,
    pub eval_loss: f64,
    pub eval_mlm_loss: f64,
    pub eval_mlm_acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_nsp_acc: Option<f64>,
    /// An evaluation right after a growth (`eval_after_growth`), at the same step as the one
    /// that closed the previous stage: the difference is the loss jump the growth caused.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub after_growth: bool,
}

/// What the loop reports as it goes (the CLI draws a progress bar from it).
pub enum Event<'a> {
    Started {
        start_step: u64,
        total_steps: u64,
        trainable_params: usize,
        notes: &'a [String],
    },
    Step(&'a StepRecord),
    Skipped {
        step: u64,
        reason: &'a str,
    },
    Eval(&'a EvalRecord),
    Stage(&'a StageRecord),
    Saved(&'a Path),
}

pub struct Summary {
    pub steps: u64,
    /// the newest checkpoint (`None` on ranks other than 0, which write none)
    pub last_checkpoint: Option<PathBuf>,
    pub final_eval: Option<EvalRecord>,
    pub tokens: u64,
    pub elapsed_s: f64,
    /// data-parallel ranks of the run
    pub world_size: usize,
    /// total gradient bytes all-reduced / seconds in collectives (0 for a single process)
    pub allreduce_bytes: u64,
    pub comm_s: f64,
    /// the parameters at the end (every rank holds the same values)
    pub params: BTreeMap<String, Tensor>,
}

/// Where a run starts: all parameters (at the depth of the starting stage), the config of
/// that model, the state, and the optimizer state to restore when resuming.
struct Setup {
    model_cfg: BertConfig,
    params: Params,
    state: TrainState,
    optimizer: Option<HashMap<String, Tensor>>,
    notes: Vec<String>,
}

fn step_seed(seed: u64, tag: u64, step: u64, micro: u64) -> u64 {
    let mut x = seed ^ tag.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= micro.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x
}

/// Checks that `dir` can be written (a clear error for read-only or full disks up front).
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(".mslt-write-probe");
    let r = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| {
        Error::Input(format!(
            "output directory {} is not writable: {e}",
            dir.display()
        ))
    })
}

fn data_fingerprint(d: &DataSet) -> DataFingerprint {
    DataFingerprint {
        vocab_hash: d.manifest.vocab_hash.clone(),
        seq_len: d.manifest.seq_len,
        nsp: d.manifest.nsp,
    }
}

/// Resolves the model config of a fresh run: preset name or config.json path.
pub fn resolve_model_config(spec: &str) -> Result<BertConfig> {
    if let Some(c) = BertConfig::preset(spec) {
        return Ok(c);
    }
    let p = Path::new(spec);
    if p.is_file() {
        return BertConfig::from_file(p);
    }
    if p.is_dir() && p.join("config.json").is_file() {
        return BertConfig::from_file(&p.join("config.json"));
    }
    Err(Error::Input(format!(
        "model config `{spec}`: not a preset ({}) nor a config.json file",
        crate::config::PRESETS
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn check_data_fits(cfg: &BertConfig, data: &DataSet) -> Result<()> {
    let m = &data.manifest;
    if m.vocab_size > cfg.vocab_size {
        return Err(Error::Input(format!(
            "{}: the data's tokenizer has {} tokens, more than the model's vocab_size {}",
            data.dir.display(),
            m.vocab_size,
            cfg.vocab_size
        )));
    }
    if m.seq_len > cfg.max_position_embeddings {
        return Err(Error::Input(format!(
            "{}: seq len {} is beyond the model's max_position_embeddings {}",
            data.dir.display(),
            m.seq_len,
            cfg.max_position_embeddings
        )));
    }
    Ok(())
}

/// The target model config of a run: `init_from`'s config (deepened to the last stage), or the
/// preset / config.json named by `model_config`.
fn target_config(cfg: &TrainConfig, init_from: Option<&BertConfig>) -> Result<BertConfig> {
    let mut t = match init_from {
        Some(c) => {
            let mut t = c.clone();
            if let Some(&d) = cfg.stages.last() {
                t.num_hidden_layers = d;
            }
            t
        }
        None => resolve_model_config(&cfg.model_config)?,
    };
    if cfg.untie_decoder {
        t.tie_word_embeddings = false;
    }
    Ok(t)
}

fn setup(
    cfg: &TrainConfig,
    resume: bool,
    train: &DataSet,
    device: &Device,
) -> Result<(Setup, BertConfig, Vec<Stage>)> {
    let mut notes = Vec::new();
    let fingerprint = data_fingerprint(train);
    if resume {
        let dir = checkpoint::latest(&cfg.out).ok_or_else(|| {
            Error::Input(format!(
                "--resume: {} has no complete checkpoint",
                cfg.out.display()
            ))
        })?;
        let state = checkpoint::load_state(&dir)?;
        if state.data != fingerprint {
            return Err(Error::Input(format!(
                "--resume: {} was trained on data with {:?}, but {} has {:?} (another tokenizer, seq len or NSP setting)",
                dir.display(),
                state.data,
                train.dir.display(),
                fingerprint
            )));
        }
        let prev: TrainConfig =
            serde_json::from_value(state.run.clone()).map_err(|e| Error::Config {
                origin: dir.join("state.json").display().to_string(),
                field: "run".into(),
                msg: e.to_string(),
            })?;
        if prev.schedule_fingerprint() != cfg.schedule_fingerprint() {
            return Err(Error::Input(format!(
                "--resume: the schedule differs from the checkpoint's ({}; now {})",
                prev.schedule_fingerprint(),
                cfg.schedule_fingerprint()
            )));
        }
        if (prev.optimizer, prev.lamb_adapt_all) != (cfg.optimizer, cfg.lamb_adapt_all) {
            let name = |o: crate::optim::Algorithm, all: bool| {
                format!("{o}{}", if all { " with lamb_adapt_all" } else { "" })
            };
            return Err(Error::Input(format!(
                "--resume: {} was trained with the optimizer {}, this run asks for {} (pass the checkpoint's optimizer settings, or start a new run with --init-from)",
                dir.display(),
                name(prev.optimizer, prev.lamb_adapt_all),
                name(cfg.optimizer, cfg.lamb_adapt_all),
            )));
        }
        if (prev.batch_size, prev.grad_accum, prev.seed)
            != (cfg.batch_size, cfg.grad_accum, cfg.seed)
        {
            notes.push(format!(
                "warning: batch_size/grad_accum/seed changed since the checkpoint ({}/{}/{} -> {}/{}/{}); the data order differs from an uninterrupted run",
                prev.batch_size, prev.grad_accum, prev.seed, cfg.batch_size, cfg.grad_accum, cfg.seed
            ));
        }
        let files = ModelFiles::from_dir(&dir)?;
        let model_cfg = files.load_config()?;
        // the checkpoint's own config when the run started from --init-from, else the preset /
        // config.json; deepened to the last stage and untied as the run asks
        let target = target_config(cfg, cfg.init_from.is_some().then_some(&model_cfg))?;
        if model_cfg.tie_word_embeddings != target.tie_word_embeddings {
            let tied = |t: bool| if t { "a tied" } else { "an untied" };
            return Err(Error::Input(format!(
                "--resume: checkpoint {} has {} MLM decoder, this run asks for {} one (tie_word_embeddings {} vs {}; --untie-decoder unties)",
                dir.display(),
                tied(model_cfg.tie_word_embeddings),
                tied(target.tie_word_embeddings),
                model_cfg.tie_word_embeddings,
                target.tie_word_embeddings
            )));
        }
        let mut same = model_cfg.clone();
        same.num_hidden_layers = target.num_hidden_layers;
        if same != target {
            return Err(Error::Input(format!(
                "--resume: checkpoint {} has a different model config than `{}` (hidden {}, heads {}, vocab {} vs {}, {}, {})",
                dir.display(),
                cfg.model_config,
                model_cfg.hidden_size,
                model_cfg.num_attention_heads,
                model_cfg.vocab_size,
                target.hidden_size,
                target.num_attention_heads,
                target.vocab_size
            )));
        }
        let plan = cfg.plan(target.num_hidden_layers)?;
        let stage = plan
            .get(state.stage)
            .unwrap_or_else(|| plan.last().expect("non-empty plan"));
        let expected_depth = if state.step > stage.start || state.stage == 0 {
            stage.depth
        } else {
            plan[state.stage - 1].depth
        };
        if model_cfg.num_hidden_layers != expected_depth {
            return Err(Error::Input(format!(
                "--resume: checkpoint {} has {} layers, but stage {} of the schedule at step {} expects {}",
                dir.display(),
                model_cfg.num_hidden_layers,
                state.stage,
                state.step,
                expected_depth
            )));
        }
        check_data_fits(&model_cfg, train)?;
        let w = load_safetensors(&files.weights, &model_cfg, device)?;
        // Every parameter must be there (a checkpoint of ours has all heads).
        BertForPreTraining::from_tensors(&model_cfg, &w.tensors, &w.origin)?;
        let params = Params::from_tensors(&w.tensors)?;
        let optimizer = Some(checkpoint::load_optimizer(&dir, device)?);
        notes.push(format!(
            "resumed from {} (step {}, stage {})",
            dir.display(),
            state.step,
            state.stage
        ));
        return Ok((
            Setup {
                model_cfg,
                params,
                state,
                optimizer,
                notes,
            },
            target,
            plan,
        ));
    }
    if !checkpoint::list(&cfg.out).is_empty() {
        return Err(Error::Input(format!(
            "{} already has checkpoints: pass --resume to continue it, or choose another --out",
            cfg.out.display()
        )));
    }
    let mut rng = Rng::new(step_seed(cfg.seed, 1, 0, 0));
    let (target, model_cfg, tensors) = match &cfg.init_from {
        Some(spec) => {
            let files = ModelFiles::resolve(spec)?;
            let mc = files.load_config()?;
            if files.tokenizer_json.is_some() || files.vocab_txt.is_some() {
                let tok = crate::tokenizer::BertTokenizer::from_model(&files)?;
                let (h, _) = crate::data::prepare::vocab_fingerprint(&tok);
                if h != train.manifest.vocab_hash {
                    return Err(Error::Input(format!(
                        "--init-from {spec}: its tokenizer differs from the one {} was prepared with (vocabulary hash {} vs {})",
                        train.dir.display(),
                        h,
                        train.manifest.vocab_hash
                    )));
                }
            }
            let mut w = load_safetensors(&files.weights, &mc, device)?;
            if let Some(note) = w.unused_note() {
                notes.push(format!("{spec}: {note}"));
            }
            let mut mc = mc;
            if cfg.untie_decoder {
                mc.tie_word_embeddings = false;
            }
            for head in init_missing_heads(&mc, &mut w.tensors, &mut rng, device)? {
                notes.push(format!(
                    "{spec} has no {head}: initialised fresh (BERT init)"
                ));
            }
            if crate::weights::untie_decoder(&mc, &mut w.tensors)? {
                notes.push(format!(
                    "{spec} ties its MLM decoder to the word embeddings: the untied decoder starts as a copy of them"
                ));
            }
            notes.push(format!("initialised from {spec}"));
            (target_config(cfg, Some(&mc))?, mc, w.tensors)
        }
        None => {
            let target = target_config(cfg, None)?;
            let plan = cfg.plan(target.num_hidden_layers)?;
            let mut mc = target.clone();
            mc.num_hidden_layers = plan[0].depth;
            notes.push(format!(
                "initialised `{}` ({} of {} layers) from scratch (BERT init, N(0, {}))",
                cfg.model_config,
                mc.num_hidden_layers,
                target.num_hidden_layers,
                mc.initializer_range
            ));
            let t = init_all(&mc, &mut rng, device)?;
            (target, mc, t)
        }
    };
    let plan = cfg.plan(target.num_hidden_layers)?;
    if model_cfg.num_hidden_layers != plan[0].depth {
        return Err(Error::Input(format!(
            "the initial model has {} layers but the first stage of the schedule has {}",
            model_cfg.num_hidden_layers, plan[0].depth
        )));
    }
    check_data_fits(&model_cfg, train)?;
    BertForPreTraining::from_tensors(&model_cfg, &tensors, "init")?;
    let params = Params::from_tensors(&tensors)?;
    let state = TrainState {
        format: checkpoint::FORMAT.into(),
        step: 0,
        samples: 0,
        tokens: 0,
        elapsed_s: 0.0,
        skipped_steps: 0,
        data: fingerprint,
        stage: 0,
        run: serde_json::to_value(cfg).expect("config serialises"),
        world_size: 1,
    };
    Ok((
        Setup {
            model_cfg,
            params,
            state,
            optimizer: None,
            notes,
        },
        target,
        plan,
    ))
}

/// Keeps metrics.jsonl consistent with a resumed step: drops the lines past it, and the
/// stage-start line (and after-growth evaluation) of the stage being resumed into (they are
/// written again).
fn open_metrics(path: &Path, resume_step: Option<u64>) -> Result<std::fs::File> {
    let kept = match (resume_step, std::fs::read_to_string(path)) {
        (Some(step), Ok(text)) => text
            .lines()
            .filter(|l| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                    return false;
                };
                let s = v.get("step").and_then(|s| s.as_u64()).unwrap_or(u64::MAX);
                let start = v.get("event").and_then(|e| e.as_str()) == Some("stage_start");
                // a growth is redone on resume, with its evaluation
                let after_growth = v.get("after_growth").and_then(|a| a.as_bool()) == Some(true);
                s < step || (s == step && !start && !after_growth)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        _ => String::new(),
    };
    crate::data::shards::write_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn append(f: &mut std::fs::File, path: &Path, v: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(v).expect("record serialises");
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// The frozen-layer settings of `cfg` applied to a stage model: frozen dropout, and the fused
/// kernels where they apply (CUDA; with frozen dropout on, attention stays on Candle ops).
/// Returns the number of fused layers.
pub fn prepare_frozen(model: &mut BertForPreTraining, cfg: &TrainConfig) -> Result<usize> {
    model.frozen_dropout = cfg.frozen_dropout;
    if cfg.kernels != mslt_kernels::Kernels::Fused {
        return Ok(0);
    }
    model.use_fused_kernels(crate::model::FusedOptions {
        dtype: frozen_dtype(&cfg.frozen_dtype)?,
        allow_cpu: false,
    })
}

/// Parses a frozen-layer dtype: f32 or bf16.
pub fn frozen_dtype(s: &str) -> Result<candle_core::DType> {
    match s {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        o => Err(Error::Input(format!(
            "frozen_dtype {o:?}: expected f32 or bf16"
        ))),
    }
}

/// The model of a stage and its trainable (name, var) list: trainable parameters as tracked
/// tensors, frozen ones detached (no
/// graph is recorded through them; they take the fused no-backward ops).
pub fn stage_model(
    cfg: &BertConfig,
    params: &Params,
    stage: &Stage,
) -> Result<(BertForPreTraining, Vec<(String, Var)>)> {
    let mut map = HashMap::new();
    let mut trainable = Vec::new();
    for (name, var) in &params.vars {
        if stage.trains(name) {
            map.insert(name.clone(), var.as_tensor().clone());
            trainable.push((name.clone(), var.clone()));
        } else {
            map.insert(name.clone(), var.as_tensor().detach());
        }
    }
    Ok((
        BertForPreTraining::from_tensors(cfg, &map, "params")?,
        trainable,
    ))
}

/// A stage boundary or growth, as written to metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct StageRecord {
    pub step: u64,
    /// stage_start, stage_end, or stage_resume (a run resumed in the middle of the stage)
    pub event: &'static str,
    pub stage: usize,
    pub depth: usize,
    pub trainable_params: usize,
    pub frozen_layers: usize,
    pub train_embeddings: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<crate::growth::GrowthReport>,
    /// data-parallel runs: how this stage's trainable gradients are all-reduced
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce: Option<AllReducePlan>,
}

/// The gradient all-reduce of a stage (data-parallel runs).
#[derive(Clone, Debug, Serialize)]
pub struct AllReducePlan {
    pub world_size: usize,
    pub backend: &'static str,
    pub buckets: usize,
    /// f32 gradient bytes per step (trainable parameters only)
    pub bytes: usize,
    /// parameters in each bucket, top of the model first
    pub bucket_params: Vec<usize>,
}

/// Runs (or resumes) pre-training as configured, in this process alone.
pub fn train(cfg: &TrainConfig, resume: bool, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
    let device = crate::device(&cfg.device)?;
    train_on(cfg, resume, &device, &crate::dist::Single, on_event)
}

/// Appends records to metrics.jsonl on rank 0; other ranks write nothing.
struct Metrics(Option<(std::fs::File, PathBuf)>);

impl Metrics {
    fn append(&mut self, v: &impl Serialize) -> Result<()> {
        match &mut self.0 {
            Some((f, p)) => append(f, p, v),
            None => Ok(()),
        }
    }
}

/// Mixes the rank into a dropout seed (rank 0 keeps the single-process seed).
fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed ^ (rank as u64).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// Runs (or resumes) pre-training as rank `comm.rank()` of a data-parallel world on `device`.
/// Every rank reads the same global batch (`batch_size` sequences per micro-batch) and trains
/// on its share; the trainable gradients are summed over the ranks in buckets; rank 0 alone
/// writes config.json, metrics.jsonl and checkpoints. With [`crate::dist::Single`] this is plain
/// single-process training.
pub fn train_on(
    cfg: &TrainConfig,
    resume: bool,
    device: &Device,
    comm: &dyn crate::dist::Collective,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    cfg.validate()?;
    let device = device.clone();
    crate::set_matmul_precision(&cfg.matmul_precision, &device)?;
    let (rank, world) = (comm.rank(), comm.world_size());
    let rank0 = rank == 0;
    // Data-parallel: any real process group, even of one rank (then the collectives run too).
    let dp = comm.backend() != "single";
    let shard = crate::dist::shard_range(cfg.batch_size, rank, world)?;
    let mut train = DataSet::open(&cfg.data, "train")?;
    let val = if train.manifest.val.sequences > 0 {
        Some(DataSet::open(&cfg.data, "val")?)
    } else {
        None
    };
    if cfg.batch_size > train.len() {
        return Err(Error::Input(format!(
            "batch size {} is larger than the {} training sequences in {}",
            cfg.batch_size,
            train.len(),
            cfg.data.display()
        )));
    }
    if rank0 {
        check_writable(&cfg.out)?;
        checkpoint::clean_partial(&cfg.out);
    }
    let (setup, target_cfg, plan) = setup(cfg, resume, &train, &device)?;
    let Setup {
        mut model_cfg,
        mut params,
        mut state,
        optimizer: mut restored_opt,
        mut notes,
    } = setup;
    state.run = serde_json::to_value(cfg).expect("config serialises");
    if resume && state.world_size != world {
        notes.push(format!(
            "warning: the checkpoint was trained with {} data-parallel rank(s), this run has {world}: the global batch and data order are unchanged (each rank takes batch_size / world_size sequences of it), the dropout streams differ from an uninterrupted run",
            state.world_size
        ));
    }
    state.world_size = world;
    if dp {
        // Identical starting weights everywhere, whatever each rank loaded or drew.
        for var in params.vars.values() {
            let t = comm.broadcast(var.as_tensor(), 0)?;
            var.set(&t)?;
        }
        notes.push(format!(
            "data-parallel rank {rank} of {world} ({}): sequences {}..{} of each global micro-batch of {}",
            comm.backend(),
            shard.start,
            shard.end,
            cfg.batch_size
        ));
    }
    let run_json = serde_json::json!({
        "run": cfg, "model": target_cfg.to_hf_json(), "stages": plan, "data": train.manifest
    });
    let metrics_path = cfg.out.join("metrics.jsonl");
    let mut metrics = Metrics(None);
    if rank0 {
        crate::data::shards::write_atomic(
            &cfg.out.join("config.json"),
            serde_json::to_string_pretty(&run_json)
                .expect("json")
                .as_bytes(),
        )?;
        let f = open_metrics(&metrics_path, resume.then_some(state.step))?;
        metrics = Metrics(Some((f, metrics_path.clone())));
    }
    let tokenizer_file = cfg.data.join(&train.manifest.tokenizer_file);
    let masking = cfg.masking();
    let nsp = train.manifest.nsp;
    let growth_op = crate::growth::operator(cfg.growth_init())?;
    let inject_nan: Vec<u64> = std::env::var("MSLT_TEST_INJECT_NAN")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();

    on_event(Event::Started {
        start_step: state.step,
        total_steps: cfg.steps,
        trainable_params: params.num_elements(),
        notes: &notes,
    });

    let t0 = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut overhead_s = 0f64;
    let mut bad_run = 0u64;
    let mut last_ckpt = if rank0 {
        checkpoint::latest(&cfg.out)
    } else {
        None
    };
    let (mut total_comm_s, mut total_bytes) = (0f64, 0u64);
    let mut final_eval = None;
    // Moments handed from one stage to the next (keep_optimizer_state) or from a checkpoint.
    let mut carried: Option<(HashMap<String, Tensor>, bool)> =
        restored_opt.take().map(|o| (o, true));
    while state.stage < plan.len() {
        let stage = plan[state.stage].clone();
        let at_boundary = state.step == stage.start;
        if at_boundary && state.stage > 0 && !cfg.keep_optimizer_state {
            carried = None; // a fresh optimizer for the new stage
        } else if at_boundary && state.stage > 0 {
            if let Some((_, all)) = &mut carried {
                *all = false; // new parameters join with fresh moments
            }
        }
        let mut growth = None;
        if model_cfg.num_hidden_layers < stage.depth {
            let mut grng = Rng::new(step_seed(cfg.seed, 4, stage.index as u64, 0));
            let (c, t, r) = crate::growth::grow(
                &params.tensors(),
                &model_cfg,
                stage.depth,
                growth_op.as_ref(),
                &mut grng,
            )?;
            model_cfg = c;
            params = Params::from_tensors(&t)?;
            growth = Some(r);
        }
        let grew = growth.is_some();
        let (mut model, named) = stage_model(&model_cfg, &params, &stage)?;
        let fused = prepare_frozen(&mut model, cfg)?;
        if fused > 0 {
            tracing::info!(
                "stage {}: {fused} frozen layers on the fused kernels ({})",
                stage.index,
                cfg.frozen_dtype
            );
        }
        let mut opt = Optimizer::new(named.clone(), cfg.optimizer())?;
        if let Some((map, require_all)) = carried.take() {
            opt.load_state(&map, require_all)?;
        }
        let trainable_params: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
        let shapes: Vec<candle_core::Shape> =
            named.iter().map(|(_, v)| v.shape().clone()).collect();
        let sizes: Vec<usize> = shapes.iter().map(|s| s.elem_count()).collect();
        let buckets = crate::dist::BucketPlan::new(&sizes, crate::dist::DEFAULT_BUCKET_BYTES);
        let allreduce = dp.then(|| AllReducePlan {
            world_size: world,
            backend: comm.backend(),
            buckets: buckets.buckets.len(),
            bytes: buckets.bytes(),
            bucket_params: buckets.buckets.iter().map(|b| b.params.len()).collect(),
        });
        let rec = StageRecord {
            step: state.step,
            event: if at_boundary {
                "stage_start"
            } else {
                "stage_resume"
            },
            stage: stage.index,
            depth: stage.depth,
            trainable_params,
            frozen_layers: stage.train_from_layer,
            train_embeddings: stage.train_embeddings,
            growth,
            allreduce,
        };
        metrics.append(&rec)?;
        on_event(Event::Stage(&rec));

        let save = |state: &TrainState, opt: &Optimizer| -> Result<PathBuf> {
            let model_tensors: BTreeMap<String, Tensor> = params
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect();
            checkpoint::save(checkpoint::SaveRequest {
                run_dir: &cfg.out,
                model: &model_tensors,
                config: &model_cfg,
                optimizer: opt.state(),
                state,
                tokenizer: tokenizer_file.is_file().then_some(tokenizer_file.as_path()),
                keep_last: cfg.keep_last,
            })
        };
        let run_eval = |step: u64, elapsed_s: f64| -> Result<Option<EvalRecord>> {
            let Some(val) = &val else { return Ok(None) };
            let mut frozen =
                BertForPreTraining::from_tensors(&model_cfg, &params.detached(), "params")?;
            if cfg.kernels == mslt_kernels::Kernels::Fused {
                frozen.use_fused_kernels(crate::model::FusedOptions {
                    dtype: frozen_dtype(&cfg.frozen_dtype)?,
                    allow_cpu: false,
                })?;
            }
            let r = eval::evaluate(
                &frozen,
                val,
                &masking,
                cfg.batch_size,
                cfg.eval_batches,
                cfg.seed,
            )?;
            Ok(Some(EvalRecord {
                step,
                stage: stage.index,
                elapsed_s,
                eval_loss: r.loss,
                eval_mlm_loss: r.mlm_loss,
                eval_mlm_acc: r.mlm_acc,
                eval_nsp_acc: r.nsp_acc,
                after_growth: false,
            }))
        };
        if cfg.eval_after_growth && grew && rank0 {
            let eval_t0 = Instant::now();
            if let Some(mut e) = run_eval(state.step, state.elapsed_s)? {
                e.after_growth = true;
                metrics.append(&e)?;
                on_event(Event::Eval(&e));
            }
            overhead_s += eval_t0.elapsed().as_secs_f64();
        }

        while state.step < stage.end() {
            let step = state.step;
            let lr = cfg.lr_at(&stage, step);
            let mut grads: Vec<Option<Tensor>> = vec![None; named.len()];
            let (mut loss_sum, mut mlm_sum, mut nsp_sum) = (0f64, 0f64, 0f64);
            let mut tokens = 0u64;
            for micro in 0..cfg.grad_accum as u64 {
                let counter = (step * cfg.grad_accum as u64 + micro) * cfg.batch_size as u64;
                let seqs = train.shuffled(counter, cfg.batch_size, cfg.seed);
                let mut mrng = Rng::new(step_seed(cfg.seed, 2, step, micro));
                let global = train.mask(&seqs, &masking, &mut mrng);
                tokens += global.tokens as u64;
                let denom = crate::model::LossDenominators {
                    mlm: global.predicted(),
                    nsp: global.b,
                };
                let hb = if world > 1 {
                    global.rows(shard.clone())
                } else {
                    global
                };
                let input = BertInput::from_host(
                    &model_cfg,
                    (hb.b, hb.t),
                    &hb.input_ids,
                    Some(&hb.attention_mask),
                    Some(&hb.token_type_ids),
                    &device,
                )?;
                let targets = if hb.predicted() > 0 {
                    Some(MlmTargets::from_labels(
                        &hb.mlm_labels,
                        model_cfg.vocab_size,
                        &device,
                    )?)
                } else if world == 1 {
                    return Err(Error::Input(
                        "no masked positions in the batch (all labels are -100)".into(),
                    ));
                } else {
                    None // this rank's share has no predicted token: no MLM term here
                };
                let nsp_labels = if nsp {
                    let v: Vec<u32> = hb.nsp_labels.iter().map(|&x| x as u32).collect();
                    Some(Tensor::from_vec(v, hb.b, &device)?)
                } else {
                    None
                };
                let dseed = rank_seed(step_seed(cfg.seed, 3, step, micro), rank);
                if !device.is_cpu() {
                    device.set_seed(dseed)?; // device-side dropout masks (see nn::dropout)
                }
                let mut drng = Rng::new(dseed);
                let Some(l) = model.pretraining_loss_over(
                    &input,
                    targets.as_ref(),
                    nsp_labels.as_ref(),
                    &mut Mode::Train(&mut drng),
                    denom,
                )?
                else {
                    continue; // nothing to learn from on this rank (its gradients count as 0)
                };
                let mut loss = (&l.loss / cfg.grad_accum as f64)?;
                if inject_nan.contains(&(step + 1)) {
                    loss = (loss * f64::NAN)?;
                }
                loss_sum += loss.to_scalar::<f32>()? as f64;
                mlm_sum += l.mlm_loss.to_scalar::<f32>()? as f64 / cfg.grad_accum as f64;
                if let Some(n) = &l.nsp_loss {
                    nsp_sum += n.to_scalar::<f32>()? as f64 / cfg.grad_accum as f64;
                }
                let store = loss.backward()?;
                for (slot, (_, var)) in grads.iter_mut().zip(&named) {
                    if let Some(g) = store.get(var.as_tensor()) {
                        *slot = Some(match slot.take() {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let (mut comm_s, mut step_bytes) = (None, None);
            if dp {
                if !device.is_cpu() {
                    device.synchronize()?; // time the collectives, not the backward before them
                }
                let c0 = Instant::now();
                buckets.all_reduce(comm, &mut grads, &shapes, &device)?;
                let parts =
                    Tensor::new(&[loss_sum as f32, mlm_sum as f32, nsp_sum as f32], &device)?;
                let parts = comm.all_reduce_sum(&parts)?.to_vec1::<f32>()?;
                (loss_sum, mlm_sum, nsp_sum) = (parts[0] as f64, parts[1] as f64, parts[2] as f64);
                let dt = c0.elapsed().as_secs_f64();
                comm_s = Some(dt);
                step_bytes = Some(buckets.bytes() as u64);
                total_comm_s += dt;
                total_bytes += buckets.bytes() as u64;
            }
            let norm = crate::optim::grad_norm(&grads)?;
            if !norm.is_finite() || !loss_sum.is_finite() {
                bad_run += 1;
                state.skipped_steps += 1;
                let reason =
                    format!("non-finite loss ({loss_sum}) or gradient norm ({norm}): step skipped");
                metrics.append(&serde_json::json!({"step": step + 1, "skipped": reason}))?;
                on_event(Event::Skipped {
                    step: step + 1,
                    reason: &reason,
                });
                if bad_run >= cfg.max_bad_steps {
                    return Err(Error::Input(format!(
                        "stopped: {bad_run} consecutive steps with non-finite loss or gradients (at step {}); the last good checkpoint is {}",
                        step + 1,
                        last_ckpt.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
                    )));
                }
                // The data and RNG of a step depend on the step index alone: move on.
                state.step += 1;
                continue;
            }
            bad_run = 0;
            crate::optim::clip_grads(&mut grads, norm, cfg.clip_norm)?;
            opt.set_lr(lr);
            opt.step_grads(&grads)?;
            state.step += 1;
            state.samples += (cfg.batch_size * cfg.grad_accum) as u64;
            state.tokens += tokens;
            state.elapsed_s = elapsed_before + t0.elapsed().as_secs_f64() - overhead_s;
            let rec = StepRecord {
                step: state.step,
                stage: stage.index,
                loss: loss_sum,
                mlm_loss: mlm_sum,
                nsp_loss: nsp.then_some(nsp_sum),
                lr,
                grad_norm: norm,
                tokens: state.tokens,
                elapsed_s: state.elapsed_s,
                tokens_per_s: state.tokens as f64 / state.elapsed_s.max(1e-9),
                allreduce_bytes: step_bytes,
                comm_s,
            };
            if state.step % cfg.log_every == 0 || state.step == stage.end() {
                metrics.append(&rec)?;
            }
            on_event(Event::Step(&rec));
            let stage_end = state.step == stage.end();
            let last = state.step == cfg.steps;
            if rank0 && ((cfg.eval_every > 0 && state.step % cfg.eval_every == 0) || stage_end) {
                let eval_t0 = Instant::now();
                let e = run_eval(state.step, state.elapsed_s)?;
                // Evaluation and checkpoint writing are not training time: they are kept out of
                // elapsed_s and tokens/s (schedules with more stages save more often).
                overhead_s += eval_t0.elapsed().as_secs_f64();
                if let Some(e) = e {
                    metrics.append(&e)?;
                    on_event(Event::Eval(&e));
                    if last {
                        final_eval = Some(e);
                    }
                }
            }
            if stage_end {
                let rec = StageRecord {
                    event: "stage_end",
                    step: state.step,
                    stage: stage.index,
                    depth: stage.depth,
                    trainable_params,
                    frozen_layers: stage.train_from_layer,
                    train_embeddings: stage.train_embeddings,
                    growth: None,
                    allreduce: None,
                };
                metrics.append(&rec)?;
                on_event(Event::Stage(&rec));
                state.stage += 1;
            }
            if rank0 && ((cfg.save_every > 0 && state.step % cfg.save_every == 0) || stage_end) {
                let save_t0 = Instant::now();
                let p = save(&state, &opt)?;
                overhead_s += save_t0.elapsed().as_secs_f64();
                on_event(Event::Saved(&p));
                last_ckpt = Some(p);
            }
        }
        if cfg.keep_optimizer_state {
            carried = Some((opt.state(), false));
        }
        if state.step == stage.end() && state.stage == stage.index {
            state.stage += 1; // an empty remainder (resumed exactly at the end of the stage)
        }
    }
    if rank0 && last_ckpt.is_none() {
        return Err(Error::Input("the run saved no checkpoint".into()));
    }
    Ok(Summary {
        steps: state.step,
        last_checkpoint: last_ckpt,
        final_eval,
        tokens: state.tokens,
        elapsed_s: state.elapsed_s,
        world_size: world,
        allreduce_bytes: total_bytes,
        comm_s: total_comm_s,
        params: params
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect(),
    })
}

/// Loads a checkpoint directory (or a run directory's newest checkpoint, or any HF model
/// directory with an MLM head) as a frozen model.
pub fn load_for_eval(spec: &Path, device: &Device) -> Result<(BertForPreTraining, PathBuf)> {
    let dir = checkpoint::resolve_dir(spec)?;
    let files = ModelFiles::from_dir(&dir)?;
    let cfg = files.load_config()?;
    let w = load_safetensors(&files.weights, &cfg, device)?;
    if let Some(note) = w.unused_note() {
        tracing::warn!("{}: {note}", files.name);
    }
    let m = BertForPreTraining::from_tensors(&cfg, &w.tensors, &w.origin)?;
    if m.mlm.is_none() {
        return Err(Error::Input(format!(
            "{}: the model has no MLM head (cls.predictions.*), so MLM loss cannot be evaluated",
            dir.display()
        )));
    }
    Ok((m, dir))
}
