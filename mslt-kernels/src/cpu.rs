//! Plain CPU references of the fused kernels (the `cpu_fwd` of each custom op): straightforward
//! loops with the same arithmetic contract as the `.cu` sources (f32 accumulation, one rounding
//! at the store for bf16). Written for clarity, not speed: on CPU the model's frozen layers use
//! Candle's own ops; these exist so the custom ops run everywhere and the wiring is testable.

/// An element type the kernels read and write.
pub trait Elem: Copy + Send + Sync {
    fn f32(self) -> f32;
    fn of(v: f32) -> Self;
}

impl Elem for f32 {
    fn f32(self) -> f32 {
        self
    }
    fn of(v: f32) -> Self {
        v
    }
}

impl Elem for half::bf16 {
    fn f32(self) -> f32 {
        self.to_f32()
    }
    fn of(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

/// `out[r] = LN(x[r] + res[r]) * gamma + beta` for rows of `c`; `res` None skips the add.
/// `wb` is `[gamma; beta]` (2 * c).
pub fn add_layer_norm<T: Elem>(x: &[T], res: Option<&[T]>, wb: &[T], c: usize, eps: f32) -> Vec<T> {
    let rows = x.len() / c;
    let mut out = Vec::with_capacity(x.len());
    let mut a = vec![0f32; c];
    for r in 0..rows {
        for (k, ak) in a.iter_mut().enumerate() {
            *ak = x[r * c + k].f32() + res.map_or(0.0, |s| s[r * c + k].f32());
        }
        let mean = a.iter().sum::<f32>() / c as f32;
        let var = a.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (k, ak) in a.iter().enumerate() {
            out.push(T::of((ak - mean) * rstd * wb[k].f32() + wb[c + k].f32()));
        }
    }
    out
}

/// GELU, erf form.
pub fn gelu_erf(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out[r, k] = gelu(x[r, k] + bias[k])` for rows of `c = bias.len()`.
pub fn bias_gelu<T: Elem>(x: &[T], bias: &[T]) -> Vec<T> {
    let c = bias.len();
    x.iter()
        .enumerate()
        .map(|(i, v)| T::of(gelu_erf(v.f32() + bias[i % c].f32())))
        .collect()
}

/// Self-attention from a fused projection: qkv (B, T, 3C), mask (B, T) additive -> (B, T, C),
/// C = heads * d, scale 1/sqrt(d). Softmax with the max subtracted, f32 throughout. `dropout`
/// (p, seed): the probabilities are multiplied by the counter-based mask of [`crate::philox`]
/// after normalisation (as the CUDA kernels' `_dropout` entry points).
pub fn attention<T: Elem>(
    qkv: &[T],
    mask: &[f32],
    (b, t, heads, d): (usize, usize, usize, usize),
    dropout: Option<(f64, u64)>,
) -> Vec<T> {
    let c = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let at = |bi: usize, ti: usize, col: usize| qkv[(bi * t + ti) * 3 * c + col].f32();
    let mut out = vec![T::of(0.0); b * t * c];
    let mut s = vec![0f32; t];
    for bi in 0..b {
        for h in 0..heads {
            let mult = dropout.map(|(p, seed)| crate::philox::block_multiplier(seed, p, bi, h, t));
            for i in 0..t {
                for (j, sj) in s.iter_mut().enumerate() {
                    let mut dot = 0f32;
                    for e in 0..d {
                        dot += at(bi, i, h * d + e) * at(bi, j, c + h * d + e);
                    }
                    *sj = dot * scale + mask[bi * t + j];
                }
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut l = 0f32;
                for sj in s.iter_mut() {
                    *sj = (*sj - m).exp();
                    l += *sj;
                }
                if let Some(mult) = &mult {
                    // after the row sum: dropout acts on the normalised probabilities
                    for (sj, k) in s.iter_mut().zip(&mult[i * t..(i + 1) * t]) {
                        *sj *= k;
                    }
                }
                for e in 0..d {
                    let mut acc = 0f32;
                    for (j, p) in s.iter().enumerate() {
                        acc += p * at(bi, j, 2 * c + h * d + e);
                    }
                    out[(bi * t + i) * c + h * d + e] = T::of(acc / l);
                }
            }
        }
    }
    out
}

/// erf through the C math library's double-precision `erf` (Rust's std has none).
pub fn erf(x: f32) -> f32 {
    extern "C" {
        fn erf(x: f64) -> f64;
    }
    // SAFETY: `erf` from the C math library is a pure function of a double.
    unsafe { erf(x as f64) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5) = 0.5204998778, erf(1) = 0.8427007929, erf(-2) = -0.9953222650
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-6);
        assert!((erf(1.0) - 0.842_700_8).abs() < 1e-6);
        assert!((erf(-2.0) + 0.995_322_3).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_rows_have_zero_mean_unit_variance() {
        let c = 5;
        let x: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let mut wb = vec![1f32; c];
        wb.extend(vec![0f32; c]);
        let y = add_layer_norm(&x, None, &wb, c, 0.0);
        for r in y.chunks(c) {
            let m = r.iter().sum::<f32>() / c as f32;
            let v = r.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / c as f32;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{m} {v}");
        }
    }
}

/// The scalars of one AdamW update of one tensor, in f32 (see kernels-cu/optim.cu).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// `1 - lr * weight_decay` for a decayed parameter; None: no decay
    pub decay: Option<f32>,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / sqrt(1 - beta2^t)`
    pub inv_bc2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`
    pub step_size: f32,
}

/// One AdamW update of one element: (p, m, v) after the step. The order of operations is
/// kernels-cu/optim.cu's and the composed Candle ops' (whose `x / s` with a scalar is
/// `x * f32(1 / s)`), each rounded on its own, so all three give the same bits.
#[inline(always)]
pub fn adamw_elem(p: f32, g: f32, m: f32, v: f32, k: &AdamWScalars) -> (f32, f32, f32) {
    let p = match k.decay {
        Some(d) => p * d,
        None => p,
    };
    let m = m + (g - m) * k.one_minus_beta1;
    let v = v * k.beta2 + g * g * k.one_minus_beta2;
    let denom = v.sqrt() * k.inv_bc2_sqrt + k.eps;
    (p - m / denom * k.step_size, m, v)
}

/// `adamw_step_f32` on the CPU: p, g (n), mv (2n: m then v) -> (3n: p, m, v after the step).
pub fn adamw_step(p: &[f32], g: &[f32], mv: &[f32], k: &AdamWScalars) -> Vec<f32> {
    let n = p.len();
    let mut out = vec![0f32; 3 * n];
    for i in 0..n {
        let (pi, mi, vi) = adamw_elem(p[i], g[i], mv[i], mv[n + i], k);
        out[i] = pi;
        out[n + i] = mi;
        out[2 * n + i] = vi;
    }
    out
}
