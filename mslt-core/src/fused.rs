//! Fused CPU ops with analytic backward for the trainable layers: LayerNorm, softmax over the
//! last dim, GELU (erf). Candle's composed forms of these (mean / sub / sqr / div ... for
//! LayerNorm, exp / sum / div for softmax, the erf-based GELU derivative) run ~10 elementwise ops
//! over each activation forward and ~20 backward; on CPU those dominated the backward pass.
//! Each op here makes one parallel pass forward and one backward (rows in parallel with rayon,
//! f32 with f32 accumulation, as the composed forms), and each is tested against the composed
//! reference it replaces, value and gradient (`tests` below; the HF parity tests run through
//! them too). CPU f32 only: other devices and dtypes use the composed references.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::ops::cpu_slice::<f32>(s, l, what)
}

/// Rows of at least this many elements in total go parallel.
const PAR_MIN: usize = 1 << 14;

/// Runs `f(row index, row)` over the rows of width `c` of `out`, in parallel when large.
fn for_rows<F: Fn((usize, &mut [f32])) + Sync + Send>(out: &mut [f32], c: usize, f: F) {
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(c).enumerate().for_each(f);
    } else {
        out.chunks_mut(c).enumerate().for_each(f);
    }
}

/// True where the fused CPU ops apply.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

// ---------------------------------------------------------------- LayerNorm

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "mslt-layer-norm"
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
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        let f = |(r, o): (usize, &mut [f32])| {
            crate::simd::layer_norm_row(o, &x[r * c..(r + 1) * c], w, b, self.eps);
        };
        for_rows(&mut out, c, f);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One pass: rows 0..N of the result are dx, row N is dgamma, row N + 1 is dbeta.
        let c = w.dim(0)?;
        let n = x.elem_count() / c;
        let all = x.detach().contiguous()?.apply_op3_no_bwd(
            &w.detach().contiguous()?,
            &g.contiguous()?,
            &LayerNormBwd { eps: self.eps },
        )?; // (N + 2, C)
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.get(n)?;
        let db = all.get(n + 1)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "mslt-layer-norm-bwd"
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
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let c = w.len();
        let n = x.len() / c;
        let mut out = vec![0f32; (n + 2) * c];
        let (dx, dwb) = out.split_at_mut(n * c);
        // One pass over blocks of rows: per row the statistics once, then
        // dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat)),  gy = g * w,
        // and the block's partial sums of dgamma = sum_rows(g * xhat), dbeta = sum_rows(g).
        // Fixed blocks of 64 rows: the sums do not depend on the thread count.
        const ROWS: usize = 64;
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROWS * c)
            .enumerate()
            .map(|(bi, block)| {
                let mut acc = vec![0f32; 2 * c];
                let (dw, db) = acc.split_at_mut(c);
                for (i, o) in block.chunks_mut(c).enumerate() {
                    let r = bi * ROWS + i;
                    crate::simd::layer_norm_bwd_row(
                        o,
                        &x[r * c..(r + 1) * c],
                        &g[r * c..(r + 1) * c],
                        w,
                        dw,
                        db,
                        self.eps,
                    );
                }
                acc
            })
            .collect();
        for p in partial {
            for (d, v) in dwb.iter_mut().zip(p) {
                *d += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 2, c))))
    }
}

/// LayerNorm over the last dim with an analytic backward (x, gamma and beta). CPU f32.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

// ---------------------------------------------------------------- softmax

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "mslt-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let c = *l.dims().last().expect("rank >= 1");
        let mut out = vec![0f32; x.len()];
        let f = |(r, o): (usize, &mut [f32])| {
            let xr = &x[r * c..(r + 1) * c];
            o.copy_from_slice(xr);
            crate::simd::softmax_row(o);
        };
        for_rows(&mut out, c, f);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            y.detach()
                .contiguous()?
                .apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "mslt-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let c = *l1.dims().last().expect("rank >= 1");
        let mut out = vec![0f32; y.len()];
        // dx = y * (g - sum(g * y))
        let f = |(r, o): (usize, &mut [f32])| {
            let yr = &y[r * c..(r + 1) * c];
            let gr = &g[r * c..(r + 1) * c];
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for k in 0..c {
                o[k] = yr[k] * (gr[k] - dot);
            }
        };
        for_rows(&mut out, c, f);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dim with an analytic backward. CPU f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------- GELU (erf)

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "mslt-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096).enumerate().for_each(|(i, o)| {
            let xr = &x[i * 4096..(i * 4096 + o.len())];
            crate::simd::gelu(o, xr);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.detach()
                .contiguous()?
                .apply_op2_no_bwd(&g.contiguous()?, &GeluErfBwd)?,
        ))
    }
}

struct GeluErfBwd;

impl CustomOp2 for GeluErfBwd {
    fn name(&self) -> &'static str {
        "mslt-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        // d/dx [x Phi(x)] = Phi(x) + x phi(x)
        out.par_chunks_mut(4096).enumerate().for_each(|(i, o)| {
            let r = i * 4096..i * 4096 + o.len();
            crate::simd::gelu_bwd(o, &x[r.clone()], &g[r]);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GELU (erf form) with an analytic backward. CPU f32.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}

#[cfg(test)]
mod tests {

    #[test]
    fn fast_erf_is_close_to_libm() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4; // [-8, 8]
            let d = (crate::simd::erf(x) as f64 - mslt_kernels::cpu::erf(x) as f64).abs();
            worst = worst.max(d);
        }
        eprintln!("max |erf - libm erf| on [-8, 8]: {worst:.2e}");
        assert!(worst < 3e-7, "max |erf error| {worst}");
        assert_eq!(crate::simd::erf(0.0), 0.0);
        assert_eq!(crate::simd::erf(-1.5), -crate::simd::erf(1.5));
    }

    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var, D};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / m.max(1e-30)
    }

    fn var(rng: &mut Rng, shape: &[usize], std: f32, mean: f32) -> Var {
        let n = shape.iter().product();
        Var::from_tensor(
            &Tensor::from_vec(rng.normal_vec(n, mean, std), shape, &Device::Cpu).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn layer_norm_matches_composed_value_and_gradients() -> Result<()> {
        let mut rng = Rng::new(21);
        // large enough to take the parallel paths, and a small odd one
        for (shape, c) in [(vec![3usize, 37, 256], 256usize), (vec![5, 7], 7)] {
            let x = var(&mut rng, &shape, 2.0, 0.3);
            let w = var(&mut rng, &[c], 0.5, 1.0);
            let b = var(&mut rng, &[c], 0.1, 0.0);
            let cot = Tensor::from_vec(
                rng.normal_vec(x.elem_count(), 0.0, 1.0),
                shape.as_slice(),
                &Device::Cpu,
            )?;
            let yf = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12)?;
            let yr = crate::nn::layer_norm_reference(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                1e-12,
            )?;
            assert!(rel(&yf, &yr) < 1e-5, "value {}", rel(&yf, &yr));
            let gf = (yf * &cot)?.sum_all()?.backward()?;
            let gr = (yr * &cot)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("gamma", &w), ("beta", &b)] {
                let (a, r) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gr.get(v.as_tensor()).unwrap(),
                );
                assert!(rel(a, r) < 1e-4, "{name}: {}", rel(a, r));
            }
        }
        Ok(())
    }

    #[test]
    fn softmax_matches_composed_value_and_gradient() -> Result<()> {
        let mut rng = Rng::new(22);
        for shape in [vec![2usize, 4, 64, 128], vec![3, 5]] {
            let x = var(&mut rng, &shape, 3.0, 0.0);
            let cot = Tensor::from_vec(
                rng.normal_vec(x.elem_count(), 0.0, 1.0),
                shape.as_slice(),
                &Device::Cpu,
            )?;
            let yf = softmax_last_dim(x.as_tensor())?;
            let yr = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
            assert!(rel(&yf, &yr) < 1e-5);
            let gf = (yf * &cot)?.sum_all()?.backward()?;
            let gr = (yr * &cot)?.sum_all()?.backward()?;
            let e = rel(
                gf.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap(),
            );
            assert!(e < 1e-4, "{e}");
        }
        Ok(())
    }

    #[test]
    fn gelu_matches_candle_value_and_gradient() -> Result<()> {
        let mut rng = Rng::new(23);
        let x = var(&mut rng, &[64, 300], 2.0, 0.0);
        let cot = Tensor::from_vec(
            rng.normal_vec(x.elem_count(), 0.0, 1.0),
            (64, 300),
            &Device::Cpu,
        )?;
        let yf = gelu_erf(x.as_tensor())?;
        let yr = x.as_tensor().gelu_erf()?;
        assert!(rel(&yf, &yr) < 1e-5, "{}", rel(&yf, &yr));
        let gf = (yf * &cot)?.sum_all()?.backward()?;
        let gr = (yr * &cot)?.sum_all()?.backward()?;
        let e = rel(
            gf.get(x.as_tensor()).unwrap(),
            gr.get(x.as_tensor()).unwrap(),
        );
        assert!(e < 1e-4, "{e}");
        Ok(())
    }
}
