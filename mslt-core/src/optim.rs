//! AdamW that we own: decoupled weight decay (PyTorch `torch.optim.AdamW` semantics), no decay on
//! biases and LayerNorm weights, f32 state that can be saved and restored.

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
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

/// The scalars of one AdamW update, in f32.
#[derive(Clone, Copy)]
struct CpuStep {
    /// `1 - lr * weight_decay` for decayed parameters
    decay: Option<f32>,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

/// One AdamW update on the CPU in a single parallel pass: the moments `m`, `v` in place, the new
/// parameter values returned. The arithmetic is the composed Candle path's, op for op in f32
/// (Candle's `x * s` and `x / s` with a scalar are `x * f32(s)` and `x * f32(1 / s)`), so both
/// give bit-identical results (tested).
fn cpu_update(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: CpuStep) -> Vec<f32> {
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
                let pj = match k.decay {
                    Some(d) => p[j] * d,
                    None => p[j],
                };
                let mj = m[j] + (g[j] - m[j]) * k.one_minus_beta1;
                let vj = v[j] * k.beta2 + g[j] * g[j] * k.one_minus_beta2;
                let denom = vj.sqrt() * k.inv_bc2_sqrt + k.eps;
                m[j] = mj;
                v[j] = vj;
                po[j] = pj - mj / denom * k.step_size;
            }
        });
    po
}

/// AdamW moments: host vectors updated in place (CPU f32 parameters), or tensors (elsewhere).
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
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

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// `params`: (HF name, variable) for every trainable parameter.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::build(params, config, true)
    }

    /// `fused_cpu`: CPU f32 parameters keep host moments and take the one-pass update
    /// (`cpu_update`); false forces the composed tensor ops everywhere (the tests compare them).
    fn build(params: Vec<(String, Var)>, config: AdamWConfig, fused_cpu: bool) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let mom = if fused_cpu && var.device().is_cpu() && var.dtype() == DType::F32 {
                    Moments::Host {
                        m: vec![0f32; var.elem_count()],
                        v: vec![0f32; var.elem_count()],
                    }
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

    /// One update with one gradient per parameter, in the order given to [`AdamW::new`].
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
            let t = s.t as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
            let step_size = c.lr / bc1;
            let k = CpuStep {
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
                    .ok_or_else(|| {
                        Error::Optimizer(format!(
                            "{}: expected contiguous f32 CPU parameter and gradient",
                            s.name
                        ))
                    })?;
                    let p = Tensor::from_vec(p, s.var.shape().clone(), s.var.device())?;
                    s.var.set(&p)?;
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

    /// Restores a state saved by [`AdamW::state`]. With `require_all`, every parameter must be
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
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
            s.t = t.to_dtype(DType::I64)?.to_scalar::<i64>()?.max(0) as u64;
            restored += 1;
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// The one-pass CPU update gives bit-identical parameters and moments to the composed
    /// tensor ops, over several steps, with and without weight decay.
    #[test]
    fn one_pass_cpu_update_is_bit_identical_to_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let mut make = || -> Result<Vec<(String, Var)>> {
            [
                ("layer.dense.weight", 50_000usize),
                ("layer.dense.bias", 300),
            ]
            .iter()
            .map(|&(n, len)| {
                let t = Tensor::from_vec(rng.normal_vec(len, 0.0, 0.5), len, &dev)?;
                Ok((n.to_string(), Var::from_tensor(&t)?))
            })
            .collect()
        };
        let (pa, pb) = (make()?, make()?);
        for ((_, a), (_, b)) in pa.iter().zip(&pb) {
            b.set(a.as_tensor())?;
        }
        let cfg = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut fused = AdamW::new(pa.clone(), cfg.clone())?;
        let mut composed = AdamW::build(pb.clone(), cfg, false)?;
        for step in 0..4 {
            let grads: Vec<Option<Tensor>> = pa
                .iter()
                .map(|(_, v)| {
                    Ok(Some(Tensor::from_vec(
                        rng.normal_vec(v.elem_count(), 0.0, 1.0 + step as f32),
                        v.shape(),
                        &dev,
                    )?))
                })
                .collect::<Result<_>>()?;
            fused.step_grads(&grads)?;
            composed.step_grads(&grads)?;
        }
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|x| x.to_bits())
                .collect())
        };
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
}
