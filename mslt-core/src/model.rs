//! BERT for pre-training (post-LN), as Hugging Face `BertForPreTraining`, with HF parameter names.
//!
//! Reference: transformers `models/bert/modeling_bert.py` (`BertEmbeddings`, `BertSelfAttention`,
//! `BertSelfOutput`, `BertIntermediate`, `BertOutput`, `BertLayer`, `BertPooler`,
//! `BertPredictionHeadTransform`, `BertLMPredictionHead`, `BertPreTrainingHeads`).
//!
//! Parameters are plain `Tensor`s: a layer built from `Var`-backed tensors trains, a layer built
//! from detached tensors is frozen and runs forward only on fused no-backward ops (see `nn`).

use crate::config::{Activation, BertConfig};
use crate::error::{Error, Result};
use crate::nn::{self, dropout, LayerNorm, Linear, Mode};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use std::collections::HashMap;

/// Which optional heads a model has (a `BertModel` checkpoint has none or only the pooler).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    pub pooler: bool,
    pub mlm: bool,
    pub nsp: bool,
}

impl Heads {
    pub const ALL: Heads = Heads {
        pooler: true,
        mlm: true,
        nsp: true,
    };
}

/// HF parameter names (with the `bert.` prefix of `BertForPreTraining`).
pub mod names {
    pub const WORD: &str = "bert.embeddings.word_embeddings.weight";
    pub const POSITION: &str = "bert.embeddings.position_embeddings.weight";
    pub const TOKEN_TYPE: &str = "bert.embeddings.token_type_embeddings.weight";
    pub const EMB_LN: &str = "bert.embeddings.LayerNorm";
    pub const POOLER: &str = "bert.pooler.dense";
    pub const MLM_DENSE: &str = "cls.predictions.transform.dense";
    pub const MLM_LN: &str = "cls.predictions.transform.LayerNorm";
    pub const MLM_BIAS: &str = "cls.predictions.bias";
    /// The MLM decoder's own weight, (V, C): only in models with `tie_word_embeddings: false`.
    pub const MLM_DECODER: &str = "cls.predictions.decoder.weight";
    pub const NSP: &str = "cls.seq_relationship";

    /// `bert.encoder.layer.{i}`
    pub fn layer(i: usize) -> String {
        format!("bert.encoder.layer.{i}")
    }

    /// Every parameter of layer `i` with its shape, in HF order.
    pub fn layer_params(i: usize, c: usize, inter: usize) -> Vec<(String, Vec<usize>)> {
        let p = layer(i);
        let mut v = Vec::new();
        for lin in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
        ] {
            v.push((format!("{p}.{lin}.weight"), vec![c, c]));
            v.push((format!("{p}.{lin}.bias"), vec![c]));
        }
        v.push((format!("{p}.attention.output.dense.weight"), vec![c, c]));
        v.push((format!("{p}.attention.output.dense.bias"), vec![c]));
        v.push((format!("{p}.attention.output.LayerNorm.weight"), vec![c]));
        v.push((format!("{p}.attention.output.LayerNorm.bias"), vec![c]));
        v.push((format!("{p}.intermediate.dense.weight"), vec![inter, c]));
        v.push((format!("{p}.intermediate.dense.bias"), vec![inter]));
        v.push((format!("{p}.output.dense.weight"), vec![c, inter]));
        v.push((format!("{p}.output.dense.bias"), vec![c]));
        v.push((format!("{p}.output.LayerNorm.weight"), vec![c]));
        v.push((format!("{p}.output.LayerNorm.bias"), vec![c]));
        v
    }
}

/// Every parameter of a model with `heads`, with its shape (a tied decoder is not listed: it is
/// the word-embedding matrix; an untied one is, as `cls.predictions.decoder.weight`).
pub fn parameter_shapes(cfg: &BertConfig, heads: Heads) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![
        (names::WORD.to_string(), vec![v, c]),
        (
            names::POSITION.to_string(),
            vec![cfg.max_position_embeddings, c],
        ),
        (names::TOKEN_TYPE.to_string(), vec![cfg.type_vocab_size, c]),
        (format!("{}.weight", names::EMB_LN), vec![c]),
        (format!("{}.bias", names::EMB_LN), vec![c]),
    ];
    for i in 0..cfg.num_hidden_layers {
        out.extend(names::layer_params(i, c, cfg.intermediate_size));
    }
    out.extend(head_parameter_shapes(cfg, heads));
    out
}

/// The parameters of the optional heads selected by `heads`.
pub fn head_parameter_shapes(cfg: &BertConfig, heads: Heads) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = Vec::new();
    if heads.pooler {
        out.push((format!("{}.weight", names::POOLER), vec![c, c]));
        out.push((format!("{}.bias", names::POOLER), vec![c]));
    }
    if heads.mlm {
        out.push((format!("{}.weight", names::MLM_DENSE), vec![c, c]));
        out.push((format!("{}.bias", names::MLM_DENSE), vec![c]));
        out.push((format!("{}.weight", names::MLM_LN), vec![c]));
        out.push((format!("{}.bias", names::MLM_LN), vec![c]));
        out.push((names::MLM_BIAS.to_string(), vec![v]));
        if !cfg.tie_word_embeddings {
            out.push((names::MLM_DECODER.to_string(), vec![v, c]));
        }
    }
    if heads.nsp {
        out.push((format!("{}.weight", names::NSP), vec![2, c]));
        out.push((format!("{}.bias", names::NSP), vec![2]));
    }
    out
}

/// Shape-checked access to a name -> tensor map.
pub struct Source<'a> {
    pub map: &'a HashMap<String, Tensor>,
    /// Where the tensors came from (a file path), for error messages.
    pub origin: &'a str,
}

impl Source<'_> {
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.map.get(name).ok_or_else(|| Error::MissingTensor {
            origin: self.origin.to_string(),
            name: name.to_string(),
            expected: shape.to_vec(),
        })?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                origin: self.origin.to_string(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }
    fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            self.get(&format!("{prefix}.bias"), &[out_dim])?,
        ))
    }
    fn layer_norm(&self, prefix: &str, c: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{prefix}.weight"), &[c])?,
            self.get(&format!("{prefix}.bias"), &[c])?,
            eps,
        ))
    }
    /// True when any tensor under `prefix` is present.
    fn has_prefix(&self, prefix: &str) -> bool {
        self.map.keys().any(|k| k.starts_with(prefix))
    }
}

/// A batch of model input. All tensors are (B, T) U32 on the model's device.
#[derive(Clone, Debug)]
pub struct BertInput {
    /// (B, T)
    pub input_ids: Tensor,
    /// (B, T)
    pub token_type_ids: Tensor,
    /// (B, T), 1 = attend, 0 = padding
    pub attention_mask: Tensor,
}

impl BertInput {
    /// Builds and validates a batch from host data laid out row-major (B, T). `attention_mask`
    /// and `token_type_ids` default to all ones / all zeros, as in HF.
    pub fn from_host(
        cfg: &BertConfig,
        (b, t): (usize, usize),
        input_ids: &[i64],
        attention_mask: Option<&[i64]>,
        token_type_ids: Option<&[i64]>,
        device: &Device,
    ) -> Result<Self> {
        let n = b * t;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch: shape ({b}, {t})")));
        }
        if t > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence length {t} is beyond max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
        let check = |name: &str, v: &[i64], limit: usize, what: &str| -> Result<Vec<u32>> {
            if v.len() != n {
                return Err(Error::Input(format!(
                    "{name} has {} elements, expected {n} for shape ({b}, {t})",
                    v.len()
                )));
            }
            v.iter()
                .enumerate()
                .map(|(k, &x)| {
                    if x < 0 || x as u64 >= limit as u64 {
                        Err(Error::Input(format!(
                            "{name}[{}][{}] = {x} is outside [0, {limit}) ({what})",
                            k / t,
                            k % t
                        )))
                    } else {
                        Ok(x as u32)
                    }
                })
                .collect()
        };
        let ids = check("input_ids", input_ids, cfg.vocab_size, "vocab_size")?;
        let mask = match attention_mask {
            Some(m) => check("attention_mask", m, 2, "a 0/1 mask")?,
            None => vec![1; n],
        };
        let tt = match token_type_ids {
            Some(m) => check("token_type_ids", m, cfg.type_vocab_size, "type_vocab_size")?,
            None => vec![0; n],
        };
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            token_type_ids: Tensor::from_vec(tt, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
        })
    }

    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.input_ids.dims2()?)
    }

    /// Additive attention mask (B, 1, 1, T) in f32: 0 where attended, -1e9 at padding. Finite
    /// on purpose: `(1 - m) * f32::MIN` becomes NaN in bf16/f16.
    pub fn additive_mask(&self) -> Result<Tensor> {
        let (b, t) = self.dims()?;
        let m = self.attention_mask.to_dtype(DType::F32)?;
        Ok(m.affine(1e9, -1e9)?.reshape((b, 1, 1, t))?)
    }
}

/// Word + position + token-type embeddings, LayerNorm, dropout: (B, T) -> (B, T, C).
#[derive(Clone, Debug)]
pub struct BertEmbeddings {
    /// (V, C); also the tied MLM decoder weight
    pub word_embeddings: Tensor,
    /// (P, C)
    pub position_embeddings: Tensor,
    /// (TT, C)
    pub token_type_embeddings: Tensor,
    pub layer_norm: LayerNorm,
    pub dropout: f64,
}

impl BertEmbeddings {
    pub fn forward(&self, input: &BertInput, mode: &mut Mode) -> Result<Tensor> {
        let (b, t) = input.dims()?;
        let c = self.word_embeddings.dim(1)?;
        let dev = self.word_embeddings.device();
        let word = self
            .word_embeddings
            .index_select(&input.input_ids.flatten_all()?, 0)?; // (B*T, C)
        let tt = self
            .token_type_embeddings
            .index_select(&input.token_type_ids.flatten_all()?, 0)?; // (B*T, C)
        let pos_ids = Tensor::arange(0u32, t as u32, dev)?;
        let pos = self.position_embeddings.index_select(&pos_ids, 0)?; // (T, C)
        let x = (word + tt)?.reshape((b, t, c))?.broadcast_add(&pos)?; // (B, T, C)
        let x = self.layer_norm.forward(&x)?;
        Ok(dropout(&x, self.dropout, mode)?)
    }
}

/// Multi-head self-attention (BertSelfAttention): (B, T, C) -> context (B, T, C).
#[derive(Clone, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub num_heads: usize,
    pub dropout: f64,
}

impl BertSelfAttention {
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let (q, k, v) = (
            self.query.forward(x)?,
            self.key.forward(x)?,
            self.value.forward(x)?,
        );
        self_attention(&q, &k, &v, mask, self.num_heads, self.dropout, mode)
    }
}

/// Multi-head attention from the projections q, k, v (B, T, C) with the additive mask
/// (B, 1, 1, T) and dropout `p` on the probabilities (train mode): (B, T, C), heads merged.
/// One RNG draw (CPU f32) or one device mask per call, so the trainable layers and the fused
/// frozen ones (which project Q|K|V at once) consume the mode's randomness alike.
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    nh: usize,
    p: f64,
    mode: &mut Mode,
) -> Result<Tensor> {
    let (b, t, c) = q.dims3()?;
    let hs = c / nh;
    if crate::attention::applies(q) {
        // CPU f32: one fused op from the (B, T, C) projections to the merged (B, T, C)
        // output, analytic backward (see `attention`).
        let (p, seed) = match mode {
            Mode::Train(rng) if p > 0.0 => (p, rng.next_u64()),
            _ => (0.0, 0),
        };
        return Ok(crate::attention::attention(q, k, v, mask, nh, p, seed)?);
    }
    let heads = |x: &Tensor| -> Result<Tensor> {
        // (B, T, C) -> (B, T, NH, HS) -> (B, NH, T, HS)
        Ok(x.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous()?)
    };
    let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
    let scale = 1.0 / (hs as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?; // (B, NH, T, T)
    let scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?; // + (B, 1, 1, T)
    let probs = nn::softmax_last_dim(&scores)?;
    let probs = dropout(&probs, p, mode)?;
    let ctx = probs.matmul(&v)?; // (B, NH, T, HS)
    Ok(ctx.transpose(1, 2)?.reshape((b, t, c))?) // (B, T, C)
}

/// One encoder layer (BertLayer): attention + add & LN, FFN + add & LN (post-LN).
#[derive(Clone, Debug)]
pub struct BertLayer {
    pub attention: BertSelfAttention,
    /// attention.output.dense (C, C)
    pub attention_output: Linear,
    pub attention_layer_norm: LayerNorm,
    /// intermediate.dense (I, C)
    pub intermediate: Linear,
    /// output.dense (C, I)
    pub output: Linear,
    pub output_layer_norm: LayerNorm,
    pub activation: Activation,
    pub dropout: f64,
    /// Weights prepared for the fused kernels (frozen layers, see
    /// [`BertForPreTraining::use_fused_kernels`]).
    pub fused: Option<FusedLayer>,
}

impl BertLayer {
    fn load(src: &Source, cfg: &BertConfig, i: usize) -> Result<Self> {
        let p = names::layer(i);
        let (c, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            attention: BertSelfAttention {
                query: src.linear(&format!("{p}.attention.self.query"), c, c)?,
                key: src.linear(&format!("{p}.attention.self.key"), c, c)?,
                value: src.linear(&format!("{p}.attention.self.value"), c, c)?,
                num_heads: cfg.num_attention_heads,
                dropout: cfg.attention_probs_dropout_prob,
            },
            attention_output: src.linear(&format!("{p}.attention.output.dense"), c, c)?,
            attention_layer_norm: src.layer_norm(
                &format!("{p}.attention.output.LayerNorm"),
                c,
                eps,
            )?,
            intermediate: src.linear(&format!("{p}.intermediate.dense"), inter, c)?,
            output: src.linear(&format!("{p}.output.dense"), c, inter)?,
            output_layer_norm: src.layer_norm(&format!("{p}.output.LayerNorm"), c, eps)?,
            activation: cfg.hidden_act,
            dropout: cfg.hidden_dropout_prob,
            fused: None,
        })
    }

    /// True when the layer's parameters are tracked by autograd (it trains in this stage).
    pub fn trains(&self) -> bool {
        nn::tracked(&self.attention.query.weight)
    }

    /// (B, T, C) -> (B, T, C); `mask` is the additive mask (B, 1, 1, T).
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.forward_probed(x, mask, mode, &mut NoProbe)
    }

    /// [`BertLayer::forward`], telling `probe` as each op is issued (`bench --layer-ops`).
    pub fn forward_probed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: &mut Mode,
        probe: &mut dyn OpProbe,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (n, i) = (b * t, self.intermediate.weight.dims()[0]);
        let mm = |k: usize, m: usize| OpCost::Flops(2.0 * (n * k * m) as f64);
        let bytes = |e: usize| OpCost::Bytes((e * x.dtype().size_in_bytes()) as f64);
        let dropped = mode.is_train() && self.dropout > 0.0;
        let sa = &self.attention;
        let (q, k, v) = (
            sa.query.forward(x)?,
            sa.key.forward(x)?,
            sa.value.forward(x)?,
        ); // (B, T, C) each
        probe.done("Q, K, V projections (matmul + bias)", mm(c, 3 * c))?;
        let a = self_attention(&q, &k, &v, mask, sa.num_heads, sa.dropout, mode)?; // (B, T, C)
        probe.done("attention", OpCost::Flops(4.0 * (b * t * t * c) as f64))?;
        let a = self.attention_output.forward(&a)?;
        probe.done("attention output (matmul + bias)", mm(c, c))?;
        let a = dropout(&a, self.dropout, mode)?;
        if dropped {
            probe.done("attention output dropout", bytes(2 * n * c))?;
        }
        let h = self.attention_layer_norm.forward(&(a + x)?)?; // (B, T, C)
        probe.done("attention add + LayerNorm", bytes(3 * n * c))?;
        let f = self.intermediate.forward(&h)?; // (B, T, I)
        probe.done("FFN up (matmul + bias)", mm(c, i))?;
        let f = nn::activation(&f, self.activation)?;
        probe.done("FFN activation", bytes(2 * n * i))?;
        let f = self.output.forward(&f)?; // (B, T, C)
        probe.done("FFN down (matmul + bias)", mm(i, c))?;
        let f = dropout(&f, self.dropout, mode)?;
        if dropped {
            probe.done("FFN output dropout", bytes(2 * n * c))?;
        }
        let y = self.output_layer_norm.forward(&(f + h)?)?;
        probe.done("output add + LayerNorm", bytes(3 * n * c))?;
        Ok(y)
    }
}

/// Where a fused frozen layer applies dropout to the attention probabilities (train mode with
/// frozen dropout on). `MSLT_ATTENTION_DROPOUT=candle|kernel` picks it when the layers are
/// prepared (unset: `Kernel` on a CUDA device, `Candle` elsewhere);
/// [`BertForPreTraining::set_attention_dropout`] sets it explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionDropout {
    /// Attention on Candle ops with [`nn::dropout`] ([`self_attention`]), the rest fused (the
    /// default on the CPU: checked on an H100, `kernels check` row `layers + dropout`).
    #[default]
    Candle,
    /// Inside the fused attention kernel, drawn by Philox (`mslt_kernels::attention_dropout`),
    /// where the kernel has a dropout variant (fa2v2 / fa2w8 / fa2v3 / fa2w8v3 / fa2w8v4 /
    /// fa2w8v5 / fa2wg* in bf16, tf32x3 in f32, 64-wide heads; the CPU op on the CPU); Candle ops elsewhere. The
    /// default on a CUDA device: on the H100 (run 7) it passed its checks and took the frozen
    /// forward of `base` (B32, T128) from 24.0 to 17.7 ms (f32) and 13.2 to 6.7 ms (bf16) at 9
    /// frozen layers, against `Candle`.
    Kernel,
    /// The kernel's Philox draw applied through Candle ops
    /// (`mslt_kernels::reference::attention_dropout`): what `Kernel` is checked against.
    Reference,
}

impl AttentionDropout {
    /// From `MSLT_ATTENTION_DROPOUT`; unset: `Kernel` for layers on a CUDA device (`cuda`),
    /// `Candle` otherwise.
    pub fn from_env(cuda: bool) -> std::result::Result<Self, String> {
        match std::env::var("MSLT_ATTENTION_DROPOUT").ok().as_deref() {
            None if cuda => Ok(Self::Kernel),
            None | Some("candle") => Ok(Self::Candle),
            Some("kernel") => Ok(Self::Kernel),
            Some(o) => Err(format!(
                "MSLT_ATTENTION_DROPOUT=`{o}`: expected candle or kernel (unset: kernel on a CUDA device, candle elsewhere)"
            )),
        }
    }
}

/// What one op of a frozen layer costs, for a rate beside its time: the FLOPs of a matrix
/// product (or of attention's QK^T and PV), or the bytes a memory-bound op reads and writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpCost {
    Flops(f64),
    Bytes(f64),
}

/// Told as each op of a frozen layer's forward is issued ([`FusedLayer::forward_probed`],
/// [`FusedLayer::forward_dropout_probed`]): `bench --layer-ops` synchronises the device there
/// and times the op. The plain forwards pass [`NoProbe`].
pub trait OpProbe {
    fn done(&mut self, op: &'static str, cost: OpCost) -> Result<()>;
}

/// The probe of the untimed forwards: does nothing.
pub struct NoProbe;

impl OpProbe for NoProbe {
    fn done(&mut self, _op: &'static str, _cost: OpCost) -> Result<()> {
        Ok(())
    }
}

/// A frozen layer's weights laid out for the fused kernels of `mslt-kernels`: one Q|K|V
/// projection, LayerNorm weight and bias stacked, all in the kernels' dtype (f32 or bf16).
#[derive(Clone, Debug)]
pub struct FusedLayer {
    pub dtype: DType,
    /// (3C, C) and (3C,): query, key, value stacked
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    /// attention.output.dense (C, C), (C,)
    attn_out: (Tensor, Tensor),
    /// (2, C) = [gamma; beta]
    attn_ln: Tensor,
    /// intermediate.dense (I, C), (I,)
    intermediate: (Tensor, Tensor),
    /// output.dense (C, I), (C,)
    output: (Tensor, Tensor),
    out_ln: Tensor,
    heads: usize,
    eps: f64,
    activation: Activation,
    /// dropout on the attention probabilities and on the two sublayer outputs (train mode,
    /// frozen dropout on: see [`FusedLayer::forward_dropout`])
    attn_dropout: f64,
    hidden_dropout: f64,
    /// where the attention-probability dropout is applied (see [`AttentionDropout`])
    attention_dropout: AttentionDropout,
}

impl FusedLayer {
    fn new(l: &BertLayer, dtype: DType) -> Result<Self> {
        let d = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().to_dtype(dtype)?.contiguous()?) };
        let a = &l.attention;
        let cat = |ts: &[&Tensor]| -> Result<Tensor> { d(&Tensor::cat(ts, 0)?) };
        let ln = |n: &LayerNorm| -> Result<Tensor> { d(&Tensor::stack(&[&n.weight, &n.bias], 0)?) };
        Ok(Self {
            dtype,
            qkv_weight: cat(&[&a.query.weight, &a.key.weight, &a.value.weight])?,
            qkv_bias: cat(&[&a.query.bias, &a.key.bias, &a.value.bias])?,
            attn_out: (d(&l.attention_output.weight)?, d(&l.attention_output.bias)?),
            attn_ln: ln(&l.attention_layer_norm)?,
            intermediate: (d(&l.intermediate.weight)?, d(&l.intermediate.bias)?),
            output: (d(&l.output.weight)?, d(&l.output.bias)?),
            out_ln: ln(&l.output_layer_norm)?,
            heads: a.num_heads,
            eps: l.attention_layer_norm.eps,
            activation: l.activation,
            attn_dropout: a.dropout,
            hidden_dropout: l.dropout,
            attention_dropout: AttentionDropout::from_env(a.query.weight.device().is_cuda())
                .map_err(candle_core::Error::Msg)?,
        })
    }

    /// Forward only, with BERT's three dropouts (train mode): x (B, T, C) in `self.dtype`, mask
    /// (B, 1, 1, T) additive and the same as (B, T). Each sublayer output gets its dropout before
    /// the fused add + LayerNorm; bias + GELU and the Q|K|V projection stay fused. The attention
    /// probabilities get theirs as `self.attention_dropout` says: with `Candle`, attention runs
    /// through [`self_attention`] (Candle ops, or the CPU attention op) and the mode's randomness
    /// is drawn in the order of [`BertLayer::forward`], so in f32 the output equals the Candle
    /// layer's with the same RNG up to rounding (tested); with `Kernel` / `Reference` one seed is
    /// drawn from the mode's RNG for the Philox mask, in the same place.
    pub fn forward_dropout(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mask2d: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        self.forward_dropout_probed(x, mask, mask2d, mode, &mut NoProbe)
    }

    /// [`FusedLayer::forward_dropout`], telling `probe` as each op is issued.
    pub fn forward_dropout_probed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mask2d: &Tensor,
        mode: &mut Mode,
        probe: &mut dyn OpProbe,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (x2, qkv) = self.qkv(x, probe)?; // (BT, C), (BT, 3C)
        let qkv3 = qkv.reshape((b, t, 3 * c))?; // (B, T, 3C)
        let philox = match self.attention_dropout {
            AttentionDropout::Candle => false,
            AttentionDropout::Kernel => {
                mslt_kernels::ops::attention_dropout_fits(&qkv3, self.heads)
            }
            AttentionDropout::Reference => true,
        };
        if philox {
            let seed = match mode {
                Mode::Train(rng) if self.attn_dropout > 0.0 => Some(rng.next_u64()),
                _ => None,
            };
            let p = self.attn_dropout;
            let ctx = match (seed, self.attention_dropout) {
                (None, _) => mslt_kernels::attention(&qkv3, mask2d, self.heads)?,
                (Some(s), AttentionDropout::Kernel) => {
                    mslt_kernels::attention_dropout(&qkv3, mask2d, self.heads, p, s)?
                }
                (Some(s), _) => {
                    mslt_kernels::reference::attention_dropout(&qkv3, mask2d, self.heads, p, s)?
                        .to_dtype(self.dtype)?
                }
            }; // (B, T, C)
            probe.done("attention", self.attention_cost(b, t))?;
            return self.after_attention(&ctx, &x2, mode, probe);
        }
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, i * c, c)?.contiguous()?.reshape((b, t, c))?) // (B, T, C)
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        probe.done("Q, K, V split (copies)", self.bytes(2 * 3 * b * t * c))?;
        let ctx = self_attention(&q, &k, &v, mask, self.heads, self.attn_dropout, mode)?; // (B, T, C)
        probe.done("attention (Candle ops, dropout)", self.attention_cost(b, t))?;
        self.after_attention(&ctx, &x2, mode, probe)
    }

    /// Bytes of `n` elements of this layer's dtype.
    fn bytes(&self, n: usize) -> OpCost {
        OpCost::Bytes((n * self.dtype.size_in_bytes()) as f64)
    }

    /// Attention's QK^T and PV on (B, T) tokens: 4 B T^2 C FLOPs.
    fn attention_cost(&self, b: usize, t: usize) -> OpCost {
        let c = self.qkv_weight.dims()[1];
        OpCost::Flops(4.0 * (b * t * t * c) as f64)
    }

    /// Forward only, no dropout: x (B, T, C) in `self.dtype`, mask (B, T) additive f32.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.forward_probed(x, mask, &mut NoProbe)
    }

    /// [`FusedLayer::forward`], telling `probe` as each op is issued.
    pub fn forward_probed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        probe: &mut dyn OpProbe,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (x2, qkv) = self.qkv(x, probe)?; // (BT, C), (BT, 3C)
        let ctx = mslt_kernels::attention(&qkv.reshape((b, t, 3 * c))?, mask, self.heads)?; // (B, T, C)
        probe.done("attention", self.attention_cost(b, t))?;
        self.after_attention(&ctx, &x2, &mut Mode::Eval, probe)
    }

    /// x (B, T, C) -> (x as (BT, C), the Q|K|V projection (BT, 3C)).
    fn qkv(&self, x: &Tensor, probe: &mut dyn OpProbe) -> Result<(Tensor, Tensor)> {
        let (b, t, c) = x.dims3()?;
        let n = b * t;
        let x2 = x.reshape((n, c))?; // (BT, C)
        let qkv = x2.matmul(&self.qkv_weight.t()?)?; // (BT, 3C)
        probe.done("Q|K|V matmul", OpCost::Flops(2.0 * (n * c * 3 * c) as f64))?;
        let qkv = qkv.broadcast_add(&self.qkv_bias)?;
        probe.done("Q|K|V bias add", self.bytes(2 * n * 3 * c))?;
        Ok((x2, qkv))
    }

    /// Attention output projection, dropout, add + LN, FFN (fused bias + GELU), dropout, add +
    /// LN: ctx (B, T, C) and the layer input x2 (BT, C) -> (B, T, C). Dropout applies in train
    /// mode only (none with `Mode::Eval`).
    fn after_attention(
        &self,
        ctx: &Tensor,
        x2: &Tensor,
        mode: &mut Mode,
        probe: &mut dyn OpProbe,
    ) -> Result<Tensor> {
        let (b, t, c) = ctx.dims3()?;
        let (n, i) = (b * t, self.intermediate.0.dims()[0]);
        let mm = |k: usize, m: usize| OpCost::Flops(2.0 * (n * k * m) as f64);
        let dropped = mode.is_train() && self.hidden_dropout > 0.0;
        let a = ctx.reshape((n, c))?.matmul(&self.attn_out.0.t()?)?; // (BT, C)
        probe.done("attention output matmul", mm(c, c))?;
        let a = a.broadcast_add(&self.attn_out.1)?;
        probe.done("attention output bias add", self.bytes(2 * n * c))?;
        let a = dropout(&a, self.hidden_dropout, mode)?;
        if dropped {
            probe.done("attention output dropout", self.bytes(2 * n * c))?;
        }
        let h = mslt_kernels::add_layer_norm(&a, Some(x2), &self.attn_ln, self.eps)?; // (BT, C)
        probe.done("attention add + LayerNorm", self.bytes(3 * n * c))?;
        let f = h.matmul(&self.intermediate.0.t()?)?; // (BT, I)
        probe.done("FFN up matmul", mm(c, i))?;
        let f = match self.activation {
            Activation::GeluErf => mslt_kernels::bias_gelu(&f, &self.intermediate.1)?,
            act => nn::activation(&f.broadcast_add(&self.intermediate.1)?, act)?,
        };
        let act = match self.activation {
            Activation::GeluErf => "FFN bias + GELU",
            _ => "FFN bias + activation",
        };
        probe.done(act, self.bytes(2 * n * i))?;
        let o = f.matmul(&self.output.0.t()?)?; // (BT, C)
        probe.done("FFN down matmul", mm(i, c))?;
        let o = o.broadcast_add(&self.output.1)?;
        probe.done("FFN down bias add", self.bytes(2 * n * c))?;
        let o = dropout(&o, self.hidden_dropout, mode)?;
        if dropped {
            probe.done("FFN output dropout", self.bytes(2 * n * c))?;
        }
        let y = mslt_kernels::add_layer_norm(&o, Some(&h), &self.out_ln, self.eps)?;
        probe.done("output add + LayerNorm", self.bytes(3 * n * c))?;
        Ok(y.reshape((b, t, c))?)
    }
}

/// How the frozen layers run: see [`BertForPreTraining::use_fused_kernels`].
#[derive(Clone, Copy, Debug)]
pub struct FusedOptions {
    /// f32, or bf16 for the frozen layers while the trainable ones stay f32.
    pub dtype: DType,
    /// Also on CPU (through the ops' plain CPU references: slow, for tests of the wiring).
    pub allow_cpu: bool,
}

/// MLM head (BertLMPredictionHead): transform (dense, act, LN), decoder (tied to the word
/// embeddings unless the config unties it), output bias. (N, C) -> (N, V).
#[derive(Clone, Debug)]
pub struct MlmHead {
    pub transform: Linear,
    pub layer_norm: LayerNorm,
    pub activation: Activation,
    /// (V,)
    pub bias: Tensor,
    /// (V, C): the untied decoder's own weight; None when tied to the word embeddings.
    pub decoder: Option<Tensor>,
}

/// Outputs of the encoder.
pub struct EncoderOutput {
    /// (B, T, C) after the last layer.
    pub last_hidden_state: Tensor,
    /// The embeddings output and every layer's output (L + 1 entries), when asked for.
    pub hidden_states: Vec<Tensor>,
}

/// BERT with its pre-training heads (HF `BertForPreTraining`).
#[derive(Clone, Debug)]
pub struct BertForPreTraining {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    /// bert.pooler.dense (C, C)
    pub pooler: Option<Linear>,
    pub mlm: Option<MlmHead>,
    /// cls.seq_relationship (2, C)
    pub nsp: Option<Linear>,
    /// Dropout in the frozen layers during training (default on, as the reference). Off makes
    /// the frozen forward deterministic and lets it use the fused (dropout-free) kernels.
    pub frozen_dropout: bool,
}

impl BertForPreTraining {
    /// Builds the model from tensors under HF names (`bert.` prefix). Embeddings and layers are
    /// required; each head is built when any of its tensors is present (and then must be
    /// complete). Tensors that are `Var`s train; plain tensors are frozen.
    pub fn from_tensors(
        cfg: &BertConfig,
        map: &HashMap<String, Tensor>,
        origin: &str,
    ) -> Result<Self> {
        let src = Source { map, origin };
        let (c, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let embeddings = BertEmbeddings {
            word_embeddings: src.get(names::WORD, &[cfg.vocab_size, c])?,
            position_embeddings: src.get(names::POSITION, &[cfg.max_position_embeddings, c])?,
            token_type_embeddings: src.get(names::TOKEN_TYPE, &[cfg.type_vocab_size, c])?,
            layer_norm: src.layer_norm(names::EMB_LN, c, eps)?,
            dropout: cfg.hidden_dropout_prob,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(&src, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if src.has_prefix(names::POOLER) {
            Some(src.linear(names::POOLER, c, c)?)
        } else {
            None
        };
        let mlm = if src.has_prefix("cls.predictions.") {
            Some(MlmHead {
                transform: src.linear(names::MLM_DENSE, c, c)?,
                layer_norm: src.layer_norm(names::MLM_LN, c, eps)?,
                activation: cfg.hidden_act,
                bias: src.get(names::MLM_BIAS, &[cfg.vocab_size])?,
                decoder: if cfg.tie_word_embeddings {
                    None
                } else {
                    Some(src.get(names::MLM_DECODER, &[cfg.vocab_size, c])?)
                },
            })
        } else {
            None
        };
        let nsp = if src.has_prefix(names::NSP) {
            Some(src.linear(names::NSP, 2, c)?)
        } else {
            None
        };
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            layers,
            pooler,
            mlm,
            nsp,
            frozen_dropout: true,
        })
    }

    /// Prepares every frozen layer (parameters not tracked) for the fused kernels of
    /// `mslt-kernels`, on CUDA (or anywhere with `allow_cpu`). A prepared layer runs fused when
    /// its input is not tracked: every kernel when it applies no dropout (eval mode, or
    /// `frozen_dropout` off), else [`FusedLayer::forward_dropout`] (attention on Candle ops with
    /// its dropout, the rest fused). Layers whose head dim the attention kernel lacks stay on
    /// Candle. Returns how many layers were prepared.
    pub fn use_fused_kernels(&mut self, opts: FusedOptions) -> Result<usize> {
        if !(mslt_kernels::CUDA_ENABLED && self.device().is_cuda() || opts.allow_cpu) {
            return Ok(0);
        }
        if nn::tracked(&self.embeddings.word_embeddings) {
            // trainable embeddings put every layer on the backward path: none would run fused
            return Ok(0);
        }
        let heads = self.config.num_attention_heads;
        if !mslt_kernels::supported_head_dim(self.config.hidden_size / heads) {
            return Ok(0);
        }
        let mut n = 0;
        for l in self.layers.iter_mut() {
            l.fused = if l.trains() {
                None
            } else {
                n += 1;
                Some(FusedLayer::new(l, opts.dtype)?)
            };
        }
        Ok(n)
    }

    /// Sets where every prepared layer applies its attention-probability dropout (see
    /// [`AttentionDropout`]; the default comes from `MSLT_ATTENTION_DROPOUT`).
    pub fn set_attention_dropout(&mut self, a: AttentionDropout) {
        for f in self.layers.iter_mut().filter_map(|l| l.fused.as_mut()) {
            f.attention_dropout = a;
        }
    }

    /// Number of layers prepared for the fused kernels.
    pub fn fused_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.fused.is_some()).count()
    }

    pub fn heads(&self) -> Heads {
        Heads {
            pooler: self.pooler.is_some(),
            mlm: self.mlm.is_some(),
            nsp: self.nsp.is_some(),
        }
    }

    pub fn device(&self) -> &Device {
        self.embeddings.word_embeddings.device()
    }

    /// Embeddings and every layer. `keep_all` keeps every hidden state (HF `output_hidden_states`).
    pub fn encode(
        &self,
        input: &BertInput,
        mode: &mut Mode,
        keep_all: bool,
    ) -> Result<EncoderOutput> {
        self.encode_layers(input, mode, keep_all, self.layers.len())
    }

    /// The forward-only part of a stage: the embeddings and the frozen layers below the first
    /// trainable one, as [`Self::encode`] runs them (same kernels, same dropout), the rest left
    /// out. None when nothing is forward-only (trainable embeddings put every layer on the
    /// backward path). For `bench`'s frozen-forward timing.
    pub fn encode_frozen(&self, input: &BertInput, mode: &mut Mode) -> Result<Option<Tensor>> {
        let n = self.layers.iter().take_while(|l| !l.trains()).count();
        if n == 0 || nn::tracked(&self.embeddings.word_embeddings) {
            return Ok(None);
        }
        Ok(Some(
            self.encode_layers(input, mode, false, n)?.last_hidden_state,
        ))
    }

    /// Embeddings and the first `n` layers.
    fn encode_layers(
        &self,
        input: &BertInput,
        mode: &mut Mode,
        keep_all: bool,
        n: usize,
    ) -> Result<EncoderOutput> {
        let mask = input.additive_mask()?; // (B, 1, 1, T)
        let mut x = if !self.frozen_dropout && !nn::tracked(&self.embeddings.word_embeddings) {
            self.embeddings.forward(input, &mut Mode::Eval)? // frozen embeddings, no dropout
        } else {
            self.embeddings.forward(input, mode)?
        }; // (B, T, C)
        let mut hidden_states = Vec::new();
        if keep_all {
            hidden_states.push(x.clone());
        }
        let dtype = x.dtype();
        let mask2d = if self.fused_layers() > 0 {
            Some(input.additive_mask()?.flatten_from(1)?) // (B, T)
        } else {
            None
        };
        for layer in &self.layers[..n] {
            let frozen = !layer.trains() && !nn::tracked(&x);
            let no_dropout = !mode.is_train() || (frozen && !self.frozen_dropout);
            match (&layer.fused, &mask2d) {
                (Some(f), Some(m)) if frozen && no_dropout => {
                    x = f.forward(&x.to_dtype(f.dtype)?, m)?;
                }
                (Some(f), Some(m)) if frozen => {
                    x = f.forward_dropout(&x.to_dtype(f.dtype)?, &mask, m, mode)?;
                }
                _ => {
                    let x_in = x.to_dtype(dtype)?;
                    x = if frozen && !self.frozen_dropout {
                        layer.forward(&x_in, &mask, &mut Mode::Eval)?
                    } else {
                        layer.forward(&x_in, &mask, mode)?
                    };
                }
            }
            if keep_all {
                hidden_states.push(x.to_dtype(dtype)?);
            }
        }
        Ok(EncoderOutput {
            last_hidden_state: x.to_dtype(dtype)?,
            hidden_states,
        })
    }

    /// Pooler output tanh(dense(h[:, 0])): (B, T, C) -> (B, C). None when the model has no pooler.
    pub fn pool(&self, last_hidden_state: &Tensor) -> Result<Option<Tensor>> {
        match &self.pooler {
            None => Ok(None),
            Some(p) => {
                let cls = last_hidden_state.i((.., 0, ..))?.contiguous()?; // (B, C)
                Ok(Some(p.forward(&cls)?.tanh()?))
            }
        }
    }

    /// MLM logits for any rows of hidden states: (N, C) or (B, T, C) -> (N, V) / (B, T, V).
    pub fn mlm_logits(&self, h: &Tensor) -> Result<Tensor> {
        let head = self
            .mlm
            .as_ref()
            .ok_or_else(|| Error::Input("this model has no MLM head (cls.predictions.*)".into()))?;
        let t = nn::activation(&head.transform.forward(h)?, head.activation)?;
        let t = head.layer_norm.forward(&t)?;
        let dims = t.dims().to_vec();
        let c = *dims.last().expect("rank >= 1");
        let t2 = t.reshape(((), c))?; // (N, C)
                                      // Decoder: (N, C) x (C, V) + bias, its weight tied to the word embeddings or its own.
                                      // A frozen weight (tied, in an MSLT stage): no weight gradient is computed; the bias
                                      // gradient is a parallel column sum (see `ops::linear`).
        let w = head
            .decoder
            .as_ref()
            .unwrap_or(&self.embeddings.word_embeddings); // (V, C)
        let logits = crate::ops::linear(&t2, w, &head.bias)?;
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = self.config.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// NSP logits from the pooler output: (B, C) -> (B, 2).
    pub fn nsp_logits(&self, pooled: &Tensor) -> Result<Tensor> {
        let nsp = self.nsp.as_ref().ok_or_else(|| {
            Error::Input("this model has no NSP head (cls.seq_relationship.*)".into())
        })?;
        Ok(nsp.forward(pooled)?)
    }

    /// Pre-training loss: MLM cross-entropy over the masked positions only (the head runs on
    /// those rows alone, not on every token) plus, when `nsp_labels` is given, NSP cross-entropy.
    pub fn pretraining_loss(
        &self,
        input: &BertInput,
        mlm: &crate::loss::MlmTargets,
        nsp_labels: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<PretrainingLoss> {
        let nsp_rows = match nsp_labels {
            Some(l) => l.dim(0)?,
            None => 0,
        };
        let l = self.pretraining_loss_over(
            input,
            Some(mlm),
            nsp_labels,
            mode,
            LossDenominators {
                mlm: mlm.len(),
                nsp: nsp_rows,
            },
        )?;
        l.ok_or_else(|| Error::Input("pre-training loss over an empty batch".into()))
    }

    /// The pre-training loss of one data-parallel shard: cross-entropy sums divided by the
    /// *global* counts in `denom`, so that summing over the ranks gives the global batch's
    /// means. `mlm` may be `None` (no predicted token in this shard). `None` when the shard
    /// contributes no term at all.
    pub fn pretraining_loss_over(
        &self,
        input: &BertInput,
        mlm: Option<&crate::loss::MlmTargets>,
        nsp_labels: Option<&Tensor>,
        mode: &mut Mode,
        denom: LossDenominators,
    ) -> Result<Option<PretrainingLoss>> {
        let out = self.encode(input, mode, false)?;
        let h = &out.last_hidden_state;
        let c = h.dim(D::Minus1)?;
        let mlm_loss = match mlm {
            Some(mlm) if !mlm.is_empty() => {
                let rows = h.reshape(((), c))?.index_select(&mlm.positions, 0)?; // (M, C)
                let logits = self.mlm_logits(&rows)?; // (M, V)
                Some(crate::loss::cross_entropy_over(
                    &logits,
                    &mlm.labels,
                    denom.mlm,
                )?)
            }
            _ => None,
        };
        let nsp_loss = match nsp_labels {
            None => None,
            Some(labels) => {
                let pooled = self.pool(h)?.ok_or_else(|| {
                    Error::Input(
                        "NSP needs the pooler (bert.pooler.*), which this model lacks".into(),
                    )
                })?;
                Some(crate::loss::cross_entropy_over(
                    &self.nsp_logits(&pooled)?,
                    labels,
                    denom.nsp,
                )?)
            }
        };
        let loss = match (&mlm_loss, &nsp_loss) {
            (Some(m), Some(n)) => (m + n)?,
            (Some(m), None) => m.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => return Ok(None),
        };
        let zero = || Tensor::zeros((), candle_core::DType::F32, h.device());
        Ok(Some(PretrainingLoss {
            loss,
            mlm_loss: match mlm_loss {
                Some(m) => m,
                None => zero()?,
            },
            nsp_loss,
        }))
    }
}

/// What the pre-training cross-entropies are divided by: predicted tokens and NSP sequences of
/// the (global) batch.
#[derive(Clone, Copy, Debug)]
pub struct LossDenominators {
    pub mlm: usize,
    pub nsp: usize,
}

/// Scalar losses of a pre-training step.
pub struct PretrainingLoss {
    pub loss: Tensor,
    pub mlm_loss: Tensor,
    pub nsp_loss: Option<Tensor>,
}
