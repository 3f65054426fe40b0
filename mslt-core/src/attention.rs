//! Fused self-attention core on CPU with analytic backward:
//! `out = dropout(softmax(q k^T / sqrt(HS) + mask)) v`, heads split and merged in place.
//!
//! The composed form (`ops` on `(B, NH, T, HS)` tensors) copies q, k, v into head-major layout,
//! runs Candle's batched matmul (one multi-threaded gemm per (batch, head): B x NH small products
//! forking threads each), and makes separate passes for the scale, the mask, the softmax, the
//! dropout and the head merge, each again backward. Here every batch row is one task (rows in
//! parallel with rayon); within it each head's products are single-threaded gemm calls that read
//! q, k, v straight from the `(B, T, C)` projections through strides and write the merged
//! `(B, T, C)` output, with scale, mask, softmax and dropout applied to the `(T, T)` block
//! in between. The softmax probabilities and the dropout mask are kept for the backward
//! (B x NH x T x T floats and bytes), which recomputes nothing.
//!
//! Tested against the composed reference ([`attention_reference`]) in value and in the
//! gradients of q, k and v, with padding and with dropout (same mask). CPU f32 only.

use crate::rng::Rng;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// `dst (m, n) = beta * lhs (m, k) x rhs (k, n)` (dst overwritten), strides in elements (row,
/// column; dst's columns are contiguous). Single-threaded: the callers parallelise over rows.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_st(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The dropout generator of block (batch row, head): a function of the op's seed alone.
fn block_rng(seed: u64, b: usize, h: usize) -> Rng {
    Rng::new(
        seed ^ ((b as u64) << 20 | h as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// What the backward needs: softmax probabilities (B, NH, T, T) and the dropout keep mask.
struct Saved {
    probs: Vec<f32>,
    keep: Option<Vec<u8>>,
}

struct AttentionCore {
    heads: usize,
    /// additive key mask (B, T): 0 keeps a key, a large negative number drops it
    mask: Vec<f32>,
    /// dropout probability on the attention probabilities (0 = none) and its seed
    p: f32,
    seed: u64,
    /// keep what the backward needs (a tracked input)
    save: bool,
    saved: Mutex<Option<Saved>>,
}

fn dims(l: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    let (b, t, c) = l.shape().dims3()?;
    if l.contiguous_offsets().is_none() {
        candle_core::bail!("{what}: expected a contiguous (B, T, C) tensor");
    }
    Ok((b, t, c))
}

impl CustomOp3 for AttentionCore {
    fn name(&self) -> &'static str {
        "mslt-attention-core"
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
        let what = self.name();
        let (b, t, c) = dims(l1, what)?;
        if dims(l2, what)? != (b, t, c) || dims(l3, what)? != (b, t, c) {
            candle_core::bail!("{what}: q, k and v must have the same (B, T, C) shape");
        }
        if c % self.heads != 0 || self.mask.len() != b * t {
            candle_core::bail!(
                "{what}: C {c} is not a multiple of {} heads, or the mask has {} values for B x T = {}",
                self.heads,
                self.mask.len(),
                b * t
            );
        }
        let q = crate::ops::cpu_slice::<f32>(s1, l1, what)?;
        let k = crate::ops::cpu_slice::<f32>(s2, l2, what)?;
        let v = crate::ops::cpu_slice::<f32>(s3, l3, what)?;
        let (nh, hs) = (self.heads, c / self.heads);
        let scale = 1.0 / (hs as f32).sqrt();
        let tt = t * t;
        let dropout = self.p > 0.0;
        let inv_keep = 1.0 / (1.0 - self.p);
        let mut out = vec![0f32; b * t * c];
        let mut probs = vec![0f32; b * nh * tt];
        let mut keep = if dropout {
            vec![0u8; b * nh * tt]
        } else {
            Vec::new()
        };
        let keep_chunks: Vec<&mut [u8]> = if dropout {
            keep.chunks_mut(nh * tt).collect()
        } else {
            (0..b).map(|_| <&mut [u8]>::default()).collect()
        };
        out.par_chunks_mut(t * c)
            .zip(probs.par_chunks_mut(nh * tt))
            .zip(keep_chunks.into_par_iter())
            .enumerate()
            .for_each(|(bi, ((o, pr), kp))| {
                let base = bi * t * c;
                let mrow = &self.mask[bi * t..(bi + 1) * t];
                let mut dropped = vec![0f32; if dropout { tt } else { 0 }];
                for h in 0..nh {
                    let p = &mut pr[h * tt..(h + 1) * tt]; // (T, T)
                    let off = base + h * hs;
                    // S = scale * q_h k_h^T: (T, HS) x (HS, T)
                    unsafe {
                        gemm_st(
                            t,
                            t,
                            hs,
                            p.as_mut_ptr(),
                            t as isize,
                            q[off..].as_ptr(),
                            c as isize,
                            1,
                            k[off..].as_ptr(),
                            1,
                            c as isize,
                            scale,
                        )
                    };
                    for row in p.chunks_mut(t) {
                        for (x, &m) in row.iter_mut().zip(mrow) {
                            *x += m;
                        }
                        crate::simd::softmax_row(row);
                    }
                    let pv: &[f32] = if dropout {
                        let mut r = block_rng(self.seed, bi, h);
                        let kb = &mut kp[h * tt..(h + 1) * tt];
                        for ((d, &x), kk) in dropped.iter_mut().zip(p.iter()).zip(kb.iter_mut()) {
                            let keep_it = r.uniform_f32() >= self.p;
                            *kk = keep_it as u8;
                            *d = if keep_it { x * inv_keep } else { 0.0 };
                        }
                        &dropped
                    } else {
                        p
                    };
                    // O_h = P v_h: (T, T) x (T, HS), written into the merged (T, C) rows
                    unsafe {
                        gemm_st(
                            t,
                            hs,
                            t,
                            o[h * hs..].as_mut_ptr(),
                            c as isize,
                            pv.as_ptr(),
                            t as isize,
                            1,
                            v[off..].as_ptr(),
                            c as isize,
                            1,
                            1.0,
                        )
                    };
                }
            });
        if self.save {
            *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Some(Saved {
                probs,
                keep: dropout.then_some(keep),
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, c))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "mslt-attention-core: backward without saved probabilities (run twice?)".into(),
                )
            })?;
        let (b, t, c) = q.dims3()?;
        let grad = grad.contiguous()?;
        let (nh, hs) = (self.heads, c / self.heads);
        let scale = 1.0 / (hs as f32).sqrt();
        let tt = t * t;
        let inv_keep = 1.0 / (1.0 - self.p);
        let n = b * t * c;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        // q, k, v are the contiguous forward inputs; all four are read in place
        crate::ops::with_cpu_slices([q, k, v, &grad], |[qv, kv, vv, g]| {
            dq.par_chunks_mut(t * c)
                .zip(dk.par_chunks_mut(t * c))
                .zip(dv.par_chunks_mut(t * c))
                .enumerate()
                .for_each(|(bi, ((dqb, dkb), dvb))| {
                    let base = bi * t * c;
                    let mut pd = vec![0f32; tt]; // P after dropout
                    let mut dp = vec![0f32; tt];
                    for h in 0..nh {
                        let blk = (bi * nh + h) * tt;
                        let p = &saved.probs[blk..blk + tt];
                        let keep = saved.keep.as_ref().map(|kp| &kp[blk..blk + tt]);
                        let pv: &[f32] = match keep {
                            Some(kb) => {
                                for ((d, &x), &kk) in pd.iter_mut().zip(p).zip(kb) {
                                    *d = if kk != 0 { x * inv_keep } else { 0.0 };
                                }
                                &pd
                            }
                            None => p,
                        };
                        let off = base + h * hs;
                        unsafe {
                            // dV_h = P'^T dO_h: (T, T)^T x (T, HS)
                            gemm_st(
                                t,
                                hs,
                                t,
                                dvb[h * hs..].as_mut_ptr(),
                                c as isize,
                                pv.as_ptr(),
                                1,
                                t as isize,
                                g[off..].as_ptr(),
                                c as isize,
                                1,
                                1.0,
                            );
                            // dP' = dO_h v_h^T: (T, HS) x (HS, T)
                            gemm_st(
                                t,
                                t,
                                hs,
                                dp.as_mut_ptr(),
                                t as isize,
                                g[off..].as_ptr(),
                                c as isize,
                                1,
                                vv[off..].as_ptr(),
                                1,
                                c as isize,
                                1.0,
                            );
                        }
                        if let Some(kb) = keep {
                            for (d, &kk) in dp.iter_mut().zip(kb) {
                                *d = if kk != 0 { *d * inv_keep } else { 0.0 };
                            }
                        }
                        // softmax backward: dS = P (dP - sum_j dP_j P_j), scaled for q k^T
                        for (drow, prow) in dp.chunks_mut(t).zip(p.chunks(t)) {
                            let dot: f32 = drow.iter().zip(prow).map(|(a, b)| a * b).sum();
                            for (d, &pp) in drow.iter_mut().zip(prow) {
                                *d = pp * (*d - dot) * scale;
                            }
                        }
                        unsafe {
                            // dQ_h = dS k_h: (T, T) x (T, HS)
                            gemm_st(
                                t,
                                hs,
                                t,
                                dqb[h * hs..].as_mut_ptr(),
                                c as isize,
                                dp.as_ptr(),
                                t as isize,
                                1,
                                kv[off..].as_ptr(),
                                c as isize,
                                1,
                                1.0,
                            );
                            // dK_h = dS^T q_h: (T, T)^T x (T, HS)
                            gemm_st(
                                t,
                                hs,
                                t,
                                dkb[h * hs..].as_mut_ptr(),
                                c as isize,
                                dp.as_ptr(),
                                1,
                                t as isize,
                                qv[off..].as_ptr(),
                                c as isize,
                                1,
                                1.0,
                            );
                        }
                    }
                });
        })
        .ok_or_else(|| {
            candle_core::Error::Msg(
                "mslt-attention-core: contiguous f32 CPU tensors expected".into(),
            )
        })?;
        let dev = q.device();
        let mk = |x: Vec<f32>, tracked: bool| -> Result<Option<Tensor>> {
            if tracked {
                Ok(Some(Tensor::from_vec(x, (b, t, c), dev)?))
            } else {
                Ok(None)
            }
        };
        Ok((
            mk(dq, q.track_op())?,
            mk(dk, k.track_op())?,
            mk(dv, v.track_op())?,
        ))
    }
}

/// True where the fused core applies: CPU, f32.
pub fn applies(q: &Tensor) -> bool {
    crate::fused::applies(q)
}

/// Self-attention core: q, k, v (B, T, C) projections (heads side by side in C), additive
/// key mask (B, 1, 1, T) (or anything with B x T elements), `heads` heads, dropout `p` on the
/// probabilities drawn from `seed`. Returns (B, T, C), heads merged. CPU f32; differentiable in
/// q, k and v.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    p: f64,
    seed: u64,
) -> Result<Tensor> {
    let save = q.track_op() || k.track_op() || v.track_op();
    let op = AttentionCore {
        heads,
        mask: mask.flatten_all()?.to_vec1::<f32>()?,
        p: p as f32,
        seed,
        save,
        saved: Mutex::new(None),
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if save {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// The composed reference: head split, `softmax(q k^T * scale + mask)`, optional dropout
/// multiplier `(B, NH, T, T)`, `P v`, head merge.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    dropout_mul: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, c) = q.dims3()?;
    let hs = c / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        x.reshape((b, t, heads, hs))?.transpose(1, 2)?.contiguous() // (B, NH, T, HS)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let s = (q.matmul(&k.t()?)? * (1.0 / (hs as f64).sqrt()))?; // (B, NH, T, T)
    let s = s.broadcast_add(&mask.reshape((b, 1, 1, t))?)?;
    let mut p = candle_nn::ops::softmax(&s, candle_core::D::Minus1)?;
    if let Some(m) = dropout_mul {
        p = (p * m)?;
    }
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c)) // (B, T, C)
}

/// The dropout multiplier (B, NH, T, T) the fused core draws for `seed`: 0 or 1 / (1 - p).
pub fn dropout_multiplier(b: usize, heads: usize, t: usize, p: f64, seed: u64) -> Result<Tensor> {
    let p32 = p as f32;
    let inv = 1.0 / (1.0 - p32);
    let mut m = Vec::with_capacity(b * heads * t * t);
    for bi in 0..b {
        for h in 0..heads {
            let mut r = block_rng(seed, bi, h);
            m.extend((0..t * t).map(|_| if r.uniform_f32() >= p32 { inv } else { 0.0 }));
        }
    }
    Tensor::from_vec(m, (b, heads, t, t), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(rng: &mut Rng, shape: (usize, usize, usize)) -> Result<Var> {
        let n = shape.0 * shape.1 * shape.2;
        Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(n, 0.0, 1.0),
            shape,
            &Device::Cpu,
        )?)
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let s = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / s.max(1e-12))
    }

    #[test]
    fn fused_core_matches_the_composed_reference_in_value_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for &(b, t, heads, hs, p) in &[
            (3usize, 17usize, 2usize, 8usize, 0.0f64),
            (2, 33, 4, 16, 0.0),
            (2, 24, 3, 8, 0.25),
        ] {
            let c = heads * hs;
            let mut rng = Rng::new(b as u64 * 31 + t as u64);
            let (q, k, v) = (
                rand(&mut rng, (b, t, c))?,
                rand(&mut rng, (b, t, c))?,
                rand(&mut rng, (b, t, c))?,
            );
            // padding: the last 5 keys of batch row 1 masked
            let mut m = vec![0f32; b * t];
            m[t * 2 - 5..t * 2].iter_mut().for_each(|x| *x = -1e9);
            let mask = Tensor::from_vec(m, (b, 1, 1, t), &dev)?;
            let up = Tensor::from_vec(rng.normal_vec(b * t * c, 0.0, 1.0), (b, t, c), &dev)?;
            let seed = 99;
            let fused = attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                heads,
                p,
                seed,
            )?;
            let dm = (p > 0.0)
                .then(|| dropout_multiplier(b, heads, t, p, seed))
                .transpose()?;
            let reference = attention_reference(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                heads,
                dm.as_ref(),
            )?;
            let e = max_rel(&fused, &reference)?;
            assert!(
                e < 1e-5,
                "value rel error {e} at {b} x {t} x {heads} x {hs}, p {p}"
            );
            let gf = (fused * &up)?.sum_all()?.backward()?;
            let gr = (reference * &up)?.sum_all()?.backward()?;
            for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, r) = (
                    gf.get(var.as_tensor()).unwrap(),
                    gr.get(var.as_tensor()).unwrap(),
                );
                let e = max_rel(a, r)?;
                assert!(e < 1e-4, "d{name} rel error {e} at {b} x {t}, p {p}");
                assert!(r.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn masked_keys_get_no_weight_and_frozen_inputs_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, heads, hs) = (1, 6, 2, 4);
        let c = heads * hs;
        let mut rng = Rng::new(5);
        let q = rand(&mut rng, (b, t, c))?;
        let k = rand(&mut rng, (b, t, c))?;
        let v0 = Tensor::from_vec(rng.normal_vec(b * t * c, 0.0, 1.0), (b, t, c), &dev)?;
        let mask = Tensor::new(&[0f32, 0., 0., 0., -1e9, -1e9], &dev)?.reshape((1, 1, 1, t))?;
        let out0 = attention(q.as_tensor(), k.as_tensor(), &v0, &mask, heads, 0.0, 0)?;
        // change the values at the masked positions: the output must not move
        let v1 = v0.slice_assign(
            &[0..1, 4..6, 0..c],
            &Tensor::ones((1, 2, c), candle_core::DType::F32, &dev)?.affine(100.0, 0.0)?,
        )?;
        let out1 = attention(q.as_tensor(), k.as_tensor(), &v1, &mask, heads, 0.0, 0)?;
        assert_eq!(out0.to_vec3::<f32>()?, out1.to_vec3::<f32>()?);
        let g = out0.sum_all()?.backward()?;
        assert!(g.get(&v0).is_none(), "v is frozen");
        assert!(g.get(q.as_tensor()).is_some() && g.get(k.as_tensor()).is_some());
        Ok(())
    }
}
