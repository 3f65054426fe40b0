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
        "cuda" if cfg!(feature = "cuda") => {
            let retain = cuda_pool_retain()?;
            let dev = candle_core::Device::new_cuda(ordinal)?;
            #[cfg(feature = "cuda")]
            if let (true, candle_core::Device::Cuda(d)) = (retain, &dev) {
                // Not fatal: without it Candle still runs, at CUDA's default pool policy.
                if let Err(e) = mslt_kernels::cuda::retain_pool_memory(d) {
                    tracing::warn!("CUDA memory pool left at the driver's default: {e}");
                }
            }
            #[cfg(not(feature = "cuda"))]
            let _ = retain;
            Ok(dev)
        }
        "cuda" => Err(Error::Input(
            "device `cuda`: this build has no CUDA support (rebuild with `--features cuda`: scripts/build-cuda.sh, see the README's CUDA section)".into(),
        )),
        _ => Err(Error::Input(format!("device `{spec}`: expected cpu, cuda or cuda:N"))),
    }
}

/// Whether CUDA devices keep freed memory in their memory pool (`MSLT_CUDA_POOL=retain`, the
/// default) or hand it back to the driver at every synchronisation (`MSLT_CUDA_POOL=release`,
/// CUDA's own default; for A/B timings). See `mslt_kernels::cuda::retain_pool_memory`.
fn cuda_pool_retain() -> Result<bool> {
    match std::env::var("MSLT_CUDA_POOL") {
        Err(std::env::VarError::NotPresent) => parse_cuda_pool(None),
        Ok(v) => parse_cuda_pool(Some(&v)),
        Err(e) => Err(Error::Input(format!("MSLT_CUDA_POOL: {e}"))),
    }
}

fn parse_cuda_pool(v: Option<&str>) -> Result<bool> {
    match v {
        None | Some("retain") => Ok(true),
        Some("release") => Ok(false),
        Some(v) => Err(Error::Input(format!(
            "MSLT_CUDA_POOL=`{v}`: expected `retain` (the default) or `release`"
        ))),
    }
}

pub use mslt_kernels::Kernels;

/// Parses a matmul precision (`--matmul-precision`, config `matmul_precision`): `f32` (the
/// default) or `tf32`; returns whether TF32 is allowed.
pub fn matmul_tf32(s: &str) -> Result<bool> {
    match s {
        "f32" => Ok(false),
        "tf32" => Ok(true),
        o => Err(Error::Input(format!(
            "matmul_precision {o:?}: expected f32 (full f32 products) or tf32 (tensor cores)"
        ))),
    }
}

/// Sets the precision of f32 matrix products on CUDA, for the whole process. `f32`: cuBLAS in
/// full f32 (PyTorch's default). `tf32`: tensor cores on inputs rounded to TF32 (10-bit
/// mantissa), accumulated in f32 (PyTorch's `torch.backends.cuda.matmul.allow_tf32 = True`).
/// The CPU has no TF32: there `tf32` changes nothing (a warning says so).
pub fn set_matmul_precision(s: &str, dev: &candle_core::Device) -> Result<()> {
    let tf32 = matmul_tf32(s)?;
    if tf32 && !dev.is_cuda() {
        tracing::warn!("matmul precision tf32 has no effect on {dev:?}: products stay f32");
    }
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    Ok(())
}

#[cfg(test)]
mod device_tests {
    #[test]
    fn cuda_pool_policy_parses_and_names_bad_values() {
        assert!(super::parse_cuda_pool(None).unwrap());
        assert!(super::parse_cuda_pool(Some("retain")).unwrap());
        assert!(!super::parse_cuda_pool(Some("release")).unwrap());
        let e = super::parse_cuda_pool(Some("keep"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MSLT_CUDA_POOL") && e.contains("keep") && e.contains("release"),
            "{e}"
        );
    }

    #[test]
    fn matmul_precision_parses_and_names_bad_values() {
        assert!(!super::matmul_tf32("f32").unwrap());
        assert!(super::matmul_tf32("tf32").unwrap());
        let e = super::matmul_tf32("bf16").unwrap_err().to_string();
        assert!(
            e.contains("matmul_precision") && e.contains("bf16") && e.contains("tf32"),
            "{e}"
        );
    }
}
