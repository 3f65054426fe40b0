//! mslt-kernels: fused forward-only kernels for the frozen layers of multi-stage layerwise
//! training.
//!
//! **Status: no kernels yet.** The `.cu` sources (fused residual-add + LayerNorm, flash-style
//! self-attention, bias + GELU) under `kernels-cu/`, their NVRTC compilation through cudarc and
//! the Candle custom ops are the subject of a later issue. Until then the frozen path of
//! `mslt-core` runs Candle's own fused no-backward ops (`candle_nn::ops::layer_norm`,
//! `softmax_last_dim`) on CPU and CUDA alike; see `mslt_core::nn`.
//!
//! The crate exists now so that the workspace layout and the `cuda` feature wiring
//! (`mslt-cli/cuda` -> `mslt-core/cuda` -> `mslt-kernels/cuda` -> `candle-core/cuda`) are in place.

/// Whether this build was compiled with CUDA support (the `cuda` feature).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");
