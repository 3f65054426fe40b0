//! NVRTC compilation (once per source and architecture, cached), module loading (once per
//! device, through Candle's custom-module cache) and the launches of the fused kernels.

use crate::ops::{aligned16, span, AddLayerNorm, Attention, AttentionKernel};
use crate::{KernelError, Source, ATTENTION, BIAS_GELU, LAYER_NORM};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// PTX per (file, arch). Shared (`Arc`), not copied: every launch looks its function up through
/// here, and attention.cu's PTX is over 1 MB, so a copy per launch cost about 170 us of host time
/// per attention call (GPU run 7, where it set a floor under every attention timing).
static PTX: OnceLock<Mutex<PtxCache>> = OnceLock::new();
/// (source file, NVRTC target) -> PTX
type PtxCache = HashMap<(&'static str, String), Arc<str>>;

/// CUDA include directories to hand NVRTC (the sources need none; kept for user edits).
fn include_paths() -> Vec<String> {
    let mut v = Vec::new();
    for d in [
        std::env::var("CUDA_ROOT")
            .ok()
            .map(|r| format!("{r}/include")),
        Some("/usr/local/cuda/include".to_string()),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&d).is_dir() {
            v.push(d);
        }
    }
    v
}

/// The architecture of `dev`, as NVRTC's `--gpu-architecture` wants it (e.g. `sm_90`).
pub fn arch(dev: &CudaDevice) -> Result<String> {
    let (major, minor) = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(|e| KernelError::Cuda {
            kernel: "(device query)".into(),
            what: format!("compute capability: {e}"),
        })?;
    Ok(format!("sm_{major}{minor}"))
}

/// Compiles `src` for `arch` with NVRTC (cached per process).
pub fn ptx(src: &Source, arch: &str) -> std::result::Result<Arc<str>, KernelError> {
    let cache = PTX.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (src.file, arch.to_string());
    if let Some(p) = cache.lock().expect("ptx cache").get(&key) {
        return Ok(Arc::clone(p));
    }
    let options = vec![format!("--gpu-architecture={arch}")];
    let opts = CompileOptions {
        options: options.clone(),
        include_paths: include_paths(),
        name: Some(src.file.to_string()),
        ..Default::default()
    };
    let p = compile_ptx_with_opts(src.code, opts)
        .map_err(|e| KernelError::Compile {
            kernel: src.file.to_string(),
            options,
            log: format!("{e:?}"),
        })?
        .to_src();
    let p: Arc<str> = p.into();
    cache.lock().expect("ptx cache").insert(key, Arc::clone(&p));
    Ok(p)
}

/// The NVRTC target for `src` on `dev`: the device's architecture, or `sm_90a` on an sm_90
/// device for a source with [`Source::sm90a`].
fn target(dev: &CudaDevice, src: &Source) -> Result<String> {
    let a = arch(dev)?;
    Ok(if src.sm90a && a == "sm_90" {
        "sm_90a".to_string()
    } else {
        a
    })
}

fn func(dev: &CudaDevice, src: &Source, entry: &str) -> Result<CudaFunction> {
    let p = ptx(src, &target(dev, src)?)?;
    dev.get_or_load_custom_func(entry, src.module, &p)
        .map(|f| f.into_cuda_function())
        .map_err(|e| {
            KernelError::Cuda {
                kernel: entry.to_string(),
                what: format!("loading the module: {e}"),
            }
            .into()
        })
}

fn view<'a, T: CudaDType>(
    kernel: &'static str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let (a, b) = span(kernel, l)?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Whether a contiguous layout starts on a 16-byte boundary (allocations are 256-byte aligned).
fn launch_err(entry: &str, e: impl std::fmt::Display) -> candle_core::Error {
    KernelError::Cuda {
        kernel: entry.to_string(),
        what: format!("launch: {e}"),
    }
    .into()
}

fn i32_of(kernel: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        KernelError::Input {
            kernel,
            what: format!("{what} = {v} does not fit the kernel's i32"),
        }
        .into()
    })
}

fn dtype_suffix(kernel: &'static str, d: DType) -> Result<&'static str> {
    match d {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => Err(KernelError::Input {
            kernel,
            what: format!("dtype {d:?}: expected f32 or bf16"),
        }
        .into()),
    }
}

fn wrap<T: CudaDType + DeviceRepr>(out: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

/// Allocates a fresh output of `$n` elements of `$dtype` (f32, else bf16: the callers have
/// checked it), runs `$launch::<T>(args.., &mut out)` into it and wraps it as Candle storage.
macro_rules! fresh_output {
    ($dev:expr, $dtype:expr, $n:expr, $launch:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => {
                // SAFETY: each launch function writes every element of `out` (see its comment).
                let mut out = unsafe { $dev.alloc::<f32>($n)? };
                $launch::<f32>($($arg,)* &mut out)?;
                wrap(out, &$dev)
            }
            _ => {
                // SAFETY: as above.
                let mut out = unsafe { $dev.alloc::<half::bf16>($n)? };
                $launch::<half::bf16>($($arg,)* &mut out)?;
                wrap(out, &$dev)
            }
        }
    };
}

pub fn add_layer_norm(
    op: &AddLayerNorm,
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    wb: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    dtype_suffix("add_layer_norm", x.0.dtype())?;
    let dev = x.0.device().clone();
    let n = x.1.shape().elem_count();
    let s = fresh_output!(dev, x.0.dtype(), n, launch_add_layer_norm(op, x, r, wb));
    Ok((s, x.1.shape().clone()))
}

/// Launches `add_layer_norm_{f32,bf16}` writing every element of `out` (one warp per row, all
/// C; `out` has at least as many elements as x).
fn launch_add_layer_norm<T: CudaDType + DeviceRepr>(
    op: &AddLayerNorm,
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    wb: (&CudaStorage, &Layout),
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "add_layer_norm";
    let dev = x.0.device();
    let c = *x.1.dims().last().expect("rank checked");
    let n = x.1.shape().elem_count();
    let rows = n / c;
    let entry = format!("{K}_{}", dtype_suffix(K, x.0.dtype())?);
    let f = func(dev, &LAYER_NORM, &entry)?;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1), // 8 warps = 8 rows per block
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows_i, c_i, has) = (
        i32_of(K, "rows", rows)?,
        i32_of(K, "C", c)?,
        op.has_res as i32,
    );
    let es = x.0.dtype().size_in_bytes();
    let vec = ((c * es) & 15 == 0 && c <= 1024 && [x.1, r.1, wb.1].iter().all(|l| aligned16(l, es)))
        as i32;
    let (xv, rv, wv) = (
        view::<T>(K, x.0, x.1)?,
        view::<T>(K, r.0, r.1)?,
        view::<T>(K, wb.0, wb.1)?,
    );
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&xv);
    b.arg(&rv);
    b.arg(&wv);
    b.arg(out);
    b.arg(&rows_i);
    b.arg(&c_i);
    b.arg(&op.eps);
    b.arg(&has);
    b.arg(&vec);
    // SAFETY: argument types and order match `add_layer_norm_*` in layer_norm.cu; `out` holds
    // rows x C elements (checked by the callers).
    unsafe { b.launch(cfg) }.map_err(|e| launch_err(&entry, e))?;
    Ok(())
}

pub fn bias_gelu(
    x: (&CudaStorage, &Layout),
    bias: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    dtype_suffix("bias_gelu", x.0.dtype())?;
    let dev = x.0.device().clone();
    let n = x.1.shape().elem_count();
    let s = fresh_output!(dev, x.0.dtype(), n, launch_bias_gelu(x, bias));
    Ok((s, x.1.shape().clone()))
}

/// Launches `bias_gelu_{f32,bf16}` writing every element of `out` (all rows x C, by row or by
/// 16-byte group; `out` has at least as many elements as x).
fn launch_bias_gelu<T: CudaDType + DeviceRepr>(
    x: (&CudaStorage, &Layout),
    bias: (&CudaStorage, &Layout),
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "bias_gelu";
    let dev = x.0.device();
    let c = *x.1.dims().last().expect("rank checked");
    let n = x.1.shape().elem_count();
    let rows = n / c;
    let entry = format!("{K}_{}", dtype_suffix(K, x.0.dtype())?);
    let f = func(dev, &BIAS_GELU, &entry)?;
    let es = x.0.dtype().size_in_bytes();
    let vec = (c * es) & 15 == 0 && n < (1 << 32) && aligned16(x.1, es) && aligned16(bias.1, es);
    let cfg = if vec {
        // grid-stride over 16-byte groups: enough blocks to fill the GPU, no more
        let groups = n * es / 16;
        LaunchConfig {
            grid_dim: (groups.div_ceil(256).min(132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    } else {
        LaunchConfig {
            grid_dim: (i32_of(K, "rows", rows)? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    };
    let (rows_i, c_i, vec_i) = (i32_of(K, "rows", rows)?, i32_of(K, "C", c)?, vec as i32);
    // read once per process: this runs in every frozen layer's forward
    static UNROLL: OnceLock<std::result::Result<bool, String>> = OnceLock::new();
    let unroll = match UNROLL
        .get_or_init(|| crate::ops::gelu_unroll(std::env::var("MSLT_GELU").ok().as_deref()))
    {
        Ok(u) => *u as i32,
        Err(what) => {
            let what = what.clone();
            return Err(KernelError::Input { kernel: K, what }.into());
        }
    };
    let (xv, bv) = (view::<T>(K, x.0, x.1)?, view::<T>(K, bias.0, bias.1)?);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&xv);
    b.arg(&bv);
    b.arg(out);
    b.arg(&rows_i);
    b.arg(&c_i);
    b.arg(&vec_i);
    b.arg(&unroll);
    // SAFETY: argument types and order match `bias_gelu_*` in bias_gelu.cu; `out` holds rows x C
    // elements (checked by the callers).
    unsafe { b.launch(cfg) }.map_err(|e| launch_err(&entry, e))?;
    Ok(())
}

/// `adamw_step_f32` (kernels-cu/optim.cu): p, g (n), mv (2n) -> a fresh (3, n) output, every
/// element written by the grid-stride loop.
pub fn adamw_step(
    k: &crate::cpu::AdamWScalars,
    p: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    mv: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const K: &str = "adamw_step";
    let entry = "adamw_step_f32";
    let dev = p.0.device().clone();
    let n = p.1.shape().elem_count();
    let (pv, gv, mvv) = (
        view::<f32>(K, p.0, p.1)?,
        view::<f32>(K, g.0, g.1)?,
        view::<f32>(K, mv.0, mv.1)?,
    );
    if gv.len() != n || mvv.len() != 2 * n {
        return Err(KernelError::Input {
            kernel: K,
            what: format!(
                "p {n}, g {}, mv {} elements: expected n, n, 2n",
                gv.len(),
                mvv.len()
            ),
        }
        .into());
    }
    let f = func(&dev, &crate::OPTIM, entry)?;
    // SAFETY: the kernel writes all 3n elements (grid-stride loop over i < n, three stores each).
    let mut out = unsafe { dev.alloc::<f32>(3 * n)? };
    if n > 0 {
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(132 * 8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n64 = n as u64;
        let decay_on = k.decay.is_some() as i32;
        let decay = k.decay.unwrap_or(1.0);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&pv);
        b.arg(&gv);
        b.arg(&mvv);
        b.arg(&mut out);
        b.arg(&n64);
        b.arg(&decay_on);
        b.arg(&decay);
        b.arg(&k.one_minus_beta1);
        b.arg(&k.beta2);
        b.arg(&k.one_minus_beta2);
        b.arg(&k.inv_bc2_sqrt);
        b.arg(&k.eps);
        b.arg(&k.step_size);
        // SAFETY: argument types and order match `adamw_step_f32` in optim.cu; the views hold
        // n, n and 2n elements and `out` 3n (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| launch_err(entry, e))?;
    }
    Ok((wrap(out, &dev), Shape::from((3, n))))
}

/// The CUDA storage and layout behind a tensor (a read guard), or an error naming `kernel`.
fn cuda_storage<'a>(
    kernel: &'static str,
    t: &'a Tensor,
) -> Result<(candle_core::StorageRef<'a>, &'a Layout)> {
    let (s, l) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cuda(_)) {
        return Err(KernelError::Input {
            kernel,
            what: "the tensor is not on a CUDA device".into(),
        }
        .into());
    }
    Ok((s, l))
}

fn as_cuda(s: &Storage) -> &CudaStorage {
    match s {
        Storage::Cuda(c) => c,
        _ => unreachable!("checked by cuda_storage"),
    }
}

/// Checks that `out` can take `x`'s elements of type `T`, and that `others` and `out` are on
/// x's CUDA device.
fn check_out<T: WithDType + DeviceRepr>(
    kernel: &'static str,
    x: &Tensor,
    others: &[&Tensor],
    out: &CudaSlice<T>,
) -> Result<()> {
    let err = |what: String| -> candle_core::Error { KernelError::Input { kernel, what }.into() };
    if x.dtype() != T::DTYPE || out.len() < x.elem_count() {
        return Err(err(format!(
            "output buffer of {} {:?} for an input of {} {:?}",
            out.len(),
            T::DTYPE,
            x.elem_count(),
            x.dtype()
        )));
    }
    let candle_core::Device::Cuda(cd) = x.device() else {
        return Err(err("the tensor is not on a CUDA device".into()));
    };
    let ordinal = cd.cuda_stream().context().ordinal();
    if others.iter().any(|t| !t.device().same_device(x.device())) || out.ordinal() != ordinal {
        return Err(err(format!(
            "inputs and output buffer on different devices (x on cuda:{ordinal}, output on cuda:{})",
            out.ordinal()
        )));
    }
    Ok(())
}

/// Timing aid for `kernels bench`: the fused add + LayerNorm of contiguous `x`, `res`, `wb`
/// written into `out`, a buffer the caller allocated once. The time is the kernel's alone,
/// without the allocation of a fresh output that the custom op makes at each call (PyTorch's
/// `y.copy_(x)`, the copy-bandwidth reference, writes a preallocated `y` too).
pub fn add_layer_norm_into<T: CudaDType + DeviceRepr + WithDType>(
    x: &Tensor,
    res: &Tensor,
    wb: &Tensor,
    eps: f32,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "add_layer_norm";
    check_out(K, x, &[res, wb], out)?;
    let c = x.dims().last().copied().unwrap_or(0);
    if res.dims() != x.dims() || wb.dims() != [2, c] || c == 0 {
        return Err(KernelError::Input {
            kernel: K,
            what: format!(
                "x {:?}, res {:?}, wb {:?}: expected res of x's shape and wb [2, C]",
                x.dims(),
                res.dims(),
                wb.dims()
            ),
        }
        .into());
    }
    let ((xs, xl), (rs, rl), (ws, wl)) = (
        cuda_storage(K, x)?,
        cuda_storage(K, res)?,
        cuda_storage(K, wb)?,
    );
    let op = AddLayerNorm { eps, has_res: true };
    launch_add_layer_norm(
        &op,
        (as_cuda(&xs), xl),
        (as_cuda(&rs), rl),
        (as_cuda(&ws), wl),
        out,
    )
}

/// Timing aid for `kernels bench`: the fused bias + GELU of contiguous `x`, `bias` written into
/// `out`, a buffer the caller allocated once (see [`add_layer_norm_into`]).
pub fn bias_gelu_into<T: CudaDType + DeviceRepr + WithDType>(
    x: &Tensor,
    bias: &Tensor,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "bias_gelu";
    check_out(K, x, &[bias], out)?;
    let c = x.dims().last().copied().unwrap_or(0);
    if bias.dims() != [c] || c == 0 {
        return Err(KernelError::Input {
            kernel: K,
            what: format!(
                "x {:?}, bias {:?}: expected bias [C]",
                x.dims(),
                bias.dims()
            ),
        }
        .into());
    }
    let ((xs, xl), (bs, bl)) = (cuda_storage(K, x)?, cuda_storage(K, bias)?);
    launch_bias_gelu((as_cuda(&xs), xl), (as_cuda(&bs), bl), out)
}

/// Timing aid for `kernels bench`: a device-to-device copy of contiguous `x` into `out`
/// (`cuMemcpyDtoDAsync`, what PyTorch's `y.copy_(x)` runs): the card's copy bandwidth without
/// Candle's allocation of the destination.
pub fn copy_into<T: CudaDType + DeviceRepr + WithDType>(
    x: &Tensor,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "copy";
    check_out(K, x, &[], out)?;
    let (xs, xl) = cuda_storage(K, x)?;
    let xs = as_cuda(&xs);
    let src = view::<T>(K, xs, xl)?;
    xs.device()
        .cuda_stream()
        .memcpy_dtod(&src, out)
        .map_err(|e| launch_err("copy (cuMemcpyDtoDAsync)", e))
}

pub fn attention(
    op: &Attention,
    qkv: (&CudaStorage, &Layout),
    mask: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = qkv.0.device().clone();
    let (b, t, c3) = qkv.1.shape().dims3()?;
    let s = fresh_output!(
        dev,
        qkv.0.dtype(),
        b * t * c3 / 3,
        launch_attention(op, qkv, mask)
    );
    Ok((s, Shape::from((b, t, c3 / 3))))
}

/// Launches the attention kernel `op` resolves to, writing every (b, query, column) of `out`
/// (T covered by the grid; `out` holds B x T x C elements).
fn launch_attention<T: CudaDType + DeviceRepr>(
    op: &Attention,
    qkv: (&CudaStorage, &Layout),
    mask: (&CudaStorage, &Layout),
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const K: &str = "attention";
    let dev = qkv.0.device();
    let (b, t, c3) = qkv.1.shape().dims3()?;
    let d = c3 / 3 / op.heads;
    let kind = crate::ops::resolve_attention_kernel(
        op.kernel,
        crate::ops::attention_env(),
        qkv.0.dtype(),
        d,
        t,
        aligned16(qkv.1, qkv.0.dtype().size_in_bytes()),
    )?;
    let drop_entry = |base: &str| -> Result<String> {
        match op.dropout {
            None => Ok(base.to_string()),
            Some(_) if kind.has_dropout() => Ok(format!("{base}_dropout")),
            Some(_) => Err(KernelError::Input {
                kernel: K,
                what: format!(
                    "dropout on the probabilities runs in the fa2v2, fa2w8, fa2v3, fa2w8v3, fa2w8v4, fa2w8v5, fa2wg, fa2wg2, fa2wg3, fa2wg3e, fa2wg4, fa2wg4e, fa2wg3s and tf32x3 kernels (64-wide heads, bf16 / f32); the {kind} kernel has none"
                ),
            }
            .into()),
        }
    };
    let entry = match kind {
        AttentionKernel::Fa2V2 => drop_entry("attention_fwd_bf16_d64_fa2_v2")?,
        AttentionKernel::Fa2W8 => drop_entry("attention_fwd_bf16_d64_fa2_w8")?,
        AttentionKernel::Fa2V3 => drop_entry("attention_fwd_bf16_d64_fa2_v3")?,
        AttentionKernel::Fa2W8V3 => drop_entry("attention_fwd_bf16_d64_fa2_w8v3")?,
        AttentionKernel::Fa2W8V4 => drop_entry("attention_fwd_bf16_d64_fa2_w8v4")?,
        AttentionKernel::Fa2W8V5 => drop_entry("attention_fwd_bf16_d64_fa2_w8v5")?,
        AttentionKernel::Fa2Wg
        | AttentionKernel::Fa2Wg2
        | AttentionKernel::Fa2Wg3
        | AttentionKernel::Fa2Wg3E
        | AttentionKernel::Fa2Wg4
        | AttentionKernel::Fa2Wg4E
        | AttentionKernel::Fa2Wg3S => {
            let a = arch(dev)?;
            if a != "sm_90" {
                return Err(KernelError::Input {
                    kernel: K,
                    what: format!(
                        "the {kind} kernel uses Hopper's wgmma and runs on sm_90 GPUs only; this device is {a}"
                    ),
                }
                .into());
            }
            drop_entry(match kind {
                AttentionKernel::Fa2Wg => "attention_fwd_bf16_d64_fa2_wg",
                AttentionKernel::Fa2Wg2 => "attention_fwd_bf16_d64_fa2_wg2",
                AttentionKernel::Fa2Wg3 => "attention_fwd_bf16_d64_fa2_wg3",
                AttentionKernel::Fa2Wg3S => "attention_fwd_bf16_d64_fa2_wg3s",
                AttentionKernel::Fa2Wg3E => "attention_fwd_bf16_d64_fa2_wg3e",
                AttentionKernel::Fa2Wg4E => "attention_fwd_bf16_d64_fa2_wg4e",
                _ => "attention_fwd_bf16_d64_fa2_wg4",
            })?
        }
        AttentionKernel::Tf32x3 => drop_entry("attention_fwd_f32_d64_tf32x3")?,
        _ if op.dropout.is_some() => drop_entry("")?,
        AttentionKernel::Tc => "attention_fwd_bf16_d64_tc".to_string(),
        AttentionKernel::Fa2 => "attention_fwd_bf16_d64_fa2".to_string(),
        AttentionKernel::Fa2Q128 => "attention_fwd_bf16_d64_fa2_q128".to_string(),
        _ => format!("attention_fwd_{}_d{d}", dtype_suffix(K, qkv.0.dtype())?),
    };
    let f = func(dev, &ATTENTION, &entry)?;
    let dyn_smem = kind.dynamic_shared_bytes();
    if dyn_smem > 0 {
        // fa2wg3e / fa2wg4e: the Q tile in dynamic shared memory. A block may hold 48 KB of
        // shared memory, static and dynamic together, unless its function opts in to more
        // (fa2wg3e: 37 KB static + 16 KB). Set before every launch: one cheap driver call.
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            dyn_smem as i32,
        )
        .map_err(|e| launch_err(&entry, format!("setting its dynamic shared memory: {e}")))?;
    }
    // (warps per block, query rows per warp), as each entry point's launch comment says
    let (warps, rows_per_warp) = match kind {
        AttentionKernel::Fa2Q128 => (4, 32),
        AttentionKernel::Fa2W8
        | AttentionKernel::Fa2W8V3
        | AttentionKernel::Fa2W8V4
        | AttentionKernel::Fa2W8V5
        | AttentionKernel::Fa2Wg3
        | AttentionKernel::Fa2Wg3E
        | AttentionKernel::Fa2Wg3S => (8, 16),
        AttentionKernel::Tc
        | AttentionKernel::Fa2
        | AttentionKernel::Fa2V2
        | AttentionKernel::Fa2V3
        | AttentionKernel::Fa2Wg
        | AttentionKernel::Fa2Wg2
        | AttentionKernel::Fa2Wg4
        | AttentionKernel::Fa2Wg4E
        | AttentionKernel::Tf32x3 => (4, 16),
        _ if d == 128 => (4, 4),
        _ => (4, 8),
    };
    let bq = warps * rows_per_warp;
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(bq) as u32, op.heads as u32, b as u32),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: dyn_smem as u32,
    };
    debug_assert!(
        dyn_smem == 0 || dyn_smem == bq * 128,
        "the Q tile: 64-wide bf16 rows"
    );
    let (t_i, h_i) = (i32_of(K, "T", t)?, i32_of(K, "heads", op.heads)?);
    if b > 65535 || op.heads > 65535 {
        return Err(KernelError::Input {
            kernel: K,
            what: format!("batch {b} / heads {} beyond the grid limit 65535", op.heads),
        }
        .into());
    }
    let scale = 1.0f32 / (d as f32).sqrt();
    let (qv, mv) = (view::<T>(K, qkv.0, qkv.1)?, view::<f32>(K, mask.0, mask.1)?);
    let stream = dev.cuda_stream();
    let mut bu = stream.launch_builder(&f);
    bu.arg(&qv);
    bu.arg(&mv);
    bu.arg(out);
    bu.arg(&t_i);
    bu.arg(&h_i);
    bu.arg(&scale);
    // the `_dropout` entry points take (seed, keep threshold, 1 / (1 - p)) after `scale`
    let drop_args = op.dropout.map(|dr| {
        (
            dr.seed,
            crate::philox::threshold(dr.p),
            (1.0 / (1.0 - dr.p)) as f32,
        )
    });
    if let Some((seed, thr, keep_scale)) = &drop_args {
        bu.arg(seed);
        bu.arg(thr);
        bu.arg(keep_scale);
    }
    // SAFETY: argument types and order match `attention_fwd_*` in attention.cu.
    unsafe { bu.launch(cfg) }.map_err(|e| launch_err(&entry, e))?;
    Ok(())
}

/// Compiles and loads every kernel on `dev` now (so a compile error surfaces before training).
pub fn warm_up(dev: &CudaDevice) -> Result<()> {
    for src in crate::SOURCES {
        for e in src.entries {
            func(dev, src, e)?;
        }
    }
    Ok(())
}

/// Makes the device's default memory pool keep freed memory (release threshold = u64::MAX)
/// instead of handing it back to the driver at every synchronisation, which is the CUDA default
/// (threshold 0). Candle allocates every tensor with `cuMemAllocAsync` from that pool and the
/// training loop synchronises at least once per step (the loss is read back), so with the default
/// each step maps its activation memory afresh. Keeping it is what PyTorch's caching allocator
/// does. Returns false where the device has no memory pools (nothing changed).
pub fn retain_pool_memory(dev: &CudaDevice) -> Result<bool> {
    set_pool_release_threshold(dev, u64::MAX)
}

fn pool_err(e: &dyn std::fmt::Display) -> candle_core::Error {
    KernelError::Cuda {
        kernel: "(memory pool)".into(),
        what: format!("release threshold: {e}"),
    }
    .into()
}

/// The device's default memory pool (None: the device has no memory pools).
fn default_pool(
    dev: &CudaDevice,
) -> Result<Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool>> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    // SAFETY: `cu_device` comes from a live context.
    let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }
        .map_err(|e| pool_err(&e))?;
    Ok(Some(pool))
}

/// The default memory pool's release threshold in bytes (None: no memory pools).
pub fn pool_release_threshold(dev: &CudaDevice) -> Result<Option<u64>> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Some(pool) = default_pool(dev)? else {
        return Ok(None);
    };
    let mut v: u64 = 0;
    // SAFETY: a valid pool; CU_MEMPOOL_ATTR_RELEASE_THRESHOLD is written as a cuuint64_t.
    unsafe {
        result::mem_pool::get_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut v as *mut u64).cast(),
        )
    }
    .map_err(|e| pool_err(&e))?;
    Ok(Some(v))
}

/// Sets the default memory pool's release threshold (bytes kept across synchronisations).
/// Returns false where the device has no memory pools (nothing changed).
pub fn set_pool_release_threshold(dev: &CudaDevice, bytes: u64) -> Result<bool> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Some(pool) = default_pool(dev)? else {
        return Ok(false);
    };
    let mut threshold: u64 = bytes;
    // SAFETY: a valid pool; CU_MEMPOOL_ATTR_RELEASE_THRESHOLD takes a pointer to a cuuint64_t.
    unsafe {
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .map_err(|e| pool_err(&e))?;
    Ok(true)
}
