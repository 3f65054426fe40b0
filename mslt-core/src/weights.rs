//! Model files: resolving a local directory or a Hugging Face hub id, reading safetensors under
//! HF names (with or without the `bert.` prefix), BERT initialisation of missing parameters, and
//! atomic safetensors writing.

use crate::config::BertConfig;
use crate::error::{Error, Result};
use crate::model::{head_parameter_shapes, parameter_shapes, Heads};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The files of a model, found in a local directory or in / through the HF hub cache.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// What the user named (a directory or a hub id), for messages.
    pub name: String,
    pub config: PathBuf,
    /// One file, or the shards listed by `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
    pub tokenizer_json: Option<PathBuf>,
    pub vocab_txt: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
}

const OPTIONAL_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "tokenizer_config.json"];

impl ModelFiles {
    /// A local HF model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let name = dir.display().to_string();
        let err = |msg: String| Error::Model {
            model: name.clone(),
            msg,
        };
        if !dir.is_dir() {
            return Err(err("is not a directory".into()));
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(err("has no config.json".into()));
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shards_from_index(&index, |f| Some(dir.join(f)))?
        } else if dir.join("pytorch_model.bin").is_file() {
            return Err(err(
                "has only pytorch_model.bin; mslt reads safetensors (convert it with \
                 transformers' save_pretrained(..., safe_serialization=True))"
                    .into(),
            ));
        } else {
            return Err(err("has no model.safetensors".into()));
        };
        let opt = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
        Ok(Self {
            name,
            config,
            weights,
            tokenizer_json: opt(OPTIONAL_FILES[0]),
            vocab_txt: opt(OPTIONAL_FILES[1]),
            tokenizer_config: opt(OPTIONAL_FILES[2]),
        })
    }

    /// A local directory if `spec` is one, else a hub id: the HF cache (`HF_HOME`) first, then a
    /// download through hf-hub.
    pub fn resolve(spec: &str) -> Result<Self> {
        let p = Path::new(spec);
        if p.exists() {
            return Self::from_dir(p);
        }
        if !looks_like_hub_id(spec) {
            return Err(Error::Model {
                model: spec.into(),
                msg: "no such directory (and not a hub id of the form `owner/name`)".into(),
            });
        }
        if let Some(files) = Self::from_hub_cache(spec) {
            return Ok(files);
        }
        Self::from_hub_download(spec)
    }

    fn from_hub_cache(id: &str) -> Option<Self> {
        let repo = hf_hub::Cache::from_env().model(id.to_string());
        let config = repo.get("config.json")?;
        let weights = match repo.get("model.safetensors") {
            Some(w) => vec![w],
            None => {
                let index = repo.get("model.safetensors.index.json")?;
                shards_from_index(&index, |f| repo.get(f)).ok()?
            }
        };
        Some(Self {
            name: id.into(),
            config,
            weights,
            tokenizer_json: repo.get(OPTIONAL_FILES[0]),
            vocab_txt: repo.get(OPTIONAL_FILES[1]),
            tokenizer_config: repo.get(OPTIONAL_FILES[2]),
        })
    }

    fn from_hub_download(id: &str) -> Result<Self> {
        let err = |msg: String| Error::Model {
            model: id.into(),
            msg,
        };
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| err(format!("cannot start the hub client: {e}")))?;
        let repo = api.model(id.to_string());
        let get = |f: &str| {
            repo.get(f).map_err(|e| {
                err(format!(
                    "not a local directory, not in the HF cache, and fetching {f} from the hub failed: {e}"
                ))
            })
        };
        let config = get("config.json")?;
        let weights = match repo.get("model.safetensors") {
            Ok(w) => vec![w],
            Err(_) => {
                let index = get("model.safetensors.index.json")?;
                shards_from_index(&index, |f| repo.get(f).ok())?
            }
        };
        Ok(Self {
            name: id.into(),
            config,
            weights,
            tokenizer_json: repo.get(OPTIONAL_FILES[0]).ok(),
            vocab_txt: repo.get(OPTIONAL_FILES[1]).ok(),
            tokenizer_config: repo.get(OPTIONAL_FILES[2]).ok(),
        })
    }

    pub fn load_config(&self) -> Result<BertConfig> {
        BertConfig::from_file(&self.config)
    }
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

fn shards_from_index(
    index: &Path,
    locate: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |msg: &str| Error::Config {
        origin: index.display().to_string(),
        field: "weight_map".into(),
        msg: msg.into(),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("expected an object of tensor name -> shard file"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str()
                .map(String::from)
                .ok_or_else(|| bad("shard names must be strings"))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    files
        .iter()
        .map(|f| locate(f).ok_or_else(|| bad(&format!("shard `{f}` not found"))))
        .collect()
}

/// Maps a checkpoint tensor name to our canonical HF `BertForPreTraining` name, or `None` for
/// tensors we do not use (buffers such as `position_ids`, other heads). The decoder weight keeps
/// its name; [`load_safetensors`] drops it when the config ties it to the word embeddings.
pub fn canonical_name(name: &str) -> Option<String> {
    let mut n = name.to_string();
    // Old TF-converted checkpoints call LayerNorm parameters gamma/beta.
    if n.contains("LayerNorm") {
        if let Some(s) = n.strip_suffix(".gamma") {
            n = format!("{s}.weight");
        } else if let Some(s) = n.strip_suffix(".beta") {
            n = format!("{s}.bias");
        }
    }
    if is_buffer(&n) {
        return None;
    }
    if n == MLM_DECODER_BIAS {
        return Some(crate::model::names::MLM_BIAS.into());
    }
    if n.starts_with("cls.") {
        return Some(n);
    }
    let body = n.strip_prefix("bert.").unwrap_or(&n);
    if body.starts_with("embeddings.")
        || body.starts_with("encoder.")
        || body.starts_with("pooler.")
    {
        return Some(format!("bert.{body}"));
    }
    None
}

/// Buffers HF checkpoints may carry beside the parameters (`embeddings.position_ids`, ...).
fn is_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name.ends_with("token_type_ids")
}

/// Tensors read from a checkpoint, under canonical names, converted to f32 on `device`.
pub struct LoadedWeights {
    pub tensors: HashMap<String, Tensor>,
    /// Names in the file we did not use (foreign heads, buffers, a skipped decoder weight or
    /// MLM bias whose values differ from what is used instead).
    pub ignored: Vec<String>,
    /// Names not read because they copy a parameter that is: a tied decoder weight equal to the
    /// word embeddings, the second MLM bias name holding the same values as the first.
    pub redundant: Vec<String>,
    /// The file(s) read, for messages.
    pub origin: String,
}

impl LoadedWeights {
    /// One line naming the checkpoint's tensors that were not read, for a warning: a head mslt
    /// does not have, a decoder weight of a tied model or a second MLM bias whose values differ
    /// from what is used instead. Buffers (`position_ids`, `token_type_ids`) and `redundant`
    /// copies are left out. `None` when there is nothing to report.
    pub fn unused_note(&self) -> Option<String> {
        const SHOWN: usize = 8;
        let mut names: Vec<&str> = self
            .ignored
            .iter()
            .map(String::as_str)
            .filter(|n| !is_buffer(n))
            .collect();
        if names.is_empty() {
            return None;
        }
        names.sort_unstable();
        let n = names.len();
        let more = n.saturating_sub(SHOWN);
        names.truncate(SHOWN);
        Some(format!(
            "{n} tensor(s) not used: {}{}",
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))
    }
}

/// HF name of the MLM decoder's own bias. transformers ties it to `cls.predictions.bias` only
/// while the decoder weight is tied (5.x: `_tied_weights_keys`; 4.x shares one parameter): with
/// `tie_word_embeddings: false`, 5.x reads this one and initialises it anew when it is missing.
pub const MLM_DECODER_BIAS: &str = "cls.predictions.decoder.bias";

/// Which of the two MLM bias names a checkpoint of a model with this tie is read from when it
/// holds both: `cls.predictions.bias` for a tied decoder, `cls.predictions.decoder.bias` for an
/// untied one (what transformers' forward adds in each case).
pub fn preferred_mlm_bias(tie_word_embeddings: bool) -> &'static str {
    if tie_word_embeddings {
        crate::model::names::MLM_BIAS
    } else {
        MLM_DECODER_BIAS
    }
}

/// Of a checkpoint's tensor names, the one mslt does not read although it maps to a BERT
/// parameter: the non-preferred MLM bias when both are present ([`preferred_mlm_bias`]).
pub fn shadowed_mlm_bias<'a>(
    names: impl IntoIterator<Item = &'a str>,
    tie_word_embeddings: bool,
) -> Option<&'static str> {
    let (mut bias, mut decoder_bias) = (false, false);
    for n in names {
        bias |= n == crate::model::names::MLM_BIAS;
        decoder_bias |= n == MLM_DECODER_BIAS;
    }
    // the name the other tie prefers is the one this tie leaves unread
    (bias && decoder_bias).then_some(preferred_mlm_bias(!tie_word_embeddings))
}

/// Reads safetensors files (one or several shards) of a model with config `cfg`. A decoder
/// weight (`cls.predictions.decoder.weight`, which HF checkpoints may carry even when it is tied)
/// is kept only when `cfg` unties it. Of the two MLM bias names, either one is read when it is
/// alone; when both are present (in any files, in any order) the one [`preferred_mlm_bias`] names
/// is read. A skipped decoder weight or bias that holds the same values as what is used instead
/// (the word embeddings, the bias read) is listed in `redundant`; one that differs, in `ignored`.
pub fn load_safetensors(
    paths: &[PathBuf],
    cfg: &BertConfig,
    device: &Device,
) -> Result<LoadedWeights> {
    use crate::model::names;
    let tied = cfg.tie_word_embeddings;
    let mut tensors = HashMap::new();
    let mut ignored = Vec::new();
    // every tensor under an MLM bias name; which one is read depends on all of them
    let mut biases: Vec<(String, Tensor, &PathBuf)> = Vec::new();
    // tensors not read that may copy a parameter that is: (name, tensor, the parameter)
    let mut copies: Vec<(String, Tensor, &str)> = Vec::new();
    for path in paths {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let raw = candle_core::safetensors::load(path, device).map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: first_line(&e.to_string()),
        })?;
        for (name, t) in raw {
            let Some(c) = canonical_name(&name) else {
                ignored.push(name);
                continue;
            };
            if tied && c == names::MLM_DECODER {
                copies.push((name, t, names::WORD));
                continue;
            }
            if c == names::MLM_BIAS {
                biases.push((name, t, path));
            } else {
                tensors.insert(c, to_f32(path, &name, t)?);
            }
        }
    }
    let shadowed = shadowed_mlm_bias(biases.iter().map(|(n, _, _)| n.as_str()), tied);
    for (name, t, path) in biases {
        if Some(name.as_str()) == shadowed {
            copies.push((name, t, names::MLM_BIAS));
        } else {
            tensors.insert(names::MLM_BIAS.into(), to_f32(path, &name, t)?);
        }
    }
    let mut redundant = Vec::new();
    for (name, t, of) in copies {
        if tensors.get(of).is_some_and(|p| same_values(p, &t)) {
            redundant.push(name);
        } else {
            ignored.push(name);
        }
    }
    let origin = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(LoadedWeights {
        tensors,
        ignored,
        redundant,
        origin,
    })
}

/// A checkpoint tensor as f32; `path` and `name` for the error when it is not a float type.
fn to_f32(path: &Path, name: &str, t: Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t)
    } else if t.dtype().is_float() {
        Ok(t.to_dtype(DType::F32)?)
    } else {
        Err(Error::Safetensors {
            path: path.to_path_buf(),
            msg: format!(
                "tensor `{name}` has dtype {:?}, expected a float type",
                t.dtype()
            ),
        })
    }
}

/// Whether `b` holds exactly the values of the f32 tensor `a` (any float dtype, same shape).
fn same_values(a: &Tensor, b: &Tensor) -> bool {
    if a.dims() != b.dims() || !b.dtype().is_float() {
        return false;
    }
    let diff = || -> candle_core::Result<f32> {
        (a - b.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()
    };
    diff().is_ok_and(|d| d == 0.0)
}

/// Whether mslt reads the checkpoint tensor `name` for a model with this tie, given the MLM bias
/// name [`shadowed_mlm_bias`] found over all of the checkpoint's files: the rule
/// [`load_safetensors`] follows, for tools that read only names (`inspect`).
pub fn is_read(name: &str, tied: bool, shadowed: Option<&str>) -> bool {
    Some(name) != shadowed
        && canonical_name(name).is_some_and(|c| !(tied && c == crate::model::names::MLM_DECODER))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Which optional heads are present in a set of tensors.
pub fn heads_present(tensors: &HashMap<String, Tensor>) -> Heads {
    let has = |p: &str| tensors.keys().any(|k| k.starts_with(p));
    Heads {
        pooler: has("bert.pooler."),
        mlm: has("cls.predictions."),
        nsp: has("cls.seq_relationship."),
    }
}

/// BERT initialisation (HF `BertPreTrainedModel._init_weights`): Linear and Embedding weights
/// N(0, initializer_range), biases 0, LayerNorm weight 1 / bias 0, the padding row of the word
/// embeddings 0, MLM output bias 0.
pub fn init_tensor(
    cfg: &BertConfig,
    name: &str,
    shape: &[usize],
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = if name.contains("LayerNorm") && name.ends_with(".weight") {
        Tensor::ones(shape, DType::F32, device)?
    } else if name.ends_with(".bias") || name == "cls.predictions.bias" {
        Tensor::zeros(shape, DType::F32, device)?
    } else {
        let mut v = rng.normal_vec(n, 0.0, cfg.initializer_range as f32);
        if name == crate::model::names::WORD {
            let c = shape[1];
            let p = cfg.pad_token_id as usize;
            v[p * c..(p + 1) * c].iter_mut().for_each(|x| *x = 0.0);
        }
        Tensor::from_vec(v, shape, device)?
    };
    Ok(t)
}

/// A freshly initialised model's tensors (every head).
pub fn init_all(
    cfg: &BertConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    parameter_shapes(cfg, Heads::ALL)
        .into_iter()
        .map(|(name, shape)| {
            let t = init_tensor(cfg, &name, &shape, rng, device)?;
            Ok((name, t))
        })
        .collect()
}

/// Initialises the heads absent from `tensors` (BERT init) and returns their HF prefixes, so
/// training can start from an encoder-only checkpoint and say what it initialised.
pub fn init_missing_heads(
    cfg: &BertConfig,
    tensors: &mut HashMap<String, Tensor>,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<&'static str>> {
    let have = heads_present(tensors);
    let missing = Heads {
        pooler: !have.pooler,
        mlm: !have.mlm,
        nsp: !have.nsp,
    };
    for (name, shape) in head_parameter_shapes(cfg, missing) {
        let t = init_tensor(cfg, &name, &shape, rng, device)?;
        tensors.insert(name, t);
    }
    let mut report = Vec::new();
    if missing.pooler {
        report.push("bert.pooler.*");
    }
    if missing.mlm && cfg.tie_word_embeddings {
        report.push("cls.predictions.* (MLM head; decoder tied to the word embeddings)");
    } else if missing.mlm {
        report.push("cls.predictions.* (MLM head, with its own decoder weight)");
    }
    if missing.nsp {
        report.push("cls.seq_relationship.* (NSP head)");
    }
    Ok(report)
}

/// Unties the MLM decoder of a model that has an MLM head but no decoder weight of its own (a
/// tied checkpoint, now under a config with `tie_word_embeddings: false`): the decoder weight
/// starts as a copy of the word embeddings, so the model still computes what the checkpoint did.
/// Returns whether it did so.
pub fn untie_decoder(cfg: &BertConfig, tensors: &mut HashMap<String, Tensor>) -> Result<bool> {
    let decoder = crate::model::names::MLM_DECODER;
    if cfg.tie_word_embeddings || !heads_present(tensors).mlm || tensors.contains_key(decoder) {
        return Ok(false);
    }
    let word = crate::model::names::WORD;
    let w = tensors
        .get(word)
        .ok_or_else(|| Error::Input(format!("cannot untie the decoder: no `{word}`")))?
        .copy()?;
    tensors.insert(decoder.to_string(), w);
    Ok(true)
}

/// Trainable parameters: one `Var` per HF name.
pub struct Params {
    pub vars: BTreeMap<String, Var>,
}

impl Params {
    /// Copies `tensors` into fresh variables.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let vars = tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), Var::from_tensor(&t.detach())?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Self { vars })
    }

    /// The variables' tensors (tracked: a model built from them trains).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Detached views of the variables (no graph: a model built from them is frozen and sees
    /// every optimizer update, since the storage is shared).
    pub fn detached(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// (name, var) pairs, for the optimizer.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn num_elements(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}

/// Writes tensors to `path` as safetensors atomically: a temp file in the same directory,
/// fsync, then rename. A crash leaves either the old file or the new one, never a torn one.
pub fn save_safetensors_atomic(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let data: Vec<(&String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(data, metadata).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: format!("serialising: {e}"),
    })?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("embeddings.word_embeddings.weight").as_deref(),
            Some("bert.embeddings.word_embeddings.weight")
        );
        assert_eq!(
            canonical_name("bert.encoder.layer.3.output.LayerNorm.gamma").as_deref(),
            Some("bert.encoder.layer.3.output.LayerNorm.weight")
        );
        assert_eq!(canonical_name("embeddings.position_ids"), None);
        assert_eq!(
            canonical_name("cls.predictions.decoder.weight").as_deref(),
            Some("cls.predictions.decoder.weight")
        );
        assert_eq!(
            canonical_name("cls.predictions.decoder.bias").as_deref(),
            Some("cls.predictions.bias")
        );
        assert_eq!(canonical_name("classifier.weight"), None);
    }

    #[test]
    fn unused_note_lists_sorted_parameters_only() {
        let w = |ignored: Vec<String>| LoadedWeights {
            tensors: HashMap::new(),
            ignored,
            redundant: vec![],
            origin: "m.safetensors".into(),
        };
        assert_eq!(w(vec![]).unused_note(), None);
        assert_eq!(
            w(vec!["embeddings.position_ids".into()]).unused_note(),
            None,
            "a buffer alone is not reported"
        );
        // 10 parameters (given out of order) and a buffer: the first 8 by name, then a count
        let mut names: Vec<String> = (0..10).rev().map(|i| format!("head.{i}")).collect();
        names.push("bert.embeddings.token_type_ids".into());
        assert_eq!(
            w(names).unused_note().as_deref(),
            Some("10 tensor(s) not used: head.0, head.1, head.2, head.3, head.4, head.5, head.6, head.7 and 2 more")
        );
    }

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(looks_like_hub_id("bert-base-uncased"));
        assert!(!looks_like_hub_id("./some/dir/x"));
        assert!(!looks_like_hub_id("/abs/path"));
    }

    #[test]
    fn init_follows_bert() -> Result<()> {
        let cfg = BertConfig::preset("tiny").unwrap();
        let t = init_all(&cfg, &mut Rng::new(0), &Device::Cpu)?;
        assert_eq!(t.len(), parameter_shapes(&cfg, Heads::ALL).len());
        let n: usize = t.values().map(|x| x.elem_count()).sum();
        assert_eq!(n, cfg.num_parameters());
        let ln: Vec<f32> = t["bert.embeddings.LayerNorm.weight"].to_vec1()?;
        assert!(ln.iter().all(|&x| x == 1.0));
        let pad: Vec<f32> = t[crate::model::names::WORD].get(0)?.to_vec1()?;
        assert!(pad.iter().all(|&x| x == 0.0));
        let q: Vec<f32> = t["bert.encoder.layer.0.attention.self.query.weight"]
            .flatten_all()?
            .to_vec1()?;
        let std = (q.iter().map(|x| x * x).sum::<f32>() / q.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
        Ok(())
    }
}
