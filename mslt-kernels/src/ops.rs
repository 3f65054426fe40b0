//! The fused kernels as Candle custom ops (forward only) and the public functions that validate
//! their inputs and apply them.

use crate::cpu::{self, Elem};
use crate::KernelError;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Head dims the fused attention kernel is compiled for.
pub fn supported_head_dim(d: usize) -> bool {
    matches!(d, 32 | 64 | 128)
}

fn input_err(kernel: &'static str, what: String) -> candle_core::Error {
    KernelError::Input { kernel, what }.into()
}

/// The contiguous `[start, end)` of a layout, or an error naming the kernel.
pub(crate) fn span(kernel: &'static str, l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| input_err(kernel, format!("input is not contiguous (layout {l:?})")))
}

fn cpu_slice<'a, T: candle_core::WithDType>(
    kernel: &'static str,
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    let (a, b) = span(kernel, l)?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Fused residual-add + LayerNorm: (x, res, wb) -> LN(x + res), wb = [gamma; beta] (2, C).
pub struct AddLayerNorm {
    pub eps: f32,
    /// When false, `res` is ignored (plain LayerNorm).
    pub has_res: bool,
}

impl CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "mslt-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l3.dims()[1];
        fn go<T: Elem + candle_core::WithDType>(
            op: &AddLayerNorm,
            s: [(&CpuStorage, &Layout); 3],
            c: usize,
        ) -> Result<Vec<T>> {
            let k = "add_layer_norm";
            let x = cpu_slice::<T>(k, s[0].0, s[0].1)?;
            let r = cpu_slice::<T>(k, s[1].0, s[1].1)?;
            let wb = cpu_slice::<T>(k, s[2].0, s[2].1)?;
            Ok(cpu::add_layer_norm(
                x,
                op.has_res.then_some(r),
                wb,
                c,
                op.eps,
            ))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(go::<f32>(self, s, c)?),
            DType::BF16 => CpuStorage::BF16(go::<half::bf16>(self, s, c)?),
            d => {
                return Err(input_err(
                    "add_layer_norm",
                    format!("dtype {d:?}: expected f32 or bf16"),
                ))
            }
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::add_layer_norm(self, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// Whether the CUDA bias + GELU kernel issues four 16-byte loads per thread before using them,
/// from `MSLT_GELU`: `u4` (the default) or `u1` (one at a time). Both passed their checks on an
/// H100 (run 5, docs/gpu-results.md); u4 took 5-6% less time in bf16 at 32k-131k rows and the
/// same in f32. Only the vectorised path (C a multiple of 16 bytes, aligned) has the choice.
pub fn gelu_unroll(env: Option<&str>) -> std::result::Result<bool, String> {
    match env {
        None | Some("u4") => Ok(true),
        Some("u1") => Ok(false),
        Some(o) => Err(format!("MSLT_GELU=`{o}`: expected u4 (the default) or u1")),
    }
}

/// Fused bias + GELU (erf): (x, bias) -> gelu(x + bias).
pub struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "mslt-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = "bias_gelu";
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(cpu::bias_gelu(
                cpu_slice::<f32>(k, s1, l1)?,
                cpu_slice::<f32>(k, s2, l2)?,
            )),
            DType::BF16 => CpuStorage::BF16(cpu::bias_gelu(
                cpu_slice::<half::bf16>(k, s1, l1)?,
                cpu_slice::<half::bf16>(k, s2, l2)?,
            )),
            d => return Err(input_err(k, format!("dtype {d:?}: expected f32 or bf16"))),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::bias_gelu((s1, l1), (s2, l2))
    }
}

/// The longest sequence fa2v3, fa2w8v3, fa2w8v4, fa2w8v5 and the fa2wg kernels take: `FA2P_MAXT` in kernels-cu/attention.cu (the
/// size of their shared mask row; a test reads it from the source).
pub const FA2P_MAX_T: usize = 512;

/// Which CUDA attention kernel runs. bf16 with 64-wide heads has seventeen (fa2v3 / fa2w8v3 /
/// fa2w8 the defaults), f32 with 64-wide heads two (tf32x3 the default); every other dtype and
/// head dim has the CUDA-core kernel only. All but fa2w8v4, fa2w8v5, fa2wg3, fa2wg3e, fa2wg4,
/// fa2wg4e and fa2wg3s passed their checks on an H100 (runs 5-8, docs/gpu-results.md); those
/// seven have not run on a GPU yet.
/// The CPU side ignores it (one reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// `MSLT_ATTENTION` (simt | tc | fa2 | fa2v2 | fa2q128 | fa2w8 | fa2v3 | fa2w8v3 | fa2w8v4 |
    /// fa2w8v5 | fa2wg | fa2wg2 | fa2wg3 | fa2wg3e | fa2wg4 | fa2wg4e | fa2wg3s | tf32x3) where it
    /// applies,
    /// else the default of [`resolve_attention_kernel`].
    #[default]
    Auto,
    /// CUDA cores, f32 accumulation (`attention_fwd_{f32,bf16}_d{32,64,128}`).
    Simt,
    /// Tensor cores, mma.sync (`attention_fwd_bf16_d64_tc`; bf16, D = 64): the first tensor-core
    /// kernel, slower than `Fa2` at every shape of run 5.
    Tc,
    /// Tensor cores, FlashAttention-2 style: ldmatrix, cp.async double buffering, padding tiles
    /// skipped (`attention_fwd_bf16_d64_fa2`; bf16, D = 64). On the H100 it took 0.37-0.85x the
    /// time of `Tc` at BERT shapes (run 5); `Fa2V2` and `Fa2W8` are faster still (run 6).
    Fa2,
    /// `Fa2` with 32 query rows per warp, 128 per block, key tiles of 32
    /// (`attention_fwd_bf16_d64_fa2_q128`): faster than `Fa2` at B32 T128 only (run 5).
    Fa2Q128,
    /// `Fa2` with fewer instructions per key tile (`attention_fwd_bf16_d64_fa2_v2`): the
    /// probabilities packed to bf16 by `cvt.rn.bf16x2.f32` (the same rounding), the K/V tile loads
    /// unrolled at compile time, the Q fragments read before the loop; 642 instead of 963 SASS
    /// instructions in the loop per 64 mma on sm_90, 128 registers. 0.82-0.99x the time of `Fa2`
    /// on the H100 (run 6); the bf16 default below T = 256 until `Fa2V3` (run 8).
    Fa2V2,
    /// `Fa2V2` with 8 warps per block (128 query rows, key tiles of 64, the Q tile read into
    /// registers over the K buffers): each K/V tile serves twice the rows at the same registers
    /// and occupancy (`attention_fwd_bf16_d64_fa2_w8`; 556 loop instructions). 0.79-0.88x the
    /// time of `Fa2` at T = 512 on the H100 (run 6). The bf16 default beyond T = 512 (where
    /// `Fa2W8V3` does not go).
    Fa2W8,
    /// `Fa2V2` with no global load on the critical path, for T <= 512
    /// (`attention_fwd_bf16_d64_fa2_v3`): the Q tile and the first K/V tile requested together,
    /// the mask row read once (into shared memory, with the live-tile bits) while they stream
    /// in, where `Fa2V2` waits one L2 round trip for each key tile's mask and runs a serial
    /// prologue (one load and barrier per key tile); output packed by `cvt.rn.bf16x2`. 594 loop
    /// instructions per 64 mma on sm_90, 128 registers. The bf16 default below T = 256: 0.89-0.92x
    /// the time of `Fa2V2` at T = 128 on the H100 (run 8).
    Fa2V3,
    /// `Fa2W8` as `Fa2V3` (`attention_fwd_bf16_d64_fa2_w8v3`; T <= 512): the Q tile lies over
    /// the second K/V buffer, so the first K/V tile still streams in beside it. 530 loop
    /// instructions. The bf16 default from T = 256 to 512: 0.80-0.94x the time of `Fa2W8` at
    /// T = 256 and 512 on the H100 (run 8).
    Fa2W8V3,
    /// `Fa2W8V3` with the key-tile loop's shared-memory addresses in 32 bits
    /// (`attention_fwd_bf16_d64_fa2_w8v4`; T <= 512): one base per tile and compile-time offsets
    /// in the `ldmatrix` / `cp.async` instructions, where a generic pointer cost a 64-bit add, its
    /// carry and a move each; the same loads, order and arithmetic. 426 instead of 530 loop
    /// instructions on sm_90a, 128 registers, no spills. Not yet run on a GPU.
    Fa2W8V4,
    /// `Fa2W8V4` with one barrier per key tile instead of two
    /// (`attention_fwd_bf16_d64_fa2_w8v5`; T <= 512): the next tile is requested after the
    /// barrier that starts this one, into the buffer every warp has finished with. Not yet run on
    /// a GPU.
    Fa2W8V5,
    /// `Fa2V3` with S = Q K^T on Hopper's warpgroup tensor cores (`wgmma.mma_async`, Q and K
    /// read from shared memory through matrix descriptors; `attention_fwd_bf16_d64_fa2_wg`,
    /// sm_90 only, T <= 512); the softmax and O += P V stay on `mma.sync`. Correct on the H100
    /// but slower: 1.21-1.27x the time of `Fa2V3` at B >= 128, T = 512 (run 7).
    Fa2Wg,
    /// `Fa2Wg` with O += P V on `wgmma` too (P from registers, V read from shared memory as the
    /// N-major operand; `attention_fwd_bf16_d64_fa2_wg2`, sm_90 only, T <= 512): every product
    /// of a key tile on the warpgroup tensor cores. Correct on the H100 but slower still:
    /// 1.60-1.65x the time of `Fa2V3` at B >= 128, T = 512 (run 7).
    Fa2Wg2,
    /// Both products on `wgmma`, restructured after FlashAttention-3 / -4
    /// (`attention_fwd_bf16_d64_fa2_wg3`, sm_90 only, T <= 512; two warpgroups, 128 query rows
    /// per block): Q in registers (S = Q K^T reads only K from shared memory), the softmax of
    /// key tile j while O += P V of tile j - 1 runs, the row sums on the tensor cores (a ones
    /// column in V, m64n72k16; not with dropout), O rescaled only when a row's maximum grows by
    /// more than a factor 2^8, and unmasked tiles (every mask value 0) without the mask arithmetic. 317
    /// loop instructions per warp and 64-key tile on an unmasked tile (fa2w8v3: 530), 128
    /// registers, no spills. Checked on the CPU by emulation only (tools/emulate_fa2.py); not
    /// yet run on a GPU.
    Fa2Wg3,
    /// `Fa2Wg3` with K and V of key tile 1 requested in the prologue beside the Q tile and tile
    /// 0 (`attention_fwd_bf16_d64_fa2_wg3e`, sm_90 only, T <= 512): the Q tile lies in 16 KB of
    /// dynamic shared memory of its own, so at T <= 128 a block waits for global memory once
    /// instead of twice; tile 1 is processed whatever its mask. Not yet run on a GPU.
    Fa2Wg3E,
    /// `Fa2Wg3` with one warpgroup (64 query rows) per block
    /// (`attention_fwd_bf16_d64_fa2_wg4`, sm_90 only, T <= 512). Not yet run on a GPU.
    Fa2Wg4,
    /// `Fa2Wg4` with K and V of key tile 1 requested in the prologue beside the Q tile and tile
    /// 0 (`attention_fwd_bf16_d64_fa2_wg4e`, sm_90 only, T <= 512): the Q tile has a buffer of
    /// its own (8 KB of dynamic shared memory), so at T <= 128 a block waits for global memory
    /// once instead of twice; tile 1 is processed whatever its mask. Not yet run on a GPU.
    Fa2Wg4E,
    /// An ablation of `Fa2Wg3`: every `wgmma` group waited for at once, so the softmax no longer
    /// overlaps O += P V (`attention_fwd_bf16_d64_fa2_wg3s`, sm_90 only, T <= 512); what the
    /// overlap is worth is fa2wg3s' time over fa2wg3's. Not yet run on a GPU.
    Fa2Wg3S,
    /// f32 on tensor cores with the 3xTF32 split, about f32 accuracy
    /// (`attention_fwd_f32_d64_tf32x3`; f32, D = 64). The f32 default: within 1.2e-6 relative of
    /// the f32 reference and 2.8-5.5x faster than `Simt` on the H100 (run 5).
    Tf32x3,
}

impl AttentionKernel {
    /// Every kernel chosen by name (all but `Auto` and `Simt`): what `--attention-kernels all`
    /// selects.
    pub const NAMED: [AttentionKernel; 17] = [
        Self::Tc,
        Self::Fa2,
        Self::Fa2V2,
        Self::Fa2Q128,
        Self::Fa2W8,
        Self::Fa2V3,
        Self::Fa2W8V3,
        Self::Fa2W8V4,
        Self::Fa2W8V5,
        Self::Fa2Wg,
        Self::Fa2Wg2,
        Self::Fa2Wg3,
        Self::Fa2Wg3E,
        Self::Fa2Wg4,
        Self::Fa2Wg4E,
        Self::Fa2Wg3S,
        Self::Tf32x3,
    ];

    /// Bytes of dynamic shared memory the kernel is launched with: the Q tile of fa2wg3e /
    /// fa2wg4e (64 query rows per warpgroup x 64 bf16), none for the others.
    pub fn dynamic_shared_bytes(self) -> usize {
        match self {
            Self::Fa2Wg3E => 128 * 128,
            Self::Fa2Wg4E => 64 * 128,
            _ => 0,
        }
    }

    /// The kernels that hold the mask row in a fixed shared array (fa2v3, fa2w8v3, fa2w8v4,
    /// fa2w8v5 and the fa2wg kernels; `FA2P_MAXT`).
    fn has_shared_mask_row(self) -> bool {
        matches!(
            self,
            Self::Fa2V3 | Self::Fa2W8V3 | Self::Fa2W8V4 | Self::Fa2W8V5
        ) || self.needs_sm90()
    }

    /// Whether this kernel has a `_dropout` entry point (dropout on the probabilities inside the
    /// kernel, [`crate::philox`]): fa2v2, fa2w8, tf32x3 and every kernel with the shared mask row
    /// (fa2v3, fa2w8v3, fa2w8v4, fa2w8v5, the fa2wg kernels).
    pub fn has_dropout(self) -> bool {
        self.has_shared_mask_row() || matches!(self, Self::Fa2V2 | Self::Fa2W8 | Self::Tf32x3)
    }

    /// The longest sequence the kernel takes: fa2v3, fa2w8v3, fa2w8v4, fa2w8v5 and the fa2wg
    /// kernels hold the mask row in a fixed shared array of 512 (BERT's longest); the others take any T.
    pub fn max_seq_len(self) -> Option<usize> {
        self.has_shared_mask_row().then_some(FA2P_MAX_T)
    }

    /// Whether the kernel needs an sm_90 (Hopper) GPU: the fa2wg kernels (`wgmma`).
    pub fn needs_sm90(self) -> bool {
        matches!(
            self,
            Self::Fa2Wg
                | Self::Fa2Wg2
                | Self::Fa2Wg3
                | Self::Fa2Wg3E
                | Self::Fa2Wg4
                | Self::Fa2Wg4E
                | Self::Fa2Wg3S
        )
    }

    /// Whether this kernel takes inputs of `dtype` with head dim `d` and sequence length `t`
    /// (16-byte aligned rows): tc and the fa2 family take bf16, tf32x3 f32, all with D = 64
    /// (fa2v3, fa2w8v3, fa2w8v4, fa2w8v5 and the fa2wg kernels with T <= 512; the fa2wg kernels
    /// on sm_90 only, which the launch checks);
    /// simt (and auto) everything.
    pub fn fits(self, dtype: DType, d: usize, t: usize) -> bool {
        use AttentionKernel::*;
        let t_ok = self.max_seq_len().is_none_or(|m| t <= m);
        match self {
            Auto | Simt => true,
            Tc | Fa2 | Fa2V2 | Fa2Q128 | Fa2W8 | Fa2V3 | Fa2W8V3 | Fa2W8V4 | Fa2W8V5 | Fa2Wg
            | Fa2Wg2 | Fa2Wg3 | Fa2Wg3E | Fa2Wg4 | Fa2Wg4E | Fa2Wg3S => {
                dtype == DType::BF16 && d == 64 && t_ok
            }
            Tf32x3 => dtype == DType::F32 && d == 64,
        }
    }
}

impl std::str::FromStr for AttentionKernel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "simt" => Ok(Self::Simt),
            "tc" => Ok(Self::Tc),
            "fa2" => Ok(Self::Fa2),
            "fa2v2" => Ok(Self::Fa2V2),
            "fa2q128" => Ok(Self::Fa2Q128),
            "fa2w8" => Ok(Self::Fa2W8),
            "fa2v3" => Ok(Self::Fa2V3),
            "fa2w8v3" => Ok(Self::Fa2W8V3),
            "fa2w8v4" => Ok(Self::Fa2W8V4),
            "fa2w8v5" => Ok(Self::Fa2W8V5),
            "fa2wg" => Ok(Self::Fa2Wg),
            "fa2wg2" => Ok(Self::Fa2Wg2),
            "fa2wg3" => Ok(Self::Fa2Wg3),
            "fa2wg3e" => Ok(Self::Fa2Wg3E),
            "fa2wg4" => Ok(Self::Fa2Wg4),
            "fa2wg4e" => Ok(Self::Fa2Wg4E),
            "fa2wg3s" => Ok(Self::Fa2Wg3S),
            "tf32x3" => Ok(Self::Tf32x3),
            o => Err(format!(
                "attention kernel `{o}`: expected auto, simt, tc, fa2, fa2v2, fa2q128, fa2w8, fa2v3, fa2w8v3, fa2w8v4, fa2w8v5, fa2wg, fa2wg2, fa2wg3, fa2wg3e, fa2wg4, fa2wg4e, fa2wg3s or tf32x3"
            )),
        }
    }
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Simt => "simt",
            Self::Tc => "tc",
            Self::Fa2 => "fa2",
            Self::Fa2V2 => "fa2v2",
            Self::Fa2Q128 => "fa2q128",
            Self::Fa2W8 => "fa2w8",
            Self::Fa2V3 => "fa2v3",
            Self::Fa2W8V3 => "fa2w8v3",
            Self::Fa2W8V4 => "fa2w8v4",
            Self::Fa2W8V5 => "fa2w8v5",
            Self::Fa2Wg => "fa2wg",
            Self::Fa2Wg2 => "fa2wg2",
            Self::Fa2Wg3 => "fa2wg3",
            Self::Fa2Wg3E => "fa2wg3e",
            Self::Fa2Wg4 => "fa2wg4",
            Self::Fa2Wg4E => "fa2wg4e",
            Self::Fa2Wg3S => "fa2wg3s",
            Self::Tf32x3 => "tf32x3",
        })
    }
}

/// The CUDA attention kernel that runs for head dim `d` and sequence length `t`. An explicit
/// choice must fit the inputs (an error otherwise); `Auto` takes `env` (the value of
/// `MSLT_ATTENTION`) where it fits, else the default. With D = 64 and 16-byte aligned rows that
/// is, for bf16, `Fa2V3` below T = 256, `Fa2W8V3` from 256 to 512 and `Fa2W8` beyond (on the
/// H100, run 8, all in one run: at T = 128 fa2v3 took 7-11% less time than fa2v2, the previous
/// default, and 1-5% less than fa2w8v3; at T = 256 and 512 fa2w8v3 took 6-20% less than fa2w8,
/// the previous default, and 1-8% less than fa2v3), and `Tf32x3` for f32; else the CUDA-core
/// kernel.
pub fn resolve_attention_kernel(
    want: AttentionKernel,
    env: Option<&str>,
    dtype: DType,
    d: usize,
    t: usize,
    aligned: bool,
) -> Result<AttentionKernel> {
    use AttentionKernel::*;
    // the tensor-core kernels load 16-byte vectors; simt has no alignment need
    let fits = |k: AttentionKernel| k.fits(dtype, d, t) && (aligned || matches!(k, Auto | Simt));
    let bf16: &[AttentionKernel] = if t >= 256 {
        &[Fa2W8V3, Fa2W8]
    } else {
        &[Fa2V3, Fa2V2]
    };
    let default = bf16
        .iter()
        .copied()
        .chain([Tf32x3])
        .find(|&k| fits(k))
        .unwrap_or(Simt);
    match (want, env) {
        (Auto, None) => Ok(default),
        (Auto, Some(v)) => {
            let k = v
                .parse::<AttentionKernel>()
                .map_err(|e| input_err("attention", format!("MSLT_ATTENTION: {e}")))?;
            Ok(if k != Auto && fits(k) { k } else { default })
        }
        (k, _) if fits(k) => Ok(k),
        (k, _) => Err(input_err(
            "attention",
            format!(
                "the {k} kernel does not fit these inputs ({dtype:?}, head dim {d}, T = {t}, rows {}16-byte aligned): tc, the fa2 kernels (fa2, fa2v2, fa2q128, fa2w8, fa2v3, fa2w8v3, fa2w8v4, fa2w8v5, fa2wg, fa2wg2, fa2wg3, fa2wg3e, fa2wg4, fa2wg4e, fa2wg3s) take bf16, tf32x3 takes f32, all with 64-wide heads; fa2v3, fa2w8v3, fa2w8v4, fa2w8v5 and fa2wg* take T <= 512",
                if aligned { "" } else { "not " }
            ),
        )),
    }
}

/// Dropout on the attention probabilities inside the kernel: drop probability `p` in [0, 1),
/// mask drawn from `seed` by [`crate::philox`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDropout {
    pub p: f64,
    pub seed: u64,
}

/// Fused self-attention from a Q|K|V projection: (qkv (B, T, 3C), mask (B, T) f32) -> (B, T, C).
pub struct Attention {
    pub heads: usize,
    pub kernel: AttentionKernel,
    pub dropout: Option<AttnDropout>,
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "mslt-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = "attention";
        let (b, t, c3) = l1.shape().dims3()?;
        let d = c3 / 3 / self.heads;
        let mask = cpu_slice::<f32>(k, s2, l2)?;
        let dims = (b, t, self.heads, d);
        let drop = self.dropout.map(|dr| (dr.p, dr.seed));
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(cpu::attention(
                cpu_slice::<f32>(k, s1, l1)?,
                mask,
                dims,
                drop,
            )),
            DType::BF16 => CpuStorage::BF16(cpu::attention(
                cpu_slice::<half::bf16>(k, s1, l1)?,
                mask,
                dims,
                drop,
            )),
            d => return Err(input_err(k, format!("dtype {d:?}: expected f32 or bf16"))),
        };
        Ok((out, Shape::from((b, t, c3 / 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention(self, (s1, l1), (s2, l2))
    }
}

fn check_dtype(kernel: &'static str, t: &Tensor, want: Option<DType>) -> Result<()> {
    if t.track_op() {
        // These ops record no backward: refusing a tracked input keeps a gradient from being
        // silently cut.
        return Err(input_err(
            kernel,
            "an input is tracked by autograd; the fused kernels are forward-only (frozen layers)"
                .into(),
        ));
    }
    let d = t.dtype();
    if !matches!(d, DType::F32 | DType::BF16) {
        return Err(input_err(
            kernel,
            format!("dtype {d:?}: expected f32 or bf16"),
        ));
    }
    if let Some(w) = want {
        if d != w {
            return Err(input_err(kernel, format!("mixed dtypes: {d:?} and {w:?}")));
        }
    }
    Ok(())
}

/// `LN(x + res) * gamma + beta` over the last dim; x, res (..., C); wb (2, C) = [gamma; beta],
/// all of one dtype (f32 or bf16). Forward only.
pub fn add_layer_norm(x: &Tensor, res: Option<&Tensor>, wb: &Tensor, eps: f64) -> Result<Tensor> {
    let k = "add_layer_norm";
    check_dtype(k, x, None)?;
    check_dtype(k, wb, Some(x.dtype()))?;
    let c = *x
        .dims()
        .last()
        .ok_or_else(|| input_err(k, "x is a scalar".into()))?;
    if wb.dims() != [2, c] {
        return Err(input_err(
            k,
            format!("wb has shape {:?}, expected [2, {c}]", wb.dims()),
        ));
    }
    if let Some(r) = res {
        check_dtype(k, r, Some(x.dtype()))?;
        if r.dims() != x.dims() {
            return Err(input_err(
                k,
                format!("residual shape {:?} != x shape {:?}", r.dims(), x.dims()),
            ));
        }
    }
    let x = x.contiguous()?;
    let r = match res {
        Some(r) => r.contiguous()?,
        None => x.clone(),
    };
    x.apply_op3_no_bwd(
        &r,
        &wb.contiguous()?,
        &AddLayerNorm {
            eps: eps as f32,
            has_res: res.is_some(),
        },
    )
}

/// `gelu_erf(x + bias)`; x (..., C), bias (C,), one dtype. Forward only.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let k = "bias_gelu";
    check_dtype(k, x, None)?;
    check_dtype(k, bias, Some(x.dtype()))?;
    let c = *x
        .dims()
        .last()
        .ok_or_else(|| input_err(k, "x is a scalar".into()))?;
    if bias.dims() != [c] {
        return Err(input_err(
            k,
            format!("bias has shape {:?}, expected [{c}]", bias.dims()),
        ));
    }
    x.contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu)
}

/// Multi-head self-attention from a fused projection: qkv (B, T, 3C) f32/bf16 with Q | K | V
/// column blocks (heads contiguous inside each), mask (B, T) f32 additive -> (B, T, C).
/// Scale 1/sqrt(C / heads). Head dims 32, 64, 128. Forward only.
pub fn attention(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
    attention_with(qkv, mask, heads, AttentionKernel::Auto)
}

/// [`attention`] with a chosen CUDA kernel (for checks and A/B timings). An explicit `Tc` or
/// `Fa2` on inputs it does not support (not bf16, head dim not 64) is an error on CUDA.
pub fn attention_with(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    attention_op(qkv, mask, heads, kernel, None)
}

/// [`attention`] with dropout `p` on the probabilities, drawn from `seed` inside the kernel
/// ([`crate::philox`]; BERT's attention-probability dropout in train mode). On CUDA the kernel
/// must have a dropout variant ([`AttentionKernel::has_dropout`]: the defaults for 64-wide
/// heads in f32 and bf16), else this is an error; see [`attention_dropout_fits`].
pub fn attention_dropout(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    p: f64,
    seed: u64,
) -> Result<Tensor> {
    attention_dropout_with(qkv, mask, heads, AttentionKernel::Auto, p, seed)
}

/// [`attention_dropout`] with a chosen CUDA kernel.
pub fn attention_dropout_with(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    kernel: AttentionKernel,
    p: f64,
    seed: u64,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(input_err(
            "attention",
            format!("dropout probability {p}: expected 0 <= p < 1"),
        ));
    }
    attention_op(qkv, mask, heads, kernel, Some(AttnDropout { p, seed }))
}

/// `MSLT_ATTENTION`, read once per process: the kernel choice runs in every frozen layer's
/// forward, and the launch and [`attention_dropout_fits`] must see the same value.
pub(crate) fn attention_env() -> Option<&'static str> {
    static ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| std::env::var("MSLT_ATTENTION").ok())
        .as_deref()
}

/// Whether a tensor laid out as `l` starts on a 16-byte boundary (the tensor-core kernels load
/// 16-byte vectors).
pub(crate) fn aligned16(l: &Layout, elem_size: usize) -> bool {
    (l.start_offset() * elem_size) & 15 == 0
}

/// Whether [`attention_dropout`] runs for `qkv` (B, T, 3C) with `heads` heads: always on the
/// CPU; on CUDA when the kernel `MSLT_ATTENTION` (or the default) picks has a dropout variant,
/// decided as the launch decides it.
pub fn attention_dropout_fits(qkv: &Tensor, heads: usize) -> bool {
    let Ok((_, t, c3)) = qkv.dims3() else {
        return false;
    };
    if heads == 0 || c3 % (3 * heads) != 0 {
        return false;
    }
    if !qkv.device().is_cuda() {
        return true;
    }
    // the op launches on `qkv.contiguous()`: the tensor itself, or a fresh copy at offset 0
    let aligned = !qkv.is_contiguous() || aligned16(qkv.layout(), qkv.dtype().size_in_bytes());
    resolve_attention_kernel(
        AttentionKernel::Auto,
        attention_env(),
        qkv.dtype(),
        c3 / 3 / heads,
        t,
        aligned,
    )
    .is_ok_and(|k| k.has_dropout())
}

fn attention_op(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    kernel: AttentionKernel,
    dropout: Option<AttnDropout>,
) -> Result<Tensor> {
    let k = "attention";
    check_dtype(k, qkv, None)?;
    let (b, t, c3) = qkv.dims3().map_err(|_| {
        input_err(
            k,
            format!("qkv has shape {:?}, expected (B, T, 3C)", qkv.dims()),
        )
    })?;
    if heads == 0 || c3 % (3 * heads) != 0 {
        return Err(input_err(
            k,
            format!("qkv width {c3} is not 3 x heads ({heads}) x head dim"),
        ));
    }
    let d = c3 / 3 / heads;
    if !supported_head_dim(d) {
        return Err(input_err(
            k,
            format!("head dim {d}: the kernel is built for 32, 64, 128"),
        ));
    }
    check_dtype(k, mask, Some(DType::F32))?;
    if mask.dims() != [b, t] {
        return Err(input_err(
            k,
            format!(
                "mask is {:?} {:?}, expected f32 [{b}, {t}]",
                mask.dtype(),
                mask.dims()
            ),
        ));
    }
    qkv.contiguous()?.apply_op2_no_bwd(
        &mask.contiguous()?,
        &Attention {
            heads,
            kernel,
            dropout,
        },
    )
}

/// Fused AdamW update of one f32 tensor: (p, g, mv) -> (3, n) = [p, m, v after the step], where
/// mv is (2, n) = [m; v]. One launch on CUDA (kernels-cu/optim.cu); the CPU side is
/// [`cpu::adamw_step`], bit for bit the same arithmetic.
pub struct AdamWStep(pub cpu::AdamWScalars);

impl CustomOp3 for AdamWStep {
    fn name(&self) -> &'static str {
        "mslt-adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = "adamw_step";
        let (p, g, mv) = (
            cpu_slice::<f32>(k, s1, l1)?,
            cpu_slice::<f32>(k, s2, l2)?,
            cpu_slice::<f32>(k, s3, l3)?,
        );
        let out = cpu::adamw_step(p, g, mv, &self.0);
        Ok((CpuStorage::F32(out), Shape::from((3, p.len()))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::adamw_step(&self.0, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// One AdamW update: p, g (any shape, n elements, f32), mv (2, n) f32 = [m; v] -> (3, n) f32 =
/// [p; m; v] after the step. Forward only, untracked inputs (an optimizer step).
pub fn adamw_step(p: &Tensor, g: &Tensor, mv: &Tensor, k: cpu::AdamWScalars) -> Result<Tensor> {
    let name = "adamw_step";
    let n = p.elem_count();
    for (what, t, want) in [("p", p, vec![n]), ("g", g, vec![n]), ("mv", mv, vec![2, n])] {
        if t.dtype() != DType::F32 {
            return Err(input_err(
                name,
                format!("{what} has dtype {:?}, expected f32", t.dtype()),
            ));
        }
        if t.elem_count() != want.iter().product::<usize>() {
            return Err(input_err(
                name,
                format!("{what} has shape {:?}, expected {want:?}", t.dims()),
            ));
        }
        if t.track_op() {
            return Err(input_err(
                name,
                format!("{what} is tracked by autograd; an optimizer step takes plain tensors"),
            ));
        }
    }
    if n == 0 {
        return Tensor::zeros((3, 0), DType::F32, p.device());
    }
    let flat = |t: &Tensor| t.flatten_all()?.contiguous();
    flat(p)?.apply_op3_no_bwd(&flat(g)?, &flat(mv)?, &AdamWStep(k))
}
