//! mslt-kernels: fused forward-only kernels for the frozen layers of multi-stage layerwise
//! training.
//!
//! The CUDA C sources live in `kernels-cu/` (embedded here with `include_str!`) and are compiled
//! at run time with NVRTC, once per device architecture, then cached ([`cuda`], `cuda` feature).
//! Each kernel is a Candle custom op ([`ops`]) with a `cuda_fwd` and a `cpu_fwd`; the CPU side
//! runs a plain reference ([`cpu`]). [`reference`] holds the same computations composed from
//! Candle ops, which is what every fused kernel is checked against ([`harness`]).
//!
//! The ops have no backward: they serve the frozen (forward-only) layers and inference. Calling
//! `backward()` through them is an error, never a silently missing gradient.
//!
//! [`nvrtc`] loads the NVRTC library with `dlopen` so that any machine that has the library (no
//! GPU, no `cuda` feature needed) can check that every source compiles to PTX.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod harness;
pub mod nvrtc;
pub mod ops;
pub mod philox;
pub mod reference;

pub use ops::{
    add_layer_norm, attention, attention_dropout, attention_dropout_with, attention_with,
    bias_gelu, supported_head_dim, AttentionKernel,
};

/// Whether this build was compiled with CUDA support (the `cuda` feature).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

/// Errors of this crate; each names the kernel it concerns.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel {kernel}: NVRTC compilation failed (options {options:?}):\n{log}")]
    Compile {
        kernel: String,
        options: Vec<String>,
        log: String,
    },
    #[error("kernel {kernel}: {what}")]
    Cuda { kernel: String, what: String },
    #[error("kernel {kernel}: {what}")]
    Input { kernel: &'static str, what: String },
    #[error("NVRTC library not available: {0}")]
    NvrtcMissing(String),
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Which implementation the frozen layers use: the fused kernels of this crate, or plain Candle
/// ops (the A/B switch `--kernels fused|candle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    #[default]
    Fused,
    Candle,
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Kernels::Fused),
            "candle" => Ok(Kernels::Candle),
            o => Err(format!("unknown kernels {o:?}: expected fused or candle")),
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernels::Fused => "fused",
            Kernels::Candle => "candle",
        })
    }
}

/// One `.cu` file of `kernels-cu/` and its `extern "C"` entry points.
pub struct Source {
    /// Module name (one NVRTC program, one loaded CUDA module per device).
    pub module: &'static str,
    pub file: &'static str,
    pub code: &'static str,
    pub entries: &'static [&'static str],
    /// Compiled for `sm_90a` (the architecture-specific target with Hopper's `wgmma`) on an
    /// sm_90 device: its `_fa2_wg` entry points need it, the others compile to the same machine
    /// code for sm_90 and sm_90a (checked with ptxas 13.0).
    pub sm90a: bool,
}

pub const LAYER_NORM: Source = Source {
    module: "mslt_layer_norm",
    file: "layer_norm.cu",
    code: include_str!("../../kernels-cu/layer_norm.cu"),
    entries: &["add_layer_norm_f32", "add_layer_norm_bf16"],
    sm90a: false,
};

pub const BIAS_GELU: Source = Source {
    module: "mslt_bias_gelu",
    file: "bias_gelu.cu",
    code: include_str!("../../kernels-cu/bias_gelu.cu"),
    entries: &["bias_gelu_f32", "bias_gelu_bf16"],
    sm90a: false,
};

pub const ATTENTION: Source = Source {
    module: "mslt_attention",
    file: "attention.cu",
    code: include_str!("../../kernels-cu/attention.cu"),
    entries: &[
        "attention_fwd_f32_d32",
        "attention_fwd_f32_d64",
        "attention_fwd_f32_d128",
        "attention_fwd_bf16_d32",
        "attention_fwd_bf16_d64",
        "attention_fwd_bf16_d128",
        "attention_fwd_bf16_d64_tc",
        "attention_fwd_bf16_d64_fa2",
        "attention_fwd_bf16_d64_fa2_v2",
        "attention_fwd_bf16_d64_fa2_v2_dropout",
        "attention_fwd_bf16_d64_fa2_q128",
        "attention_fwd_bf16_d64_fa2_w8",
        "attention_fwd_bf16_d64_fa2_w8_dropout",
        "attention_fwd_bf16_d64_fa2_v3",
        "attention_fwd_bf16_d64_fa2_v3_dropout",
        "attention_fwd_bf16_d64_fa2_w8v3",
        "attention_fwd_bf16_d64_fa2_w8v3_dropout",
        "attention_fwd_bf16_d64_fa2_w8v4",
        "attention_fwd_bf16_d64_fa2_w8v4_dropout",
        "attention_fwd_bf16_d64_fa2_w8v5",
        "attention_fwd_bf16_d64_fa2_w8v5_dropout",
        "attention_fwd_bf16_d64_fa2_wg",
        "attention_fwd_bf16_d64_fa2_wg_dropout",
        "attention_fwd_bf16_d64_fa2_wg2",
        "attention_fwd_bf16_d64_fa2_wg2_dropout",
        "attention_fwd_bf16_d64_fa2_wg3",
        "attention_fwd_bf16_d64_fa2_wg3_dropout",
        "attention_fwd_bf16_d64_fa2_wg3e",
        "attention_fwd_bf16_d64_fa2_wg3e_dropout",
        "attention_fwd_bf16_d64_fa2_wg4",
        "attention_fwd_bf16_d64_fa2_wg4_dropout",
        "attention_fwd_bf16_d64_fa2_wg4e",
        "attention_fwd_bf16_d64_fa2_wg4e_dropout",
        "attention_fwd_bf16_d64_fa2_wg3s",
        "attention_fwd_bf16_d64_fa2_wg3s_dropout",
        "attention_fwd_f32_d64_tf32x3",
        "attention_fwd_f32_d64_tf32x3_dropout",
    ],
    sm90a: true,
};

pub const OPTIM: Source = Source {
    module: "mslt_optim",
    file: "optim.cu",
    code: include_str!("../../kernels-cu/optim.cu"),
    entries: &["adamw_step_f32"],
    sm90a: false,
};

/// Every kernel source.
pub const SOURCES: [&Source; 4] = [&LAYER_NORM, &BIAS_GELU, &ATTENTION, &OPTIM];
