//! Fused ops with analytic backward, each paired with the plain composed reference it replaces
//! (and a test comparing value and gradient).
//!
//! - [`cross_entropy_rows`]: per-row NLL of logits (N, K) at labels (N,). The composed form
//!   (`log_softmax` + `gather`) materialises ~6 (N, K) temporaries forward and as many backward;
//!   for the MLM head (N = masked rows, K = 30522) those dominate the step on CPU. The fused op
//!   makes one pass forward and writes `softmax - onehot` once backward. CPU only; other devices
//!   use the composed reference.
//! - [`matmul_wt`]: `x W^T` whose backward computes only the gradients that are needed. Candle's
//!   matmul backward always computes both operand gradients, so a frozen weight (the tied MLM
//!   decoder when the embeddings are frozen: `2 M C V` FLOPs per step) or a frozen input (the
//!   first trainable layer above frozen ones) costs a full extra product. Forward calls the
//!   backend's own matmul (CPU gemm / cuBLAS), so results are identical to `x.matmul(&w.t())`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// The contiguous elements of a CPU tensor of dtype `T`.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let v = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f` on the contiguous f32 values of `N` CPU tensors, read in place (no copies); `None`
/// when one of them is not a contiguous f32 CPU tensor.
pub(crate) fn with_cpu_slices<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Option<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut out: Vec<&[f32]> = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        let (candle_core::Storage::Cpu(cs), Some((a, b))) =
            (&**storage, layout.contiguous_offsets())
        else {
            return None;
        };
        out.push(&cs.as_slice::<f32>().ok()?[a..b]);
    }
    Some(f(out.try_into().ok()?))
}

/// log-sum-exp of a row over its max (vectorised, see `simd`).
fn lse(row: &[f32]) -> f32 {
    crate::simd::lse_row(row)
}

/// Keeps the per-row log-sum-exp of the forward for the backward (one pass over the logits fewer).
#[derive(Default)]
struct CrossEntropyRows {
    lse: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "mslt-cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let x = cpu_slice::<f32>(s1, l1, self.name())?;
        let y = cpu_slice::<u32>(s2, l2, self.name())?;
        if y.len() != n {
            candle_core::bail!("{}: {} labels for {n} rows", self.name(), y.len());
        }
        let l: Vec<f32> = x.par_chunks(k).map(lse).collect();
        let out: Vec<f32> = l
            .iter()
            .zip(x.chunks(k).zip(y))
            .map(|(&l, (row, &t))| l - row[t as usize])
            .collect();
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(l);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().ok().and_then(|mut s| s.take());
        let g = logits.detach().apply_op3_no_bwd(
            labels,
            &grad.detach().contiguous()?,
            &CrossEntropyRowsBwd { lse },
        )?;
        Ok((Some(g), None))
    }
}

/// d NLL_i / d x_ij = g_i * (softmax(x_i)_j - [j == y_i]); `lse`: the forward's per-row
/// log-sum-exp (recomputed when absent).
struct CrossEntropyRowsBwd {
    lse: Option<Vec<f32>>,
}

impl CustomOp3 for CrossEntropyRowsBwd {
    fn name(&self) -> &'static str {
        "mslt-cross-entropy-rows-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let x = cpu_slice::<f32>(s1, l1, self.name())?;
        let y = cpu_slice::<u32>(s2, l2, self.name())?;
        let g = cpu_slice::<f32>(s3, l3, self.name())?;
        let cached = self.lse.as_ref().filter(|l| l.len() == n);
        let mut out = vec![0f32; n * k];
        out.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .zip(y.par_iter().zip(g.par_iter()))
            .enumerate()
            .for_each(|(i, ((o, row), (&t, &gi)))| {
                let l = cached.map_or_else(|| lse(row), |c| c[i]);
                crate::simd::scaled_exp_row(o, row, l, gi);
                o[t as usize] -= gi;
            });
        Ok((CpuStorage::F32(out), Shape::from((n, k))))
    }
}

struct MatmulWt;

impl MatmulWt {
    fn dims(l1: &Layout, l2: &Layout) -> Result<((usize, usize, usize, usize), Layout)> {
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("mslt-matmul-wt: x is ({n}, {k}) but w is ({m}, {k2})");
        }
        Ok(((1, n, m, k), l2.transpose(0, 1)?))
    }
}

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "mslt-matmul-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bmnk, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // y = x W^T: dx = g W (N, M) x (M, K); dW = g^T x (M, N) x (N, K). Only for tracked operands,
        // and from detached operands: a gradient must not carry an autograd graph (it would chain
        // every step's graph into the optimizer state and grow without bound).
        let dx = if x.track_op() {
            Some(g.matmul(&w.detach())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(g.t()?.matmul(&x.detach())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x W^T + b` on CPU f32: the product of [`MatmulWt`] with the bias added in place, and a
/// backward that also sums the bias gradient over the rows in parallel (Candle's
/// `broadcast_add` backward reduces over dim 0 on one thread).
struct LinearCpu;

/// Rows per partial sum of the bias gradient (a fixed split: the result does not depend on the
/// thread count).
const BIAS_ROWS: usize = 256;

impl CustomOp3 for LinearCpu {
    fn name(&self) -> &'static str {
        "mslt-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = MatmulWt.cpu_fwd(s1, l1, s2, l2)?; // (N, M)
        let (n, m) = shape.dims2()?;
        let bias = cpu_slice::<f32>(s3, l3, self.name())?;
        if bias.len() != m {
            candle_core::bail!(
                "{}: bias has {} values for {m} outputs",
                self.name(),
                bias.len()
            );
        }
        let mut y = match y {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("{}: expected f32", self.name()),
        };
        y.par_chunks_mut(m)
            .with_min_len(64)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = MatmulWt.bwd(x, w, res, g)?;
        let db = if b.track_op() {
            let g = g.detach().contiguous()?; // (N, M)
            let m = g.dim(1)?;
            let sum = with_cpu_slices([&g], |[gv]| {
                let partials: Vec<Vec<f32>> = gv
                    .par_chunks(BIAS_ROWS * m)
                    .map(|blk| {
                        let mut acc = vec![0f32; m];
                        for row in blk.chunks(m) {
                            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                        }
                        acc
                    })
                    .collect();
                let mut sum = vec![0f32; m];
                for p in &partials {
                    sum.iter_mut().zip(p).for_each(|(a, v)| *a += v);
                }
                sum
            })
            .ok_or_else(|| {
                candle_core::Error::Msg("mslt-linear: CPU f32 gradient expected".into())
            })?;
            Some(Tensor::from_vec(sum, m, g.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `x W^T + b` for x (N, K), W (M, K), b (M,) -> (N, M). Fused on CPU f32 (backward, when
/// something is tracked, skips frozen operands); elsewhere the product plus a broadcast add.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) && x.dtype() == w.dtype() && w.dtype() == b.dtype() {
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        return if x.track_op() || w.track_op() || b.track_op() {
            x.apply_op3(&w, &b, LinearCpu)
        } else {
            x.apply_op3_no_bwd(&w, &b, &LinearCpu)
        };
    }
    matmul_wt(x, w)?.broadcast_add(b)
}

/// `x W^T` for x (N, K) and W (M, K) -> (N, M), with a backward that skips frozen operands.
/// When neither operand is tracked it is a plain matmul (no graph).
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !w.track_op() {
        return x.matmul(&w.t()?);
    }
    x.apply_op2(w, MatmulWt)
}

/// Per-row negative log-likelihood: logits (N, K) f32, labels (N,) U32 -> (N,). Differentiable
/// in the logits. Fused on CPU, composed elsewhere (and for non-f32 logits).
pub fn cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == candle_core::DType::F32 {
        return logits
            .contiguous()?
            .apply_op2(&labels.contiguous()?, CrossEntropyRows::default());
    }
    cross_entropy_rows_reference(logits, labels)
}

/// The composed reference: `-log_softmax(x)[y]`.
pub fn cross_entropy_rows_reference(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    lsm.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn matmul_wt_matches_matmul_and_skips_frozen_operands() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(8);
        let xv = Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(13 * 24, 0.0, 1.0),
            (13, 24),
            &dev,
        )?)?;
        let wv = Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(7 * 24, 0.0, 1.0),
            (7, 24),
            &dev,
        )?)?;
        let c = Tensor::from_vec(rng.normal_vec(13 * 7, 0.0, 1.0), (13, 7), &dev)?;
        let (x, w) = (xv.as_tensor(), wv.as_tensor());
        let fused = matmul_wt(x, w)?;
        let plain = x.matmul(&w.t()?)?;
        assert_eq!(
            fused.to_vec2::<f32>()?,
            plain.to_vec2::<f32>()?,
            "forward is the same product"
        );
        let gf = (fused * &c)?.sum_all()?.backward()?;
        let gp = (plain * &c)?.sum_all()?.backward()?;
        for v in [x, w] {
            let d = (gf.get(v).unwrap() - gp.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(d < 1e-5, "{d}");
        }
        for v in [x, w] {
            assert!(
                !gf.get(v).unwrap().track_op(),
                "a gradient must not carry a graph"
            );
        }
        // Frozen weight: no gradient computed for it; the input's is unchanged.
        let wd = w.detach();
        let g = (matmul_wt(x, &wd)? * &c)?.sum_all()?.backward()?;
        assert!(g.get(&wd).is_none());
        let d = (g.get(x).unwrap() - gp.get(x).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5);
        // Frozen input: only the weight's gradient.
        let xd = x.detach();
        let g = (matmul_wt(&xd, w)? * &c)?.sum_all()?.backward()?;
        assert!(g.get(&xd).is_none());
        let d = (g.get(w).unwrap() - gp.get(w).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5);
        Ok(())
    }

    #[test]
    fn fused_linear_matches_product_plus_bias_in_value_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        // 600 rows: more than one block of the bias-gradient sum
        let (n, k, m) = (600, 24, 9);
        let mut var = |len: usize, shape: (usize, usize)| -> Result<Var> {
            Var::from_tensor(&Tensor::from_vec(
                rng.normal_vec(len, 0.0, 1.0),
                shape,
                &dev,
            )?)
        };
        let xv = var(n * k, (n, k))?;
        let wv = var(m * k, (m, k))?;
        let bv = Var::from_tensor(&Tensor::from_vec(rng.normal_vec(m, 0.0, 1.0), m, &dev)?)?;
        let up = Tensor::from_vec(rng.normal_vec(n * m, 0.0, 1.0), (n, m), &dev)?;
        let (x, w, b) = (xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
        let fused = linear(x, w, b)?;
        let plain = x.matmul(&w.t()?)?.broadcast_add(b)?;
        let d = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "value {d}");
        let gf = (fused * &up)?.sum_all()?.backward()?;
        let gp = (plain * &up)?.sum_all()?.backward()?;
        for (name, v) in [("x", x), ("w", w), ("b", b)] {
            let (a, r) = (gf.get(v).unwrap(), gp.get(v).unwrap());
            let d = (a - r)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let s = r.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d / s < 1e-5, "d{name}: {d} vs scale {s}");
            assert!(!a.track_op(), "a gradient must not carry a graph");
        }
        // frozen weight and bias (a trainable layer's input from below): only dx
        let g = linear(x, &w.detach(), &b.detach())?.sum_all()?.backward()?;
        assert!(g.get(x).is_some());
        Ok(())
    }

    #[test]
    fn fused_cross_entropy_matches_reference_value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (37, 1013);
        let mut rng = Rng::new(4);
        let x = Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(n * k, 0.0, 3.0),
            (n, k),
            &dev,
        )?)?;
        let y = Tensor::from_vec(
            (0..n)
                .map(|_| rng.below(k as u64) as u32)
                .collect::<Vec<_>>(),
            n,
            &dev,
        )?;
        let w = Tensor::from_vec(rng.normal_vec(n, 1.0, 0.5), n, &dev)?; // non-uniform upstream grad
        let fused = cross_entropy_rows(x.as_tensor(), &y)?;
        let reference = cross_entropy_rows_reference(x.as_tensor(), &y)?;
        let d = (&fused - &reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 2e-5, "value diff {d}");
        let gf = (fused * &w)?.sum_all()?.backward()?;
        let gr = (reference * &w)?.sum_all()?.backward()?;
        let (a, b) = (
            gf.get(x.as_tensor()).unwrap(),
            gr.get(x.as_tensor()).unwrap(),
        );
        let rel = ((a - b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?
            .to_scalar::<f32>()?;
        assert!(rel < 1e-5, "gradient rel diff {rel}");
        Ok(())
    }
}
