//! The optimizers we own, AdamW and LAMB, with f32 state that can be saved and restored. No
//! weight decay on biases and LayerNorm parameters (HF/BERT convention).
//!
//! - **AdamW**: decoupled weight decay, `torch.optim.AdamW` semantics (checked against three
//!   PyTorch steps, tests/hf_reference.rs).
//! - **LAMB** (You et al. 2020, "Large Batch Optimization for Deep Learning"): the Adam direction
//!   with bias correction plus `weight_decay * p`, scaled per tensor by the trust ratio
//!   `||p|| / ||u||` (1 where either norm is 0), times the learning rate. By default only the
//!   weight-decayed tensors take the trust ratio (google-research BERT's
//!   `exclude_from_layer_adaptation`, apex `FusedLAMB`, timm `Lamb`); `lamb_adapt_all` applies it
//!   to every tensor (optax `lamb`, NVLAMB). Both are checked against optax
//!   (tests/lamb_reference.rs). The moments and their checkpoint names are Adam's, so a LAMB
//!   state loads wherever an AdamW state does.

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use mslt_kernels::cpu::{adamw_elem, AdamWScalars};
use std::collections::HashMap;

/// The update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    AdamW,
    Lamb,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "adamw" => Ok(Self::AdamW),
            "lamb" => Ok(Self::Lamb),
            _ => Err(format!("`{s}`: expected adamw or lamb")),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AdamW => "adamw",
            Self::Lamb => "lamb",
        })
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// LAMB: the trust ratio on every tensor, biases and LayerNorm included (default: only on the
    /// weight-decayed tensors).
    #[serde(default)]
    pub lamb_adapt_all: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            algorithm: Algorithm::AdamW,
            lamb_adapt_all: false,
        }
    }
}

/// HF/BERT convention: biases and LayerNorm parameters are not weight-decayed.
/// Global L2 norm of the gradients present (one device sync).
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let sq: Vec<Tensor> = grads
        .iter()
        .flatten()
        .map(|g| g.sqr()?.sum_all())
        .collect::<candle_core::Result<_>>()?;
    if sq.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

/// Scales the gradients to global norm `max_norm` when `norm` (their norm) exceeds it; 0 = off.
pub fn clip_grads(grads: &mut [Option<Tensor>], norm: f64, max_norm: f64) -> Result<()> {
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    Ok(())
}

/// One AdamW update on the CPU in a single parallel pass: the moments `m`, `v` in place, the new
/// parameter values returned. The arithmetic is the composed Candle path's, op for op in f32
/// (Candle's `x * s` and `x / s` with a scalar are `x * f32(s)` and `x * f32(1 / s)`), so both
/// give bit-identical results (tested).
fn cpu_update(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamWScalars) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let mut po = vec![0f32; p.len()];
    po.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, ((po, m), v))| {
            let r = i * CHUNK..(i * CHUNK + po.len());
            let (p, g) = (&p[r.clone()], &g[r]);
            for j in 0..po.len() {
                (po[j], m[j], v[j]) = adamw_elem(p[j], g[j], m[j], v[j], &k);
            }
        });
    po
}

/// The scalars of one LAMB update, in f32.
#[derive(Clone, Copy)]
struct LambStep {
    /// `weight_decay` for decayed parameters
    decay: Option<f32>,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc1: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
}

/// The first pass of a LAMB update on the CPU: the moments in place, and the update direction
/// `u = (m / bc1) / (sqrt(v / bc2) + eps) + wd * p` returned with `sum(p^2)` and `sum(u^2)` (f64)
/// for the trust ratio.
fn cpu_lamb_direction(
    p: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: LambStep,
) -> (Vec<f32>, f64, f64) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let mut u = vec![0f32; p.len()];
    let (pp, uu) = u
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(i, ((u, m), v))| {
            let r = i * CHUNK..(i * CHUNK + u.len());
            let (p, g) = (&p[r.clone()], &g[r]);
            let (mut pp, mut uu) = (0f64, 0f64);
            for j in 0..u.len() {
                let mj = m[j] + (g[j] - m[j]) * k.one_minus_beta1;
                let vj = v[j] * k.beta2 + g[j] * g[j] * k.one_minus_beta2;
                m[j] = mj;
                v[j] = vj;
                let mut uj = mj * k.inv_bc1 / (vj.sqrt() * k.inv_bc2_sqrt + k.eps);
                if let Some(wd) = k.decay {
                    uj += wd * p[j];
                }
                u[j] = uj;
                pp += (p[j] as f64) * (p[j] as f64);
                uu += (uj as f64) * (uj as f64);
            }
            (pp, uu)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    (u, pp, uu)
}

/// LAMB's trust ratio `||p|| / ||u||`, 1 where either norm is 0 (optax, apex, timm alike).
fn trust_ratio(p_sq: f64, u_sq: f64) -> f64 {
    if p_sq > 0.0 && u_sq > 0.0 {
        (p_sq / u_sq).sqrt()
    } else {
        1.0
    }
}

/// The same on the device, as a one-element f32 tensor (no synchronisation).
fn trust_ratio_tensor(p: &Tensor, u: &Tensor) -> Result<Tensor> {
    let pn = p.sqr()?.sum_all()?.sqrt()?.reshape(1)?; // (1,)
    let un = u.sqr()?.sum_all()?.sqrt()?.reshape(1)?; // (1,)
    let zero = pn.zeros_like()?;
    let both = (pn.gt(&zero)? * un.gt(&zero)?)?; // (1,) u8
    Ok(both.where_cond(&(pn / un)?, &zero.ones_like()?)?)
}

/// Adam moments: host vectors updated in place (CPU f32 parameters), one (2, n) f32 tensor
/// `[m; v]` for the fused AdamW kernel (`MSLT_OPTIMIZER_KERNEL=fused`, CUDA f32 parameters), or
/// tensors (elsewhere, and LAMB).
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Packed { mv: Tensor },
    Tensors { m: Tensor, v: Tensor },
}

/// How a non-CPU f32 parameter takes its AdamW update, from `MSLT_OPTIMIZER_KERNEL`: `candle`
/// (the default: composed Candle ops, about fifteen launches per tensor) or `fused` (one launch
/// of kernels-cu/optim.cu; not yet run on a GPU, so not the default).
pub fn fused_optimizer_kernel(env: Option<&str>) -> Result<bool> {
    match env {
        None | Some("candle") => Ok(false),
        Some("fused") => Ok(true),
        Some(o) => Err(Error::Optimizer(format!(
            "MSLT_OPTIMIZER_KERNEL=`{o}`: expected candle (the default) or fused"
        ))),
    }
}

/// Where a new parameter's moments live.
#[derive(Clone, Copy, PartialEq)]
#[cfg_attr(not(test), allow(dead_code))] // the tests force each kind
enum Placement {
    /// CPU f32 parameters on the host, fused AdamW on CUDA when asked for, tensors otherwise
    Auto { fused_kernel: bool },
    /// composed tensor ops everywhere (tests)
    Tensors,
    /// the fused AdamW op everywhere, the CPU included (tests)
    Packed,
}

pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm") || name == "cls.predictions.bias"
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// first and second moments, f32, the parameter's shape
    mom: Moments,
    /// updates applied to this parameter (PyTorch keeps one count per parameter too, which
    /// matters when moments are carried over a stage change while new parameters join)
    t: u64,
}

/// AdamW or LAMB ([`OptimizerConfig::algorithm`]) over named parameters.
pub struct Optimizer {
    pub config: OptimizerConfig,
    slots: Vec<Slot>,
}

impl Optimizer {
    /// `params`: (HF name, variable) for every trainable parameter.
    pub fn new(params: Vec<(String, Var)>, config: OptimizerConfig) -> Result<Self> {
        let env = std::env::var("MSLT_OPTIMIZER_KERNEL").ok();
        let fused_kernel = fused_optimizer_kernel(env.as_deref())?;
        Self::build(params, config, Placement::Auto { fused_kernel })
    }

    /// `place`: where the moments live (the tests force each kind and compare them).
    fn build(
        params: Vec<(String, Var)>,
        config: OptimizerConfig,
        place: Placement,
    ) -> Result<Self> {
        let adamw = config.algorithm == Algorithm::AdamW;
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let (f32, cpu) = (var.dtype() == DType::F32, var.device().is_cpu());
                let packed = adamw
                    && f32
                    && match place {
                        Placement::Auto { fused_kernel } => fused_kernel && var.device().is_cuda(),
                        Placement::Packed => true,
                        Placement::Tensors => false,
                    };
                let mom = if matches!(place, Placement::Auto { .. }) && f32 && cpu {
                    Moments::Host {
                        m: vec![0f32; var.elem_count()],
                        v: vec![0f32; var.elem_count()],
                    }
                } else if packed {
                    let mv = Tensor::zeros((2, var.elem_count()), DType::F32, var.device())?;
                    Moments::Packed { mv }
                } else {
                    let m = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                    Moments::Tensors { v: m.clone(), m }
                };
                Ok(Slot {
                    decay: !no_decay(&name),
                    name,
                    var,
                    mom,
                    t: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, slots })
    }

    /// The largest per-parameter step count.
    pub fn step_count(&self) -> u64 {
        self.slots.iter().map(|s| s.t).max().unwrap_or(0)
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Number of parameters (tensors) optimised.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// One update with the gradients in `grads`. Parameters without a gradient are skipped.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let g: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| grads.get(s.var.as_tensor()).cloned())
            .collect();
        self.step_grads(&g)
    }

    /// One update with one gradient per parameter, in the order given to [`Optimizer::new`].
    pub fn step_grads(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Optimizer(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        let c = &self.config;
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else {
                continue;
            };
            s.t += 1;
            match c.algorithm {
                Algorithm::AdamW => adamw_update(s, g, c)?,
                Algorithm::Lamb => lamb_update(s, g, c)?,
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors: `{param}.exp_avg`, `{param}.exp_avg_sq` (f32) and
    /// `{param}.step` (I64 scalar), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut map = HashMap::new();
        for s in &self.slots {
            let (m, v) = match &s.mom {
                Moments::Host { m, v } => {
                    let t = |x: &Vec<f32>| {
                        Tensor::from_slice(x, s.var.shape(), &candle_core::Device::Cpu)
                    };
                    match (t(m), t(v)) {
                        (Ok(m), Ok(v)) => (m, v),
                        _ => continue,
                    }
                }
                // views of the (2, n) tensor, which a step replaces and never writes into
                Moments::Packed { mv } => {
                    let half = |i: usize| mv.get(i).and_then(|x| x.reshape(s.var.shape()));
                    match (half(0), half(1)) {
                        (Ok(m), Ok(v)) => (m, v),
                        _ => continue,
                    }
                }
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
            };
            map.insert(format!("{}.exp_avg", s.name), m);
            map.insert(format!("{}.exp_avg_sq", s.name), v);
            if let Ok(t) = Tensor::new(s.t as i64, &candle_core::Device::Cpu) {
                map.insert(format!("{}.step", s.name), t);
            }
        }
        map
    }

    /// Restores a state saved by [`Optimizer::state`]. With `require_all`, every parameter must be
    /// there; otherwise parameters absent from `map` keep fresh (zero) moments — how moments
    /// are carried over a stage change. Returns how many parameters were restored.
    pub fn load_state(
        &mut self,
        map: &HashMap<String, Tensor>,
        require_all: bool,
    ) -> Result<usize> {
        let mut restored = 0;
        for s in &mut self.slots {
            let keys = [
                format!("{}.exp_avg", s.name),
                format!("{}.exp_avg_sq", s.name),
                format!("{}.step", s.name),
            ];
            if !require_all && !keys.iter().all(|k| map.contains_key(k)) {
                continue;
            }
            let get = |k: &str| {
                map.get(k)
                    .ok_or_else(|| Error::Optimizer(format!("state has no `{k}`")))
            };
            let (m, v, t) = (get(&keys[0])?, get(&keys[1])?, get(&keys[2])?);
            for (k, x) in [(&keys[0], m), (&keys[1], v)] {
                if x.dims() != s.var.dims() {
                    return Err(Error::Optimizer(format!(
                        "`{k}` has shape {:?}, the parameter has {:?}",
                        x.dims(),
                        s.var.dims()
                    )));
                }
            }
            let (m, v) = (
                m.to_dtype(DType::F32)?.to_device(s.var.device())?,
                v.to_dtype(DType::F32)?.to_device(s.var.device())?,
            );
            s.mom = match &s.mom {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_vec1::<f32>()?,
                },
                Moments::Packed { .. } => Moments::Packed {
                    mv: Tensor::stack(&[m.flatten_all()?, v.flatten_all()?], 0)?, // (2, n)
                },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
            s.t = t.to_dtype(DType::I64)?.to_scalar::<i64>()?.max(0) as u64;
            restored += 1;
        }
        Ok(restored)
    }
}

/// One AdamW update of one parameter (its step count already advanced).
fn adamw_update(s: &mut Slot, g: &Tensor, c: &OptimizerConfig) -> Result<()> {
    let t = s.t as i32;
    let bc1 = 1.0 - c.beta1.powi(t);
    let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
    let step_size = c.lr / bc1;
    let k = AdamWScalars {
        decay: if s.decay && c.weight_decay != 0.0 {
            Some((1.0 - c.lr * c.weight_decay) as f32)
        } else {
            None
        },
        one_minus_beta1: (1.0 - c.beta1) as f32,
        beta2: c.beta2 as f32,
        one_minus_beta2: (1.0 - c.beta2) as f32,
        inv_bc2_sqrt: (1.0 / bc2_sqrt) as f32,
        eps: c.eps as f32,
        step_size: step_size as f32,
    };
    match &mut s.mom {
        Moments::Host { m, v } => {
            let g = g.detach().to_dtype(DType::F32)?.contiguous()?;
            let p = crate::ops::with_cpu_slices([s.var.as_tensor(), &g], |[p, g]| {
                cpu_update(p, g, m, v, k)
            })
            .ok_or_else(|| host_slices_error(&s.name))?;
            let p = Tensor::from_vec(p, s.var.shape().clone(), s.var.device())?;
            s.var.set(&p)?;
        }
        Moments::Packed { mv } => {
            // one launch (kernels-cu/optim.cu) and the copy into the variable
            let g = g.detach().to_dtype(DType::F32)?;
            let out = mslt_kernels::ops::adamw_step(&s.var.as_tensor().detach(), &g, mv, k)?; // (3, n)
            s.var.set(&out.get(0)?.reshape(s.var.shape())?)?;
            *mv = out.narrow(0, 1, 2)?; // (2, n): the new [m; v]
        }
        Moments::Tensors { m, v } => {
            // Detached: the optimizer state must never hold an autograd graph.
            let g = g.detach().to_dtype(DType::F32)?;
            let mut p = s.var.as_tensor().detach().to_dtype(DType::F32)?;
            if s.decay && c.weight_decay != 0.0 {
                p = (p * (1.0 - c.lr * c.weight_decay))?;
            }
            // torch: exp_avg.lerp_(grad, 1 - beta1)
            *m = (&*m + ((&g - &*m)? * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let p = (p - (m.div(&denom)? * step_size)?)?;
            s.var.set(&p.to_dtype(s.var.dtype())?)?;
        }
    }
    Ok(())
}

/// One LAMB update of one parameter (its step count already advanced):
/// `u = m_hat / (sqrt(v_hat) + eps) + wd * p`, `p -= lr * trust_ratio * u`.
fn lamb_update(s: &mut Slot, g: &Tensor, c: &OptimizerConfig) -> Result<()> {
    let t = s.t as i32;
    let bc1 = 1.0 - c.beta1.powi(t);
    let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
    let wd = (s.decay && c.weight_decay != 0.0).then_some(c.weight_decay);
    let adapt = s.decay || c.lamb_adapt_all;
    match &mut s.mom {
        Moments::Packed { .. } => {
            return Err(Error::Optimizer(format!(
                "{}: packed moments are the fused AdamW kernel's, not LAMB's",
                s.name
            )))
        }
        Moments::Host { m, v } => {
            let k = LambStep {
                decay: wd.map(|w| w as f32),
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2_sqrt: (1.0 / bc2_sqrt) as f32,
                eps: c.eps as f32,
            };
            let g = g.detach().to_dtype(DType::F32)?.contiguous()?;
            let p = crate::ops::with_cpu_slices([s.var.as_tensor(), &g], |[p, g]| {
                let (u, p_sq, u_sq) = cpu_lamb_direction(p, g, m, v, k);
                let ratio = if adapt { trust_ratio(p_sq, u_sq) } else { 1.0 };
                let step = (c.lr * ratio) as f32;
                use rayon::prelude::*;
                p.par_iter()
                    .zip(u.par_iter())
                    .map(|(p, u)| p - step * u)
                    .collect::<Vec<f32>>()
            })
            .ok_or_else(|| host_slices_error(&s.name))?;
            let p = Tensor::from_vec(p, s.var.shape().clone(), s.var.device())?;
            s.var.set(&p)?;
        }
        Moments::Tensors { m, v } => {
            let g = g.detach().to_dtype(DType::F32)?;
            let p = s.var.as_tensor().detach().to_dtype(DType::F32)?;
            *m = (&*m + ((&g - &*m)? * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let mut u = ((&*m / bc1)?.div(&denom))?;
            if let Some(wd) = wd {
                u = (u + (&p * wd)?)?;
            }
            let step = if adapt {
                u.broadcast_mul(&(trust_ratio_tensor(&p, &u)? * c.lr)?)?
            } else {
                (u * c.lr)?
            };
            let p = (&p - step)?;
            s.var.set(&p.to_dtype(s.var.dtype())?)?;
        }
    }
    Ok(())
}

fn host_slices_error(name: &str) -> Error {
    Error::Optimizer(format!(
        "{name}: expected contiguous f32 CPU parameter and gradient"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// Two equal, separate sets of named parameters with normal values (name, length, std).
    type Named = Vec<(String, Var)>;
    fn twin_params(rng: &mut Rng, spec: &[(&str, usize, f32)]) -> Result<(Named, Named)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &(n, len, std) in spec {
            let t = Tensor::from_vec(rng.normal_vec(len, 0.0, std), len, &Device::Cpu)?;
            a.push((n.to_string(), Var::from_tensor(&t)?));
            b.push((n.to_string(), Var::from_tensor(&t)?)); // a copy
        }
        Ok((a, b))
    }

    /// The bits of an f32 tensor's values (the tests compare updates bit for bit).
    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(v.iter().map(|x| x.to_bits()).collect())
    }

    /// Normal gradients of std `1 + step`; zeros for parameters named `*zero_grad*`.
    fn random_grads(rng: &mut Rng, params: &Named, step: usize) -> Result<Vec<Option<Tensor>>> {
        params
            .iter()
            .map(|(n, v)| {
                let std = if n.contains("zero_grad") {
                    0.0
                } else {
                    1.0 + step as f32
                };
                let g = rng.normal_vec(v.elem_count(), 0.0, std);
                Ok(Some(Tensor::from_vec(g, v.shape(), &Device::Cpu)?))
            })
            .collect()
    }

    /// The one-pass CPU update gives bit-identical parameters and moments to the composed
    /// tensor ops, over several steps, with and without weight decay.
    #[test]
    fn one_pass_cpu_update_is_bit_identical_to_the_composed_ops() -> Result<()> {
        let mut rng = Rng::new(3);
        let spec = [
            ("layer.dense.weight", 50_000, 0.5),
            ("layer.dense.bias", 300, 0.5),
        ];
        let (pa, pb) = twin_params(&mut rng, &spec)?;
        let cfg = OptimizerConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut fused = Optimizer::new(pa.clone(), cfg.clone())?;
        let mut composed = Optimizer::build(pb.clone(), cfg, Placement::Tensors)?;
        for step in 0..4 {
            let grads = random_grads(&mut rng, &pa, step)?;
            fused.step_grads(&grads)?;
            composed.step_grads(&grads)?;
        }
        for ((n, a), (_, b)) in pa.iter().zip(&pb) {
            assert_eq!(bits(a.as_tensor())?, bits(b.as_tensor())?, "{n}");
        }
        let (sa, sb) = (fused.state(), composed.state());
        for (k, v) in &sa {
            if v.dtype() == DType::F32 {
                assert_eq!(bits(v)?, bits(&sb[k])?, "{k}");
            }
        }
        Ok(())
    }

    /// LAMB: the one-pass CPU update and the composed tensor ops agree (to f32 rounding: the
    /// norms are summed in another order) over several steps, in both trust-ratio variants,
    /// with a zero parameter (zero norm: ratio 1) and a parameter whose gradients are zero.
    #[test]
    fn lamb_cpu_update_matches_the_composed_ops() -> Result<()> {
        for adapt_all in [false, true] {
            let mut rng = Rng::new(5);
            let spec = [
                ("layer.dense.weight", 40_000, 0.5),
                ("layer.dense.bias", 300, 0.0),
                ("layer.LayerNorm.weight", 300, 1.0),
                ("layer.zero_grad.weight", 200, 0.5),
            ];
            let (pa, pb) = twin_params(&mut rng, &spec)?;
            let cfg = OptimizerConfig {
                lr: 1e-2,
                weight_decay: 0.1,
                algorithm: Algorithm::Lamb,
                lamb_adapt_all: adapt_all,
                ..Default::default()
            };
            let mut fused = Optimizer::new(pa.clone(), cfg.clone())?;
            let mut composed = Optimizer::build(pb.clone(), cfg, Placement::Tensors)?;
            let before = pa[0].1.as_tensor().copy()?;
            for step in 0..4 {
                let grads = random_grads(&mut rng, &pa, step)?;
                fused.step_grads(&grads)?;
                composed.step_grads(&grads)?;
            }
            for ((n, a), (_, b)) in pa.iter().zip(&pb) {
                let (a, b) = (a.as_tensor(), b.as_tensor());
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                assert!(
                    diff / scale < 1e-6,
                    "{n} (adapt_all {adapt_all}): {diff} / {scale}"
                );
                assert!(a
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|x| x.is_finite()));
            }
            // The update moved the weight: LAMB's step is lr * ||p|| per step at most.
            let moved = (pa[0].1.as_tensor() - &before)?.sqr()?.sum_all()?.sqrt()?;
            let norm = before.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            let moved = moved.to_scalar::<f32>()?;
            assert!(
                moved > 0.0 && moved <= 4.0 * 1e-2 * norm * 1.01,
                "{moved} vs {norm}"
            );
        }
        Ok(())
    }

    /// The fused AdamW op (kernels-cu/optim.cu's CPU side here; the same on CUDA by
    /// `kernels check`) with its packed moments gives the host update's bits, and its state
    /// saves and restores: two steps, a checkpoint, two more in a fresh optimizer of each kind.
    #[test]
    fn fused_adamw_op_is_bit_identical_to_the_host_update_across_a_restore() -> Result<()> {
        let mut rng = Rng::new(11);
        let spec = [
            ("layer.dense.weight", 3000, 0.5),
            ("layer.dense.bias", 70, 0.5),
        ];
        let (pa, pb) = twin_params(&mut rng, &spec)?;
        let cfg = OptimizerConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let auto = Placement::Auto {
            fused_kernel: false,
        };
        let mut host = Optimizer::build(pa.clone(), cfg.clone(), auto)?;
        let mut packed = Optimizer::build(pb.clone(), cfg.clone(), Placement::Packed)?;
        assert!(matches!(packed.slots[0].mom, Moments::Packed { .. }));
        let same = |a: &Named, b: &Named, when: &str| -> Result<()> {
            for ((n, x), (_, y)) in a.iter().zip(b) {
                assert_eq!(bits(x.as_tensor())?, bits(y.as_tensor())?, "{n} {when}");
            }
            Ok(())
        };
        for step in 0..2 {
            let grads = random_grads(&mut rng, &pa, step)?;
            host.step_grads(&grads)?;
            packed.step_grads(&grads)?;
        }
        same(&pa, &pb, "after 2 steps")?;
        let (sa, sb) = (host.state(), packed.state());
        for (k, v) in &sa {
            if v.dtype() == DType::F32 {
                assert_eq!(bits(v)?, bits(&sb[k])?, "{k}");
            } else {
                assert_eq!(v.to_vec0::<i64>()?, sb[k].to_vec0::<i64>()?, "{k}");
            }
        }
        let mut host = Optimizer::build(pa.clone(), cfg.clone(), auto)?;
        let mut packed = Optimizer::build(pb.clone(), cfg, Placement::Packed)?;
        assert_eq!(host.load_state(&sa, true)?, 2);
        assert_eq!(packed.load_state(&sb, true)?, 2);
        for step in 2..4 {
            let grads = random_grads(&mut rng, &pa, step)?;
            host.step_grads(&grads)?;
            packed.step_grads(&grads)?;
        }
        same(&pa, &pb, "after a restore and 2 more steps")?;
        // the switch
        assert!(!fused_optimizer_kernel(None)?);
        assert!(fused_optimizer_kernel(Some("fused"))?);
        let e = fused_optimizer_kernel(Some("fast"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MSLT_OPTIMIZER_KERNEL=`fast`: expected candle"),
            "{e}"
        );
        Ok(())
    }
}
