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

pub mod config;
pub mod error;
pub mod loss;
pub mod model;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod tokenizer;
pub mod weights;

pub use config::BertConfig;
pub use error::{Error, Result};
pub use model::{BertForPreTraining, BertInput, Heads};
pub use nn::Mode;
pub use rng::Rng;
