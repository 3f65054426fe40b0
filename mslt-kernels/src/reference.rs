//! The fused kernels' computations composed from plain Candle ops, in f32 (bf16 inputs are
//! upcast first). These are what every kernel is checked against.

use candle_core::{DType, Result, Tensor, D};

fn f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// LN(x + res) * gamma + beta over the last dim (biased variance), f32 result.
pub fn add_layer_norm(x: &Tensor, res: Option<&Tensor>, wb: &Tensor, eps: f64) -> Result<Tensor> {
    let a = match res {
        Some(r) => (f32(x)? + f32(r)?)?,
        None => f32(x)?,
    }; // (..., C)
    let wb = f32(wb)?;
    let mean = a.mean_keepdim(D::Minus1)?; // (..., 1)
    let xc = a.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(&wb.get(0)?)?.broadcast_add(&wb.get(1)?)
}

/// gelu_erf(x + bias), f32 result.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    f32(x)?.broadcast_add(&f32(bias)?)?.gelu_erf()
}

/// Splits a fused projection (B, T, 3C) into q, k, v as (B, H, T, D) contiguous tensors.
pub fn split_heads(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let d = c / heads;
    let part = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i * c, c)?
            .reshape((b, t, heads, d))? // (B, T, H, D)
            .transpose(1, 2)? // (B, H, T, D)
            .contiguous()
    };
    Ok((part(0)?, part(1)?, part(2)?))
}

/// softmax(q k^T / sqrt(D) + mask) (B, H, T, T) and v (B, H, T, D) from qkv (B, T, 3C) and
/// mask (B, T), f32, the softmax composed from exp / sum with the row max subtracted.
fn probs_and_values(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let (q, k, v) = split_heads(&f32(qkv)?, heads)?; // (B, H, T, D)
    let scale = 1.0 / ((c / heads) as f64).sqrt();
    let s = (q.matmul(&k.t()?)? * scale)?; // (B, H, T, T)
    let s = s.broadcast_add(&f32(mask)?.reshape((b, 1, 1, t))?)?;
    let s = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
    Ok((s.broadcast_div(&s.sum_keepdim(D::Minus1)?)?, v))
}

/// (B, H, T, D) -> (B, T, C): the heads merged.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

/// softmax(q k^T / sqrt(D) + mask) v with heads merged: qkv (B, T, 3C), mask (B, T) -> (B, T, C),
/// f32, softmax composed from exp / sum with the row max subtracted.
pub fn attention(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
    let (p, v) = probs_and_values(qkv, mask, heads)?;
    merge_heads(&p.matmul(&v)?)
}

/// [`attention`] with dropout `p` on the normalised probabilities, the mask drawn from `seed` by
/// [`crate::philox`] (built on the host, then moved to the inputs' device): f32 (B, T, C).
pub fn attention_dropout(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    p: f64,
    seed: u64,
) -> Result<Tensor> {
    let (b, t, _) = qkv.dims3()?;
    let (probs, v) = probs_and_values(qkv, mask, heads)?; // (B, H, T, T), (B, H, T, D)
    let mut m = Vec::with_capacity(b * heads * t * t);
    for bi in 0..b {
        for h in 0..heads {
            m.extend(crate::philox::block_multiplier(seed, p, bi, h, t));
        }
    }
    let m = Tensor::from_vec(m, (b, heads, t, t), qkv.device())?; // (B, H, T, T)
    merge_heads(&(probs * m)?.matmul(&v)?)
}

/// One AdamW update of one f32 tensor from composed Candle ops (mslt-core's optimizer on a
/// non-CPU device without the fused kernel): p, g (n), mv (2, n) = [m; v] -> (3, n) = [p; m; v]
/// after the step. `decay` is `1 - lr * weight_decay` (None: no decay).
pub fn adamw_step(
    p: &Tensor,
    g: &Tensor,
    mv: &Tensor,
    k: &crate::cpu::AdamWScalars,
) -> Result<Tensor> {
    let (p, g) = (p.flatten_all()?, g.flatten_all()?); // (n)
    let (m, v) = (mv.get(0)?, mv.get(1)?); // (n)
    let p = match k.decay {
        Some(d) => (p * d as f64)?,
        None => p,
    };
    let m = (&m + ((&g - &m)? * k.one_minus_beta1 as f64)?)?;
    let v = ((v * k.beta2 as f64)? + (g.sqr()? * k.one_minus_beta2 as f64)?)?;
    let denom = ((v.sqrt()? * k.inv_bc2_sqrt as f64)? + k.eps as f64)?;
    let p = (p - (m.div(&denom)? * k.step_size as f64)?)?;
    Tensor::stack(&[p, m, v], 0) // (3, n)
}
