//! BERT configuration: Hugging Face `config.json` reading (strict on what we cannot run, lenient
//! on fields we do not use) and the named presets.

use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The FFN / MLM-transform activation. HF `"gelu"` is the exact erf GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activation {
    /// HF `"gelu"`: `x * Φ(x)` with the exact erf.
    #[serde(rename = "gelu")]
    GeluErf,
    /// HF `"gelu_new"` / `"gelu_pytorch_tanh"`: the tanh approximation.
    #[serde(rename = "gelu_new")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

/// What mslt runs of HF's `BertConfig`. Serialises to a `config.json` that HF transformers reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    /// The MLM decoder weight is the word-embedding matrix (HF's default). `false`: the
    /// decoder has its own (V, C) weight, `cls.predictions.decoder.weight`.
    pub tie_word_embeddings: bool,
}

/// The named presets: Google's BERT miniatures (Turc et al. 2019) plus base/large.
pub const PRESETS: &[(&str, usize, usize)] = &[
    // (name, layers, hidden)
    ("tiny", 2, 128),
    ("mini", 4, 256),
    ("small", 4, 512),
    ("medium", 8, 512),
    ("base", 12, 768),
    ("large", 24, 1024),
];

impl BertConfig {
    /// A BERT of `layers` x `hidden` with 64-wide heads and a 4x FFN, the bert-base-uncased
    /// vocabulary (30522) and 512 positions.
    pub fn with_size(layers: usize, hidden: usize) -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: (hidden / 64).max(1),
            intermediate_size: 4 * hidden,
            hidden_act: Activation::GeluErf,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            tie_word_embeddings: true,
        }
    }

    /// A named preset (`tiny`, `mini`, `small`, `medium`, `base`, `large`).
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, l, h)| Self::with_size(l, h))
    }

    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads a HF `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses HF `config.json` text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            field: "<document>".into(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let obj = value.as_object().ok_or_else(|| Error::Config {
            origin: origin.to_string(),
            field: "<document>".into(),
            msg: "expected a JSON object".into(),
        })?;
        let f = Fields { obj, origin };
        let d = Self::with_size(12, 768);
        // Unsupported variants of BERT are rejected rather than silently run wrong.
        if let Some(t) = f.opt_str("position_embedding_type")? {
            if t != "absolute" {
                return Err(f.err(
                    "position_embedding_type",
                    format!("`{t}` is not supported (only \"absolute\")"),
                ));
            }
        }
        if f.opt_bool("is_decoder")? == Some(true) {
            return Err(f.err("is_decoder", "decoder BERTs are not supported".into()));
        }
        if f.opt_bool("add_cross_attention")? == Some(true) {
            return Err(f.err(
                "add_cross_attention",
                "cross-attention is not supported".into(),
            ));
        }
        if let Some(mt) = f.opt_str("model_type")? {
            if mt != "bert" {
                return Err(f.err(
                    "model_type",
                    format!("`{mt}` is not supported (only \"bert\")"),
                ));
            }
        }
        let hidden_act = match f.opt_str("hidden_act")? {
            None => d.hidden_act,
            Some(s) => Activation::from_hf(&s).ok_or_else(|| {
                f.err(
                    "hidden_act",
                    format!("`{s}` is not supported (expected \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\" or \"relu\")"),
                )
            })?,
        };
        let cfg = Self {
            vocab_size: f.req_usize("vocab_size")?,
            hidden_size: f.req_usize("hidden_size")?,
            num_hidden_layers: f.req_usize("num_hidden_layers")?,
            num_attention_heads: f.req_usize("num_attention_heads")?,
            intermediate_size: f.req_usize("intermediate_size")?,
            hidden_act,
            hidden_dropout_prob: f
                .opt_f64("hidden_dropout_prob")?
                .unwrap_or(d.hidden_dropout_prob),
            attention_probs_dropout_prob: f
                .opt_f64("attention_probs_dropout_prob")?
                .unwrap_or(d.attention_probs_dropout_prob),
            max_position_embeddings: f
                .opt_usize("max_position_embeddings")?
                .unwrap_or(d.max_position_embeddings),
            type_vocab_size: f.opt_usize("type_vocab_size")?.unwrap_or(d.type_vocab_size),
            initializer_range: f
                .opt_f64("initializer_range")?
                .unwrap_or(d.initializer_range),
            layer_norm_eps: f.opt_f64("layer_norm_eps")?.unwrap_or(d.layer_norm_eps),
            pad_token_id: f.opt_usize("pad_token_id")?.unwrap_or(0) as u32,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks the values are consistent; `origin` names the source in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |field: &str, msg: String| Error::Config {
            origin: origin.to_string(),
            field: field.to_string(),
            msg,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(err(name, "must be > 0".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(err(name, format!("{p} is not in [0, 1)")));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(err("layer_norm_eps", "must be > 0".into()));
        }
        if self.initializer_range.is_nan() || self.initializer_range < 0.0 {
            return Err(err("initializer_range", "must be >= 0".into()));
        }
        if self.pad_token_id as usize >= self.vocab_size {
            return Err(err(
                "pad_token_id",
                format!(
                    "{} is not below vocab_size {}",
                    self.pad_token_id, self.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// A HF `config.json` for `BertForPreTraining` (what `transformers` loads).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        o.insert("model_type".into(), "bert".into());
        o.insert(
            "architectures".into(),
            serde_json::json!(["BertForPreTraining"]),
        );
        o.insert("position_embedding_type".into(), "absolute".into());
        v
    }

    /// Number of parameters (a tied decoder counted once; pooler, MLM and NSP heads included).
    pub fn num_parameters(&self) -> usize {
        let (c, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let emb = (v + self.max_position_embeddings + self.type_vocab_size) * c + 2 * c;
        let layer = 4 * (c * c + c) + (c * i + i) + (i * c + c) + 4 * c;
        let pooler = c * c + c;
        let decoder = if self.tie_word_embeddings { 0 } else { v * c };
        let mlm = c * c + c + 2 * c + v + decoder;
        let nsp = 2 * c + 2;
        emb + self.num_hidden_layers * layer + pooler + mlm + nsp
    }
}

/// Typed access to the fields of a config object, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a str,
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string \"{s}\""),
        other => other.to_string(),
    }
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: String) -> Error {
        Error::Config {
            origin: self.origin.to_string(),
            field: field.to_string(),
            msg,
        }
    }
    fn get(&self, k: &str) -> Option<&Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(
                    k,
                    format!("expected a non-negative integer, found {}", describe(v)),
                )
            }),
        }
    }
    fn req_usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| self.err(k, "is required but missing".into()))
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(k, format!("expected a number, found {}", describe(v)))),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(k, format!("expected a string, found {}", describe(v)))),
        }
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(k, format!("expected true or false, found {}", describe(v)))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"{"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64"#;

    #[test]
    fn presets_have_the_documented_sizes() {
        for (name, l, h) in [
            ("tiny", 2, 128),
            ("mini", 4, 256),
            ("small", 4, 512),
            ("medium", 8, 512),
            ("base", 12, 768),
            ("large", 24, 1024),
        ] {
            let c = BertConfig::preset(name).unwrap();
            assert_eq!((c.num_hidden_layers, c.hidden_size), (l, h), "{name}");
            c.validate(name).unwrap();
        }
        // bert-base-uncased has 110M parameters (HF counts 109,514,298 without the heads'
        // extra transform; with BertForPreTraining's heads it is 110,106,428).
        assert_eq!(
            BertConfig::preset("base").unwrap().num_parameters(),
            110_106_428
        );
        assert!(BertConfig::preset("huge").is_none());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = BertConfig::from_json_str(
            &format!("{MIN}, \"gradient_checkpointing\": false, \"foo\": [1,2]}}"),
            "t",
        )
        .unwrap();
        assert_eq!(c.hidden_size, 32);
        assert_eq!(c.hidden_act, Activation::GeluErf);
    }

    #[test]
    fn unsupported_values_are_rejected_by_field() {
        for (extra, field) in [
            (
                "\"position_embedding_type\": \"relative_key\"",
                "position_embedding_type",
            ),
            ("\"hidden_act\": \"swish\"", "hidden_act"),
            ("\"is_decoder\": true", "is_decoder"),
            ("\"hidden_size\": \"big\"", "hidden_size"),
            ("\"layer_norm_eps\": \"1e-12\"", "layer_norm_eps"),
            ("\"num_attention_heads\": 5", "num_attention_heads"),
        ] {
            let text = format!("{MIN}, {extra}}}");
            // Later duplicate keys win in serde_json, so the override takes effect.
            let e = BertConfig::from_json_str(&text, "cfg.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("field `{field}`")), "{extra}: {e}");
            assert!(e.starts_with("cfg.json"), "{e}");
        }
        let e = BertConfig::from_json_str("{\"vocab_size\": 3}", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`hidden_size`") && e.contains("missing"), "{e}");
    }

    #[test]
    fn hf_json_round_trips() {
        let c = BertConfig::preset("mini").unwrap();
        let text = serde_json::to_string(&c.to_hf_json()).unwrap();
        assert_eq!(BertConfig::from_json_str(&text, "rt").unwrap(), c);
    }
}
