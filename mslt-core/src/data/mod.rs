//! Pre-training data: corpus preparation into packed binary shards, reading them back in a
//! resumable, seeded order, and dynamic MLM masking.
//!
//! A prepared data directory holds:
//! - `manifest.json` — format, seq len, vocabulary hash, special ids, NSP on/off, per split the
//!   shard files and counts, what was skipped;
//! - `subwords.bin` — one byte per vocabulary id, 1 for `##` continuation pieces (whole-word
//!   masking needs it);
//! - `train-NNNNN.safetensors`, `val-NNNNN.safetensors` — packed sequences (see [`shards`]).

pub mod loader;
pub mod masking;
pub mod prepare;
pub mod shards;
pub mod text;

pub use loader::{Batch, DataSet};
pub use masking::{mask_batch, MaskingConfig};
pub use prepare::{prepare, Manifest, PrepareConfig, PrepareReport};
