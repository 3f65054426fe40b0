//! Typed errors of mslt-core. Every variant names the file, field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A config file (or config value) is invalid; `field` names the offending key.
    #[error("{origin}: field `{field}`: {msg}")]
    Config {
        origin: String,
        field: String,
        msg: String,
    },

    /// A file that should hold safetensors does not.
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },

    /// A tensor the model needs is not in the checkpoint.
    #[error("{origin}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        origin: String,
        name: String,
        expected: Vec<usize>,
    },

    /// A tensor has the wrong shape for the config.
    #[error("{origin}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        origin: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A model directory / hub id could not be resolved to model files.
    #[error("model `{model}`: {msg}")]
    Model { model: String, msg: String },

    /// The tokenizer could not be loaded or failed.
    #[error("tokenizer {origin}: {msg}")]
    Tokenizer { origin: String, msg: String },

    /// Bad model input (ids out of range, inconsistent shapes, ...).
    #[error("{0}")]
    Input(String),

    /// Data-parallel setup or a collective failed (rank, world size, rendezvous, NCCL).
    #[error("distributed: {0}")]
    Dist(String),

    /// Optimizer state that does not fit the parameters.
    #[error("optimizer: {0}")]
    Optimizer(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a JSON file of ours into `T` and checks its `format` tag (`format_of(&t)`) is `expected`:
/// errors name the file and the field.
pub(crate) fn read_versioned_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    expected: &str,
    format_of: impl Fn(&T) -> &str,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let t: T = serde_json::from_str(&text).map_err(|e| Error::Config {
        origin: path.display().to_string(),
        field: "<document>".into(),
        msg: e.to_string(),
    })?;
    let found = format_of(&t);
    if found != expected {
        return Err(Error::Config {
            origin: path.display().to_string(),
            field: "format".into(),
            msg: format!("`{found}` is not supported (expected `{expected}`)"),
        });
    }
    Ok(t)
}
