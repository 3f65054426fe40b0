//! BERT tokenisation: a HF `tokenizer.json` through the `tokenizers` crate, or a bare `vocab.txt`
//! built into the same BERT WordPiece pipeline HF's `BertTokenizerFast` uses (lowercasing and
//! accent stripping per `tokenizer_config.json`'s `do_lower_case`, default true).

use crate::error::{Error, Result};
use crate::weights::ModelFiles;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    origin: String,
    pub pad_id: u32,
    pub cls_id: u32,
    pub sep_id: u32,
    pub mask_id: u32,
    pub unk_id: u32,
}

/// One tokenised text: ids and segment ids, with [CLS] ... [SEP].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl BertTokenizer {
    /// `tokenizer.json`, or `vocab.txt` (BERT WordPiece), by file name; or a model directory.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            let vocab = path.join("vocab.txt");
            let cfg = path.join("tokenizer_config.json");
            let cfg = cfg.is_file().then_some(cfg);
            return if json.is_file() {
                Self::from_tokenizer_json(&json)
            } else if vocab.is_file() {
                Self::from_vocab_txt(&vocab, lowercase_from_config(cfg.as_deref())?)
            } else {
                Err(Error::Tokenizer {
                    origin: path.display().to_string(),
                    msg: "the directory has no tokenizer.json or vocab.txt".into(),
                })
            };
        }
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_tokenizer_json(path)
        } else {
            Self::from_vocab_txt(path, true)
        }
    }

    /// The tokenizer of a resolved model: `tokenizer.json` first, then `vocab.txt`.
    pub fn from_model(files: &ModelFiles) -> Result<Self> {
        if let Some(j) = &files.tokenizer_json {
            Self::from_tokenizer_json(j)
        } else if let Some(v) = &files.vocab_txt {
            Self::from_vocab_txt(v, lowercase_from_config(files.tokenizer_config.as_deref())?)
        } else {
            Err(Error::Tokenizer {
                origin: files.name.clone(),
                msg: "the model has no tokenizer (neither tokenizer.json nor vocab.txt)".into(),
            })
        }
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Tokenizer {
                origin,
                msg: "no such file".into(),
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        // Some model files hard-code truncation/padding (all-MiniLM-L6-v2: 128); we pad ourselves
        // and never truncate silently.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        Self::finish(inner, origin)
    }

    pub fn from_vocab_txt(path: &Path, lowercase: bool) -> Result<Self> {
        let origin = path.display().to_string();
        let terr = |msg: String| Error::Tokenizer {
            origin: origin.clone(),
            msg,
        };
        if !path.is_file() {
            return Err(terr("no such file".into()));
        }
        let p = path.to_string_lossy().to_string();
        let vocab = WordPiece::read_file(&p).map_err(|e| terr(e.to_string()))?;
        let id = |tok: &str| {
            vocab
                .get(tok)
                .copied()
                .ok_or_else(|| terr(format!("vocabulary has no {tok} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        id("[UNK]")?;
        let wp = WordPiece::from_file(&p)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| terr(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(wp);
        // clean_text, handle_chinese_chars, strip_accents = follow lowercase, lowercase
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| terr(e.to_string()))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        Self::finish(inner, origin)
    }

    fn finish(inner: tokenizers::Tokenizer, origin: String) -> Result<Self> {
        let id = |tok: &str| {
            inner.token_to_id(tok).ok_or_else(|| Error::Tokenizer {
                origin: origin.clone(),
                msg: format!("vocabulary has no {tok} token"),
            })
        };
        Ok(Self {
            pad_id: id("[PAD]")?,
            cls_id: id("[CLS]")?,
            sep_id: id("[SEP]")?,
            mask_id: id("[MASK]")?,
            unk_id: id("[UNK]")?,
            inner,
            origin,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `[CLS] text [SEP]`.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
    }

    /// `[CLS] a [SEP] b [SEP]` with segment ids 0 / 1.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoded> {
        let e = self
            .inner
            .encode((a, b), true)
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
    }

    /// Word pieces without special tokens.
    pub fn tokenize_ids(&self, text: &str) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(e.get_ids().to_vec())
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `do_lower_case` from a `tokenizer_config.json` (default true).
fn lowercase_from_config(path: Option<&Path>) -> Result<bool> {
    let Some(path) = path else { return Ok(true) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        origin: path.display().to_string(),
        field: "<document>".into(),
        msg: format!("not valid JSON: {e}"),
    })?;
    match v.get("do_lower_case") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::Config {
            origin: path.display().to_string(),
            field: "do_lower_case".into(),
            msg: format!("expected true or false, found {other}"),
        }),
    }
}

/// Pads encodings to the longest with `pad_id`; returns (ids, attention_mask, token_type_ids)
/// row-major (B, T) as i64 and T.
pub fn pad_batch<E: std::borrow::Borrow<Encoded>>(
    enc: &[E],
    pad_id: u32,
) -> (Vec<i64>, Vec<i64>, Vec<i64>, usize) {
    let t = enc.iter().map(|e| e.borrow().ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(enc.len() * t);
    let mut mask = Vec::with_capacity(enc.len() * t);
    let mut tt = Vec::with_capacity(enc.len() * t);
    for e in enc {
        let e = e.borrow();
        let n = e.ids.len();
        ids.extend(e.ids.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad_id as i64, t - n));
        mask.extend(std::iter::repeat_n(1i64, n));
        mask.extend(std::iter::repeat_n(0i64, t - n));
        tt.extend(e.type_ids.iter().map(|&x| x as i64));
        tt.extend(std::iter::repeat_n(0i64, t - n));
    }
    (ids, mask, tt, t)
}
