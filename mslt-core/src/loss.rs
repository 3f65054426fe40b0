//! Losses we own: cross-entropy with the mean over the given rows (Candle's has no ignore-index,
//! so MLM rows are gathered first), and the MLM target set.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

/// Mean cross-entropy: logits (N, K), labels (N,) U32 -> scalar. Differentiable.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    if n == 0 {
        return Err(Error::Input("cross-entropy over zero rows".into()));
    }
    cross_entropy_over(logits, labels, n)
}

/// Cross-entropy summed over the rows and divided by `denom` (a data-parallel rank divides by
/// the global row count, so the sum over ranks is the global mean). Differentiable.
pub fn cross_entropy_over(logits: &Tensor, labels: &Tensor, denom: usize) -> Result<Tensor> {
    if denom == 0 {
        return Err(Error::Input("cross-entropy with a zero denominator".into()));
    }
    // Fused on CPU (one pass, analytic backward), composed elsewhere: see `ops`.
    let nll = crate::ops::cross_entropy_rows(logits, labels)?; // (N,)
    Ok((nll.sum_all()? / denom as f64)?)
}

/// The masked positions of a batch and their target ids (HF labels with -100 = ignored).
#[derive(Clone, Debug)]
pub struct MlmTargets {
    /// (M,) U32: flat indices b * T + t of the predicted positions
    pub positions: Tensor,
    /// (M,) U32: the original token ids at those positions
    pub labels: Tensor,
}

impl MlmTargets {
    /// From HF-style labels laid out (B, T) row-major: -100 = not predicted.
    pub fn from_labels(labels: &[i64], vocab_size: usize, device: &Device) -> Result<Self> {
        let mut pos = Vec::new();
        let mut lab = Vec::new();
        for (k, &l) in labels.iter().enumerate() {
            if l == -100 {
                continue;
            }
            if l < 0 || l as u64 >= vocab_size as u64 {
                return Err(Error::Input(format!(
                    "mlm label {l} at flat position {k} is outside [0, {vocab_size}) and is not -100"
                )));
            }
            pos.push(k as u32);
            lab.push(l as u32);
        }
        if pos.is_empty() {
            return Err(Error::Input(
                "no masked positions in the batch (all labels are -100)".into(),
            ));
        }
        let m = pos.len();
        Ok(Self {
            positions: Tensor::from_vec(pos, m, device)?,
            labels: Tensor::from_vec(lab, m, device)?,
        })
    }

    pub fn len(&self) -> usize {
        self.positions.dims1().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computed_value() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2., 3.], [0., 0., 0.]], &dev)?;
        let labels = Tensor::new(&[2u32, 0], &dev)?;
        let l = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        let row0 = -(3f64 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln());
        let row1 = 3f64.ln();
        assert!((l as f64 - (row0 + row1) / 2.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn targets_skip_ignored_and_reject_bad_labels() -> Result<()> {
        let t = MlmTargets::from_labels(&[-100, 5, -100, 7], 10, &Device::Cpu)?;
        assert_eq!(t.positions.to_vec1::<u32>()?, vec![1, 3]);
        assert_eq!(t.labels.to_vec1::<u32>()?, vec![5, 7]);
        assert!(MlmTargets::from_labels(&[-100, 10], 10, &Device::Cpu).is_err());
        assert!(MlmTargets::from_labels(&[-100], 10, &Device::Cpu).is_err());
        Ok(())
    }
}
