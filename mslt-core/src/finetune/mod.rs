//! Fine-tuning for sequence classification (single sentences and sentence pairs) on the pooled
//! `[CLS]` output, as Hugging Face `BertForSequenceClassification`: pooler (tanh dense on the
//! first token), dropout, a linear classifier (`classifier.weight` / `classifier.bias`).
//!
//! Recipe: AdamW (no decay on biases / LayerNorm), linear warm-up then linear decay to 0,
//! global-norm clipping, dropout as the model config says (0.1 for BERT), a few epochs, dev
//! evaluation after each epoch. Several seeds give a mean and standard deviation.

pub mod task;

use crate::error::{Error, Result};
use crate::model::{names, BertForPreTraining, Heads};
use crate::nn::{dropout, Linear, Mode};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use crate::tokenizer::BertTokenizer as Tokenizer;
use crate::weights::{init_tensor, load_safetensors, ModelFiles, Params};
use crate::{BertConfig, BertInput};
use candle_core::{Device, Tensor, D};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use task::{load_task, Example, Metric, Task};

/// Every knob of a fine-tuning run.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneConfig {
    /// RUN_DIR (its newest checkpoint), a checkpoint or HF model directory, or a hub id.
    pub checkpoint: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_frac: f64,
    pub weight_decay: f64,
    pub clip_norm: f64,
    pub max_seq_len: usize,
    pub seed: u64,
    /// Use only the first N training examples (0: all).
    pub max_train: usize,
    /// Use only the first N dev examples (0: all).
    pub max_dev: usize,
    pub device: String,
    /// f32 matrix products on CUDA: f32 or tf32 (see [`crate::set_matmul_precision`]).
    pub matmul_precision: String,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            checkpoint: String::new(),
            epochs: 3,
            batch_size: 32,
            lr: 3e-5,
            warmup_frac: 0.1,
            weight_decay: 0.01,
            clip_norm: 1.0,
            max_seq_len: 128,
            seed: 0,
            max_train: 0,
            max_dev: 0,
            device: "cpu".into(),
            matmul_precision: "f32".into(),
        }
    }
}

/// Dev metrics. F1 (of the second label, e.g. "1") and Matthews correlation for binary tasks.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub f1: Option<f64>,
    pub matthews: Option<f64>,
    pub loss: f64,
    pub examples: usize,
}

impl Metrics {
    pub fn primary(&self, m: Metric) -> f64 {
        match m {
            Metric::Accuracy => self.accuracy,
            Metric::F1 => self.f1.unwrap_or(f64::NAN),
            Metric::Matthews => self.matthews.unwrap_or(f64::NAN),
        }
    }
}

/// Accuracy, and for two classes F1 of class 1 and Matthews correlation.
pub fn metrics(pred: &[usize], gold: &[usize], classes: usize, loss: f64) -> Metrics {
    let n = pred.len().max(1) as f64;
    let acc = pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / n;
    let (mut f1, mut mcc) = (None, None);
    if classes == 2 {
        let c = |p: usize, g: usize| {
            pred.iter()
                .zip(gold)
                .filter(|&(&a, &b)| a == p && b == g)
                .count() as f64
        };
        let (tp, tn, fp, fn_) = (c(1, 1), c(0, 0), c(1, 0), c(0, 1));
        f1 = Some(if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        });
        let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        mcc = Some(if den == 0.0 {
            0.0
        } else {
            (tp * tn - fp * fn_) / den
        });
    }
    Metrics {
        accuracy: acc,
        f1,
        matthews: mcc,
        loss,
        examples: pred.len(),
    }
}

/// BERT with a sequence-classification head.
pub struct Classifier {
    pub bert: BertForPreTraining,
    /// classifier (K, C)
    pub classifier: Linear,
    pub dropout: f64,
}

impl Classifier {
    /// Logits (B, K).
    pub fn logits(&self, input: &BertInput, mode: &mut Mode) -> Result<Tensor> {
        let h = self.bert.encode(input, mode, false)?.last_hidden_state; // (B, T, C)
        let pooled = self
            .bert
            .pool(&h)?
            .ok_or_else(|| Error::Input("the model has no pooler".into()))?; // (B, C)
        let pooled = dropout(&pooled, self.dropout, mode)?;
        Ok(self.classifier.forward(&pooled)?)
    }
}

/// A tokenised example: ids and segment ids, `[CLS] a [SEP] (b [SEP])`, truncated longest-first.
#[derive(Clone, Debug)]
struct Encoded {
    enc: crate::tokenizer::Encoded,
    label: usize,
}

fn encode_examples(
    tok: &Tokenizer,
    task: &Task,
    ex: &[Example],
    max_len: usize,
) -> Result<Vec<Encoded>> {
    let special = |t: &str| {
        tok.inner()
            .token_to_id(t)
            .ok_or_else(|| Error::Input(format!("tokenizer {} has no {t} token", tok.origin())))
    };
    let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
    ex.iter()
        .map(|e| {
            let mut a = tok.tokenize_ids(&e.a)?;
            let mut b = match &e.b {
                Some(b) => tok.tokenize_ids(b)?,
                None => Vec::new(),
            };
            let budget = max_len.saturating_sub(if e.b.is_some() { 3 } else { 2 });
            while a.len() + b.len() > budget {
                if a.len() >= b.len() {
                    a.pop();
                } else {
                    b.pop();
                }
            }
            let mut ids = vec![cls];
            ids.extend(&a);
            ids.push(sep);
            let mut tt = vec![0; ids.len()];
            if e.b.is_some() {
                ids.extend(&b);
                ids.push(sep);
                tt.resize(ids.len(), 1);
            }
            let label = task
                .label_index(&e.label)
                .expect("labels checked when the task was read");
            Ok(Encoded {
                enc: crate::tokenizer::Encoded { ids, type_ids: tt },
                label,
            })
        })
        .collect()
}

fn batch_input(
    cfg: &BertConfig,
    b: &[&Encoded],
    pad: u32,
    device: &Device,
) -> Result<(BertInput, Tensor)> {
    let enc: Vec<&crate::tokenizer::Encoded> = b.iter().map(|e| &e.enc).collect();
    let (ids, mask, tt, t) = crate::tokenizer::pad_batch(&enc, pad);
    let input = BertInput::from_host(cfg, (b.len(), t), &ids, Some(&mask), Some(&tt), device)?;
    let labels = Tensor::from_vec(
        b.iter().map(|e| e.label as u32).collect::<Vec<_>>(),
        b.len(),
        device,
    )?;
    Ok((input, labels))
}

/// The checkpoint directory named by `spec`: a run's newest checkpoint, a model directory, or a
/// hub id.
pub fn resolve_model(spec: &str) -> Result<ModelFiles> {
    let p = Path::new(spec);
    if p.exists() {
        return ModelFiles::from_dir(&crate::train::checkpoint::resolve_dir(p)?);
    }
    ModelFiles::resolve(spec)
}

/// One epoch's record.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev: Metrics,
    pub elapsed_s: f64,
}

/// The result of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneResult {
    pub task: String,
    pub checkpoint: String,
    pub seed: u64,
    pub labels: Vec<String>,
    pub metric: Metric,
    pub train_examples: usize,
    pub dev_examples: usize,
    pub epochs: Vec<EpochRecord>,
    /// Dev metrics after the last epoch.
    pub final_dev: Metrics,
    pub config: FinetuneConfig,
}

/// The fine-tuned model's tensors under HF `BertForSequenceClassification` names.
pub struct Trained {
    pub result: FinetuneResult,
    pub tensors: BTreeMap<String, Tensor>,
    pub config: BertConfig,
    pub tokenizer_file: Option<PathBuf>,
}

/// Progress callback: (epoch, step, steps per epoch, loss).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize, f64);

/// Fine-tunes one seed.
pub fn finetune(cfg: &FinetuneConfig, task: &Task, progress: Progress) -> Result<Trained> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.max_seq_len < 3 {
        return Err(Error::Input(
            "epochs and batch size must be >= 1, max_seq_len >= 3".into(),
        ));
    }
    let device = crate::device(&cfg.device)?;
    crate::set_matmul_precision(&cfg.matmul_precision, &device)?;
    let files = resolve_model(&cfg.checkpoint)?;
    if files.tokenizer_json.is_none() && files.vocab_txt.is_none() {
        return Err(Error::Input(format!(
            "{}: the checkpoint has no tokenizer (tokenizer.json or vocab.txt) to encode the task with",
            files.name
        )));
    }
    let tok = Tokenizer::from_model(&files)?;
    let mcfg = files.load_config()?;
    if cfg.max_seq_len > mcfg.max_position_embeddings {
        return Err(Error::Input(format!(
            "max_seq_len {} is beyond the model's max_position_embeddings {}",
            cfg.max_seq_len, mcfg.max_position_embeddings
        )));
    }
    let loaded = load_safetensors(&files.weights, &mcfg, &device)?;
    let mut rng = Rng::new(cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(17));
    // The encoder (and pooler) of the checkpoint; pre-training heads are dropped.
    let mut map: HashMap<String, Tensor> = loaded
        .tensors
        .into_iter()
        .filter(|(k, _)| k.starts_with("bert."))
        .collect();
    let k = task.labels.len();
    let c = mcfg.hidden_size;
    let mut fresh = Vec::new();
    for (name, shape) in [
        (format!("{}.weight", names::POOLER), vec![c, c]),
        (format!("{}.bias", names::POOLER), vec![c]),
        ("classifier.weight".to_string(), vec![k, c]),
        ("classifier.bias".to_string(), vec![k]),
    ] {
        if !map.contains_key(&name) {
            map.insert(
                name.clone(),
                init_tensor(&mcfg, &name, &shape, &mut rng, &device)?,
            );
            fresh.push(name);
        }
    }
    let params = Params::from_tensors(&map)?;
    let tensors = params.tensors();
    let bert_map: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("bert."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bert = BertForPreTraining::from_tensors(&mcfg, &bert_map, &files.name)?;
    debug_assert_eq!(
        bert.heads(),
        Heads {
            pooler: true,
            mlm: false,
            nsp: false
        }
    );
    let model = Classifier {
        bert,
        classifier: Linear::new(
            tensors["classifier.weight"].clone(),
            tensors["classifier.bias"].clone(),
        ),
        dropout: mcfg.hidden_dropout_prob,
    };
    let named = params.named_vars();
    let mut opt = Optimizer::new(
        named.clone(),
        OptimizerConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;

    let take = |v: &[Example], n: usize| {
        if n == 0 || n >= v.len() {
            v.to_vec()
        } else {
            v[..n].to_vec()
        }
    };
    let train = encode_examples(
        &tok,
        task,
        &take(&task.train, cfg.max_train),
        cfg.max_seq_len,
    )?;
    let dev = encode_examples(&tok, task, &take(&task.dev, cfg.max_dev), cfg.max_seq_len)?;
    let pad = mcfg.pad_token_id as u32;
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = (steps_per_epoch * cfg.epochs) as u64;
    let schedule = crate::train::schedule::LrSchedule {
        peak: cfg.lr,
        warmup_steps: ((cfg.warmup_frac * total as f64).round() as u64).max(1),
        total_steps: total,
        decay: crate::train::schedule::Decay::Linear,
        min_lr_ratio: 0.0,
    };
    let t0 = Instant::now();
    let mut epochs = Vec::new();
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut srng = Rng::new(cfg.seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for i in (1..order.len()).rev() {
            order.swap(i, srng.below(i as u64 + 1) as usize);
        }
        let mut loss_sum = 0.0;
        for (bi, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let batch: Vec<&Encoded> = chunk.iter().map(|&i| &train[i]).collect();
            let (input, labels) = batch_input(&mcfg, &batch, pad, &device)?;
            let mut drng = Rng::new(cfg.seed ^ 0xABCD ^ ((step as u64) << 8));
            let logits = model.logits(&input, &mut Mode::Train(&mut drng))?; // (B, K)
            let loss = crate::ops::cross_entropy_rows(&logits, &labels)?.mean_all()?;
            let store = loss.backward()?;
            let mut grads: Vec<Option<Tensor>> = named
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect();
            let norm = crate::optim::grad_norm(&grads)?;
            crate::optim::clip_grads(&mut grads, norm, cfg.clip_norm)?;
            let lr = schedule.lr(step as u64);
            opt.set_lr(lr);
            opt.step_grads(&grads)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(Error::Input(format!(
                    "non-finite training loss at epoch {epoch}, step {}",
                    bi + 1
                )));
            }
            loss_sum += l * batch.len() as f64;
            step += 1;
            progress(epoch, bi + 1, steps_per_epoch, l);
        }
        let dev_m = evaluate(&model, &mcfg, &dev, k, cfg.batch_size, pad, &device)?;
        epochs.push(EpochRecord {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            dev: dev_m,
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
    }
    if !fresh.is_empty() {
        tracing::info!("initialised fresh: {}", fresh.join(", "));
    }
    let final_dev = epochs.last().expect("epochs >= 1").dev.clone();
    let out: BTreeMap<String, Tensor> = params
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(Trained {
        result: FinetuneResult {
            task: task.name.clone(),
            checkpoint: files.name.clone(),
            seed: cfg.seed,
            labels: task.labels.clone(),
            metric: task.metric,
            train_examples: train.len(),
            dev_examples: dev.len(),
            epochs,
            final_dev,
            config: cfg.clone(),
        },
        tensors: out,
        config: mcfg,
        tokenizer_file: files.tokenizer_json.clone().or(files.vocab_txt.clone()),
    })
}

fn evaluate(
    model: &Classifier,
    cfg: &BertConfig,
    dev: &[Encoded],
    k: usize,
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<Metrics> {
    let (mut pred, mut gold) = (Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    for chunk in dev.chunks(batch_size) {
        let batch: Vec<&Encoded> = chunk.iter().collect();
        let (input, labels) = batch_input(cfg, &batch, pad, device)?;
        let logits = model.logits(&input, &mut Mode::Eval)?; // (B, K)
        loss_sum += crate::ops::cross_entropy_rows(&logits, &labels)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        pred.extend(
            logits
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|x| x as usize),
        );
        gold.extend(batch.iter().map(|e| e.label));
    }
    Ok(metrics(&pred, &gold, k, loss_sum / dev.len().max(1) as f64))
}

/// Mean and (sample) standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_metrics() {
        // tp 2, tn 1, fp 1, fn 1
        let m = metrics(&[1, 1, 0, 1, 0], &[1, 1, 0, 0, 1], 2, 0.0);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(
            (m.matthews.unwrap() - (2.0 - 1.0) / (3.0f64 * 3.0 * 2.0 * 2.0).sqrt()).abs() < 1e-12
        );
        assert!(metrics(&[0, 1, 2], &[0, 1, 1], 3, 0.0).f1.is_none());
    }
}
