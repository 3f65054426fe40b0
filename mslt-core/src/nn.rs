//! Training-safe building blocks: linear, LayerNorm, dropout, activation, attention softmax.
//!
//! The rule of this module: when any input of an op is tracked by autograd (a `Var` or derived
//! from one), the op is built from differentiable Candle ops; only when nothing is tracked (frozen
//! or inference paths) may a fused no-backward op be used. So a frozen layer gets the fast path
//! automatically and a trainable one can never silently lose its gradient.

use crate::config::Activation;
use crate::rng::Rng;
use candle_core::{DType, Result, Tensor, D};

/// Train or eval mode, explicit on every forward. Train mode carries the dropout RNG.
pub enum Mode<'a> {
    Eval,
    Train(&'a mut Rng),
}

impl Mode<'_> {
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

/// True when autograd records ops on `t` (it is a `Var` or computed from one).
pub fn tracked(t: &Tensor) -> bool {
    t.track_op()
}

/// `y = x W^T + b`, weight in PyTorch layout `(out, in)`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in)
    pub weight: Tensor,
    /// (out,)
    pub bias: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("rank >= 1");
        let out_dim = self.weight.dim(0)?;
        // Flatten to 2-D so the matmul takes gemm's fast path: (N, in) x (in, out). The backward
        // computes no gradient for a frozen operand (see `ops::matmul_wt`).
        let x2 = x.reshape(((), in_dim))?;
        let y = crate::ops::linear(&x2, &self.weight, &self.bias)?; // (N, out)
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = out_dim;
        y.reshape(out_dims)
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// (C,)
    pub weight: Tensor,
    /// (C,)
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// (..., C) -> (..., C). Fused no-backward kernel only when nothing is tracked.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::fused::applies(x) && self.weight.dtype() == x.dtype() {
            // CPU f32: vectorised rows; records no graph when nothing is tracked.
            return crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        if !tracked(x) && !tracked(&self.weight) && !tracked(&self.bias) {
            let x = x.contiguous()?;
            return candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32);
        }
        layer_norm_reference(x, &self.weight, &self.bias, self.eps)
    }
}

/// Differentiable LayerNorm from plain ops; statistics in f32. The reference for fused kernels.
pub fn layer_norm_reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
    let xc = x.broadcast_sub(&mean)?; // (..., C)
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.to_dtype(dtype)?.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension. Fused no-backward kernel only when nothing is tracked.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !tracked(x) {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    if crate::fused::applies(x) {
        return crate::fused::softmax_last_dim(x);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::GeluErf if crate::fused::applies(x) => crate::fused::gelu_erf(x),
        Activation::GeluErf => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// Inverted dropout: in train mode zeroes each element with probability `p` and scales the rest
/// by `1 / (1 - p)`; in eval mode (or `p == 0`) the identity. The mask is drawn from the mode's
/// seeded [`Rng`], so a run is reproducible.
pub fn dropout(x: &Tensor, p: f64, mode: &mut Mode) -> Result<Tensor> {
    let rng = match mode {
        Mode::Train(rng) if p > 0.0 => rng,
        _ => return Ok(x.clone()),
    };
    let scale = (1.0 / (1.0 - p)) as f32;
    if !x.device().is_cpu() {
        // On a GPU the mask is drawn on the device (the training loop seeds the device's
        // generator per step, so runs stay reproducible); drawing it on the host and copying it
        // over would cost more than the layer.
        let _ = rng;
        let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(p)?;
        return scaled_by(x, &(keep.to_dtype(DType::F32)? * scale as f64)?);
    }
    // Drawn in parallel blocks, each from its own generator seeded by (one draw of the mode's
    // RNG, block index): the mask is a function of the seed alone, whatever the thread count.
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 15;
    let n = x.elem_count();
    let p32 = p as f32;
    let seed = rng.next_u64();
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(BLOCK).enumerate().for_each(|(i, m)| {
        let mut r = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for v in m.iter_mut() {
            *v = if r.uniform_f32() < p32 { 0.0 } else { scale };
        }
    });
    scaled_by(x, &Tensor::from_vec(mask, x.shape(), x.device())?)
}

/// x * mask with the f32 mask (0 or 1 / (1 - p)) applied in f32: 1 / (1 - p) has no exact bf16
/// (1 / 0.9 would round to 1.109375, a 0.16% bias per dropout), so other dtypes are scaled in f32
/// and rounded once.
fn scaled_by(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return x.mul(mask);
    }
    x.to_dtype(DType::F32)?.mul(mask)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bf16_dropout_scales_kept_values_by_exactly_one_over_keep_probability() -> Result<()> {
        // 1 / 0.9 has no exact bf16: scaling in bf16 would shrink every kept value by 0.16%.
        let dev = Device::Cpu;
        let n = 1 << 16;
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..n).map(|_| 1.0 + rng.uniform_f32()).collect();
        let x = Tensor::from_vec(x, n, &dev)?.to_dtype(DType::BF16)?;
        let mut drng = Rng::new(4);
        let y = dropout(&x, 0.1, &mut Mode::Train(&mut drng))?.to_dtype(DType::F32)?;
        let (x, y) = (
            x.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            y.to_vec1::<f32>()?,
        );
        let (mut sx, mut sy, mut kept) = (0f64, 0f64, 0usize);
        for (a, b) in x.iter().zip(&y) {
            if *b != 0.0 {
                sx += *a as f64;
                sy += *b as f64;
                kept += 1;
            }
        }
        let ratio = sy / sx * 0.9;
        assert!(
            (ratio - 1.0).abs() < 5e-4,
            "kept values scaled by {ratio} / 0.9"
        );
        assert!((kept as f64 / n as f64 - 0.9).abs() < 0.01, "{kept}");
        Ok(())
    }

    #[test]
    fn fused_and_reference_layer_norm_agree() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(0);
        let x = Tensor::from_vec(rng.normal_vec(6 * 40, 0.5, 2.0), (6, 40), &dev)?;
        let w = Tensor::from_vec(rng.normal_vec(40, 1.0, 0.1), 40, &dev)?;
        let b = Tensor::from_vec(rng.normal_vec(40, 0.0, 0.1), 40, &dev)?;
        let ln = LayerNorm::new(w.clone(), b.clone(), 1e-12);
        let fused = ln.forward(&x)?;
        let reference = layer_norm_reference(&x, &w, &b, 1e-12)?;
        let d = (fused - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    #[test]
    fn tracked_layer_norm_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 12., &dev)?.reshape((3, 4))?)?;
        let w = Var::ones(4, DType::F32, &dev)?;
        let b = Var::zeros(4, DType::F32, &dev)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let y = ln.forward(x.as_tensor())?;
        let coef = Tensor::new(&[1f32, -2., 3., 0.5], &dev)?;
        let loss = y.broadcast_mul(&coef)?.sum_all()?;
        let g = loss.backward()?;
        for v in [&x, &w, &b] {
            let gv = g.get(v.as_tensor()).expect("gradient present");
            assert!(gv.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scaled() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((100, 100), DType::F32, &dev)?;
        let mut r1 = Rng::new(5);
        let mut r2 = Rng::new(5);
        let a = dropout(&x, 0.1, &mut Mode::Train(&mut r1))?;
        let b = dropout(&x, 0.1, &mut Mode::Train(&mut r2))?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        let v: Vec<f32> = a.flatten_all()?.to_vec1()?;
        let zeros = v.iter().filter(|&&z| z == 0.0).count() as f64 / v.len() as f64;
        assert!((zeros - 0.1).abs() < 0.015, "{zeros}");
        assert!(v.iter().all(|&z| z == 0.0 || (z - 1.0 / 0.9).abs() < 1e-6));
        let e = dropout(&x, 0.1, &mut Mode::Eval)?;
        assert_eq!(e.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        Ok(())
    }
}
