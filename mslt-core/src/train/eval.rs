//! Evaluation on the validation split: a fixed number of batches in file order with a fixed
//! masking seed (so evaluations are comparable across steps and runs), no gradient tracking.

use crate::data::{DataSet, MaskingConfig};
use crate::error::{Error, Result};
use crate::loss::MlmTargets;
use crate::model::BertForPreTraining;
use crate::nn::Mode;
use crate::rng::Rng;
use crate::BertInput;
use candle_core::{DType, Tensor, D};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// mean NLL over every predicted token
    pub mlm_loss: f64,
    pub mlm_acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsp_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsp_acc: Option<f64>,
    /// mlm_loss (+ nsp_loss)
    pub loss: f64,
    pub sequences: usize,
    pub predicted_tokens: usize,
}

/// `model` should be built from plain (detached) tensors, so nothing records a graph.
pub fn evaluate(
    model: &BertForPreTraining,
    val: &DataSet,
    masking: &MaskingConfig,
    batch_size: usize,
    max_batches: usize,
    seed: u64,
) -> Result<EvalResult> {
    if val.is_empty() {
        return Err(Error::Input(format!(
            "{}: the validation split is empty",
            val.dir.display()
        )));
    }
    let frozen = model;
    let cfg = &model.config;
    let dev = model.device().clone();
    let nsp = val.manifest.nsp && model.nsp.is_some() && model.pooler.is_some();
    let (mut nll, mut correct, mut count) = (0f64, 0usize, 0usize);
    let (mut nsp_nll, mut nsp_correct, mut seqs) = (0f64, 0usize, 0usize);
    let batches = max_batches.min(val.len().div_ceil(batch_size)).max(1);
    for bi in 0..batches {
        let s = val.ordered(bi * batch_size, batch_size);
        if s.is_empty() {
            break;
        }
        let mut rng = Rng::new(seed ^ 0xE7A1 ^ (bi as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let hb = val.mask(&s, masking, &mut rng);
        let input = BertInput::from_host(
            cfg,
            (hb.b, hb.t),
            &hb.input_ids,
            Some(&hb.attention_mask),
            Some(&hb.token_type_ids),
            &dev,
        )?;
        let targets = match MlmTargets::from_labels(&hb.mlm_labels, cfg.vocab_size, &dev) {
            Ok(t) => t,
            Err(_) => continue, // no predictable token in this batch
        };
        let h = frozen
            .encode(&input, &mut Mode::Eval, false)?
            .last_hidden_state; // (B, T, C)
        let c = h.dim(D::Minus1)?;
        let rows = h.reshape(((), c))?.index_select(&targets.positions, 0)?; // (M, C)
        let logits = frozen.mlm_logits(&rows)?; // (M, V)
        let (l, k) = nll_and_correct(&logits, &targets.labels)?;
        nll += l;
        correct += k;
        count += targets.len();
        if nsp {
            let pooled = frozen.pool(&h)?.expect("pooler present");
            let lg = frozen.nsp_logits(&pooled)?;
            let labels: Vec<u32> = hb.nsp_labels.iter().map(|&x| x as u32).collect();
            let labels = Tensor::from_vec(labels, hb.b, &dev)?;
            let (l, k) = nll_and_correct(&lg, &labels)?;
            nsp_nll += l;
            nsp_correct += k;
        }
        seqs += hb.b;
    }
    if count == 0 {
        return Err(Error::Input("evaluation found no token to predict".into()));
    }
    let mlm_loss = nll / count as f64;
    let (nsp_loss, nsp_acc) = if nsp {
        (
            Some(nsp_nll / seqs as f64),
            Some(nsp_correct as f64 / seqs as f64),
        )
    } else {
        (None, None)
    };
    Ok(EvalResult {
        mlm_loss,
        mlm_acc: correct as f64 / count as f64,
        loss: mlm_loss + nsp_loss.unwrap_or(0.0),
        nsp_loss,
        nsp_acc,
        sequences: seqs,
        predicted_tokens: count,
    })
}

/// Summed NLL and number of argmax hits: logits (N, K), labels (N,) U32.
fn nll_and_correct(logits: &Tensor, labels: &Tensor) -> Result<(f64, usize)> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = lsm.gather(&labels.unsqueeze(1)?, 1)?; // (N, 1)
    let nll = -(picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?);
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let lab: Vec<u32> = labels.to_vec1()?;
    Ok((nll, pred.iter().zip(&lab).filter(|(a, b)| a == b).count()))
}
