//! mslt-core: a trainable BERT in Candle with Hugging Face parameter names, and what multi-stage
//! layerwise training (MSLT, "Progressively Stacking 2.0") builds on.
//!
//! Dimension vocabulary used in the shape comments all over the crate:
//!
//! | name | meaning |
//! |------|---------|
//! | `B`  | batch size |
//! | `T`  | sequence length (tokens) |
//! | `C`  | hidden size (`hidden_size`) |
//! | `NH` | number of attention heads |
//! | `HS` | head size, `C / NH` |
//! | `I`  | FFN intermediate size |
//! | `L`  | number of encoder layers |
//! | `V`  | vocabulary size |
//! | `M`  | number of masked (predicted) positions in a batch |
//!
//! Every op on the trainable path has a gradient. Ops that record no backward (Candle's fused
//! `layer_norm`, `softmax_last_dim`) are used only when none of their inputs is tracked, i.e. on
//! frozen / inference paths; see [`nn::LayerNorm::forward`].

pub mod ablate;
pub mod attention;
pub mod bench;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod finetune;
pub mod fused;
pub mod growth;
pub mod loss;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod simd;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use config::BertConfig;
pub use error::{Error, Result};
pub use model::{BertForPreTraining, BertInput, Heads};
pub use nn::Mode;
pub use rng::Rng;

/// The compute device named on the command line: `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<candle_core::Device> {
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| Error::Input(format!("device `{spec}`: `{n}` is not a GPU index")))?,
        ),
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Ok(candle_core::Device::new_cuda(ordinal)?),
        "cuda" => Err(Error::Input(
            "device `cuda`: this build has no CUDA support (rebuild with `--features cuda`, see docs/gpu.md)".into(),
        )),
        _ => Err(Error::Input(format!("device `{spec}`: expected cpu, cuda or cuda:N"))),
    }
}

pub use mslt_kernels::Kernels;
