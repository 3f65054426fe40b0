//! Depth growth as one named, asserting operation (nanoGPT's model-surgery style): from a model
//! of depth L to L + k, the new top layers are initialised by a [`GrowthOperator`], every old
//! tensor is kept unchanged (the very same tensor), and exactly the expected new names appear.
//!
//! Operators (`--init`):
//! - `copy-top` (default): new layer `L + i` = copy of layer `L - k + i` (the top k layers are
//!   repeated; needs k <= L).
//! - `copy-stack`: new layer `L + i` = copy of layer `i mod L` (Progressive Stacking 1.0: growing
//!   L -> 2L puts a copy of the whole stack on top).
//! - `random`: BERT initialisation, N(0, initializer_range).
//! - `copy-top-zero`: `copy-top` with the output projections of both residual branches
//!   (`attention.output.dense`, `output.dense`: weights and biases) set to 0, so the new layer
//!   starts as `LN_out(LN_attn(x))` with the copied LayerNorms: near the identity while the
//!   LayerNorm parameters of the copied layer and the one below are near 1 / 0 (post-LN BERT has
//!   no exactly function-preserving layer: each sublayer ends in a LayerNorm). The zeroed
//!   projections get a gradient at once (their input is not zero), the rest of the block from
//!   the next step.
//!
//! A new operator (interpolation, function-preserving growth, ...) is one more implementation of
//! [`GrowthOperator`] registered in [`operator`]; the trainer does not change.

use crate::config::BertConfig;
use crate::error::{Error, Result};
use crate::model::names;
use crate::rng::Rng;
use crate::weights::init_tensor;
use candle_core::Tensor;
use std::collections::HashMap;

pub trait GrowthOperator: Send + Sync {
    fn name(&self) -> &'static str;
    /// The tensors of new layer `new` (an index in the grown model, `old_depth <= new < new_depth`),
    /// under the names of `names::layer_params(new, ..)`.
    fn new_layer(
        &self,
        old: &HashMap<String, Tensor>,
        cfg: &BertConfig,
        old_depth: usize,
        new_depth: usize,
        new: usize,
        rng: &mut Rng,
    ) -> Result<Vec<(String, Tensor)>>;
}

/// A fresh copy (own storage) of layer `src`'s tensors under layer `dst`'s names.
fn copy_layer(
    old: &HashMap<String, Tensor>,
    src: usize,
    dst: usize,
) -> Result<Vec<(String, Tensor)>> {
    let from = format!("{}.", names::layer(src));
    let to = format!("{}.", names::layer(dst));
    let mut out = Vec::new();
    for (k, t) in old {
        if let Some(rest) = k.strip_prefix(&from) {
            out.push((format!("{to}{rest}"), t.copy()?));
        }
    }
    Ok(out)
}

pub struct CopyTop;
impl GrowthOperator for CopyTop {
    fn name(&self) -> &'static str {
        "copy-top"
    }
    fn new_layer(
        &self,
        old: &HashMap<String, Tensor>,
        _: &BertConfig,
        l: usize,
        n: usize,
        new: usize,
        _: &mut Rng,
    ) -> Result<Vec<(String, Tensor)>> {
        copy_layer(old, top_source(self.name(), l, n, new)?, new)
    }
}

/// The layer that new layer `new` copies when growing `l -> n` by repeating the top `n - l`
/// layers (`copy-top`, `copy-top-zero`).
fn top_source(op: &str, l: usize, n: usize, new: usize) -> Result<usize> {
    let k = n - l;
    if k > l {
        return Err(Error::Input(format!(
            "{op} cannot grow {l} -> {n} layers (it copies the top {k} layers and there are only {l}); use copy-stack or random"
        )));
    }
    Ok(l - k + (new - l))
}

pub struct CopyStack;
impl GrowthOperator for CopyStack {
    fn name(&self) -> &'static str {
        "copy-stack"
    }
    fn new_layer(
        &self,
        old: &HashMap<String, Tensor>,
        _: &BertConfig,
        l: usize,
        _: usize,
        new: usize,
        _: &mut Rng,
    ) -> Result<Vec<(String, Tensor)>> {
        copy_layer(old, (new - l) % l, new)
    }
}

pub struct RandomInit;
impl GrowthOperator for RandomInit {
    fn name(&self) -> &'static str {
        "random"
    }
    fn new_layer(
        &self,
        _: &HashMap<String, Tensor>,
        cfg: &BertConfig,
        _: usize,
        _: usize,
        new: usize,
        rng: &mut Rng,
    ) -> Result<Vec<(String, Tensor)>> {
        let dev = candle_core::Device::Cpu;
        names::layer_params(new, cfg.hidden_size, cfg.intermediate_size)
            .into_iter()
            .map(|(name, shape)| {
                let t = init_tensor(cfg, &name, &shape, rng, &dev)?;
                Ok((name, t))
            })
            .collect()
    }
}

pub struct CopyTopZero;
impl GrowthOperator for CopyTopZero {
    fn name(&self) -> &'static str {
        "copy-top-zero"
    }
    fn new_layer(
        &self,
        old: &HashMap<String, Tensor>,
        _: &BertConfig,
        l: usize,
        n: usize,
        new: usize,
        _: &mut Rng,
    ) -> Result<Vec<(String, Tensor)>> {
        let zeroed = [
            ".attention.output.dense.weight",
            ".attention.output.dense.bias",
            ".output.dense.weight",
            ".output.dense.bias",
        ];
        copy_layer(old, top_source(self.name(), l, n, new)?, new)?
            .into_iter()
            .map(|(name, t)| {
                // ".output.dense" also ends ".attention.output.dense": both are branch outputs
                if zeroed.iter().any(|z| name.ends_with(z)) {
                    Ok((name, t.zeros_like()?))
                } else {
                    Ok((name, t))
                }
            })
            .collect()
    }
}

/// The operator registered under `name`.
pub fn operator(name: &str) -> Result<Box<dyn GrowthOperator>> {
    match name {
        "copy-top" => Ok(Box::new(CopyTop)),
        "copy-stack" => Ok(Box::new(CopyStack)),
        "random" => Ok(Box::new(RandomInit)),
        "copy-top-zero" => Ok(Box::new(CopyTopZero)),
        _ => Err(Error::Input(format!(
            "growth init `{name}`: expected copy-top, copy-stack, random or copy-top-zero"
        ))),
    }
}

/// What a growth did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GrowthReport {
    pub operator: String,
    pub from_depth: usize,
    pub to_depth: usize,
    /// Names of the tensors added.
    pub added: Vec<String>,
    /// Number of tensors kept unchanged.
    pub kept: usize,
}

/// Grows `tensors` (a model of depth `cfg.num_hidden_layers`) to `new_depth` layers.
pub fn grow(
    tensors: &HashMap<String, Tensor>,
    cfg: &BertConfig,
    new_depth: usize,
    op: &dyn GrowthOperator,
    rng: &mut Rng,
) -> Result<(BertConfig, HashMap<String, Tensor>, GrowthReport)> {
    let l = cfg.num_hidden_layers;
    if new_depth <= l {
        return Err(Error::Input(format!(
            "growth must add layers: {l} -> {new_depth}"
        )));
    }
    if l == 0 {
        return Err(Error::Input("cannot grow a model with no layers".into()));
    }
    let mut out = tensors.clone(); // the old tensors themselves: unchanged by construction
    let mut added = Vec::new();
    let dev = tensors
        .get(names::WORD)
        .map(|t| t.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    for new in l..new_depth {
        let expected = names::layer_params(new, cfg.hidden_size, cfg.intermediate_size);
        let mut got: HashMap<String, Tensor> = op
            .new_layer(tensors, cfg, l, new_depth, new, rng)?
            .into_iter()
            .collect();
        // Exactly the expected names and shapes: anything else is a bug in the operator.
        if got.len() != expected.len() {
            return Err(Error::Input(format!(
                "growth operator {} produced {} tensors for layer {new}, expected {}",
                op.name(),
                got.len(),
                expected.len()
            )));
        }
        for (name, shape) in expected {
            let t = got.remove(&name).ok_or_else(|| {
                Error::Input(format!(
                    "growth operator {} did not produce `{name}`",
                    op.name()
                ))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    origin: format!("growth operator {}", op.name()),
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
            if out.contains_key(&name) {
                return Err(Error::Input(format!("growth would overwrite `{name}`")));
            }
            out.insert(name.clone(), t.to_device(&dev)?);
            added.push(name);
        }
    }
    let mut new_cfg = cfg.clone();
    new_cfg.num_hidden_layers = new_depth;
    debug_assert!(tensors.iter().all(|(k, t)| out[k].id() == t.id()));
    let report = GrowthReport {
        operator: op.name().into(),
        from_depth: l,
        to_depth: new_depth,
        kept: tensors.len(),
        added,
    };
    Ok((new_cfg, out, report))
}
