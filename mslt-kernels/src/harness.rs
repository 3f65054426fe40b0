//! Checks every fused kernel against its Candle reference on fresh random inputs, and times it
//! beside the plain Candle path the model would otherwise run. Used by `mslt-cli kernels` (and
//! `scripts/gpu-check.sh` on a GPU) and by the CPU tests.

use crate::{ops, reference, AttentionKernel};
use candle_core::{DType, Device, Result, Tensor};
use serde::Serialize;
use std::time::Instant;

/// One comparison of a kernel with its reference.
#[derive(Clone, Debug, Serialize)]
pub struct CheckRow {
    pub kernel: String,
    pub dtype: String,
    pub shape: String,
    /// What it was compared with: the Candle reference on the same device, or the CPU op.
    pub against: String,
    pub max_abs_err: f64,
    pub max_abs_ref: f64,
    /// max |kernel - ref| / max |ref|
    pub rel_err: f64,
    pub tol: f64,
    /// Non-finite outputs (a missed write shows up here or in the error).
    pub nonfinite: usize,
    pub pass: bool,
    /// Where the wrong elements of a failed attention check lie ([`bad_spread`]); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
}

fn dname(d: DType) -> &'static str {
    if d == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

/// Compares `got` with `want` over every element (f32 tolerance 1e-5, bf16 1e-2, relative to
/// max |want|).
pub fn compare(
    kernel: &str,
    dtype: DType,
    shape: String,
    against: &str,
    got: &Tensor,
    want: &Tensor,
) -> Result<CheckRow> {
    compare_with(kernel, dtype, shape, against, got, want, None)
}

/// [`compare`] for an attention output (B, T, H * D) of `dims` = (B, T, H, D): a failed row
/// also says where its wrong elements lie ([`bad_spread`]).
pub fn compare_attention(
    kernel: &str,
    dtype: DType,
    shape: String,
    against: &str,
    got: &Tensor,
    want: &Tensor,
    dims: (usize, usize, usize, usize),
) -> Result<CheckRow> {
    compare_with(kernel, dtype, shape, against, got, want, Some(dims))
}

/// [`compare`], and with `attn` = (B, T, H, D) [`compare_attention`]'s spread of a failed row.
fn compare_with(
    kernel: &str,
    dtype: DType,
    shape: String,
    against: &str,
    got: &Tensor,
    want: &Tensor,
    attn: Option<(usize, usize, usize, usize)>,
) -> Result<CheckRow> {
    let g = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let w = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if g.len() != w.len() {
        candle_core::bail!(
            "{kernel}: output has {} elements, reference {}",
            g.len(),
            w.len()
        );
    }
    let nonfinite = g.iter().filter(|v| !v.is_finite()).count();
    let max_abs_ref = w.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let max_abs_err = g
        .iter()
        .zip(&w)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    let rel_err = max_abs_err / max_abs_ref.max(1e-30);
    // f32: accumulation-order differences only. bf16: the kernel rounds its output to bf16
    // (2^-9 relative) and the comparison is with the f32 result on the same bf16 inputs.
    let tol = if dtype == DType::BF16 { 1e-2 } else { 1e-5 };
    let pass = nonfinite == 0 && rel_err <= tol;
    let spread = match attn {
        Some(dims @ (b, t, h, d)) if !pass && g.len() == b * t * h * d => {
            Some(bad_spread(&g, &w, tol * max_abs_ref, dims))
        }
        _ => None,
    };
    Ok(CheckRow {
        kernel: kernel.into(),
        dtype: dname(dtype).into(),
        shape,
        against: against.into(),
        max_abs_err,
        max_abs_ref,
        rel_err,
        tol,
        nonfinite,
        pass,
        spread,
    })
}

/// Counts by one coordinate as `n of m {i: count, ..}` (the first 8 non-zero entries).
fn hist(counts: &[usize]) -> String {
    let nz: Vec<String> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, c)| format!("{i}: {c}"))
        .collect();
    let more = if nz.len() > 8 {
        format!(", +{} more", nz.len() - 8)
    } else {
        String::new()
    };
    let shown = nz.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    format!("{} of {} {{{shown}{more}}}", nz.len(), counts.len())
}

/// Where the wrong elements of an attention output (B, T, H * D) lie, in one line, so that a
/// failed check on a GPU run says more than its maximum error: how many elements are wrong
/// (|got - want| > `tol_abs`, or not finite), the first and the worst as (b, t, h, d), how many
/// wrong rows (one query row of one head) are the reference row times one factor (a row-sum /
/// normalisation error, not a mix of values), and the wrong elements counted along the
/// coordinates a kernel splits its work by: batch, head, the 64-row query tile (t / 64), the
/// warp's 16 rows in it ((t % 64) / 16), the half of an mma fragment (t % 16 / 8), and the head
/// dim's 8-column group (d / 8, one core matrix of the V operand).
pub fn bad_spread(
    got: &[f32],
    want: &[f32],
    tol_abs: f64,
    dims: (usize, usize, usize, usize),
) -> String {
    let (nb, nt, nh, nd) = dims;
    let at = |i: usize| {
        let (d, r) = (i % nd, i / nd);
        let (h, r) = (r % nh, r / nh);
        (r / nt, r % nt, h, d) // (b, t, h, d)
    };
    let wrong = |g: f32, w: f32| !g.is_finite() || (g as f64 - w as f64).abs() > tol_abs;
    let (mut by_b, mut by_h) = (vec![0usize; nb], vec![0usize; nh]);
    let mut by_tile = vec![0usize; nt.div_ceil(64)];
    let (mut by_warp, mut by_half, mut by_d8) =
        ([0usize; 4], [0usize; 2], vec![0usize; nd.div_ceil(8)]);
    let (mut bad, mut first, mut worst, mut worst_err) = (0usize, None, 0usize, -1f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !wrong(g, w) {
            continue;
        }
        bad += 1;
        first.get_or_insert(i);
        let e = if g.is_finite() {
            (g as f64 - w as f64).abs()
        } else {
            f64::INFINITY
        };
        if e > worst_err {
            (worst, worst_err) = (i, e);
        }
        let (b, t, h, d) = at(i);
        by_b[b] += 1;
        by_h[h] += 1;
        by_tile[t / 64] += 1;
        by_warp[(t % 64) / 16] += 1;
        by_half[(t % 16) / 8] += 1;
        by_d8[d / 8] += 1;
    }
    let Some(first) = first else {
        return format!("no element off by more than {tol_abs:.2e}");
    };
    // wrong rows, and those that are the reference row times one factor
    let (mut rows, mut scaled, mut factors) = (0usize, 0usize, Vec::new());
    for (g, w) in got.chunks(nd).zip(want.chunks(nd)) {
        if !g.iter().zip(w).any(|(&g, &w)| wrong(g, w)) {
            continue;
        }
        rows += 1;
        let ww: f64 = w.iter().map(|&v| v as f64 * v as f64).sum();
        if ww == 0.0 || g.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let f = g
            .iter()
            .zip(w)
            .map(|(&g, &w)| g as f64 * w as f64)
            .sum::<f64>()
            / ww;
        if g.iter()
            .zip(w)
            .all(|(&g, &w)| (g as f64 - f * w as f64).abs() <= tol_abs)
        {
            scaled += 1;
            factors.push(f);
        }
    }
    factors.sort_by(f64::total_cmp);
    let median = factors
        .get(factors.len() / 2)
        .map_or(String::new(), |f| format!(" (median factor {f:.3})"));
    let coord = |i: usize| {
        let (b, t, h, d) = at(i);
        format!(
            "b{b} t{t} h{h} d{d} (got {:.4}, want {:.4})",
            got[i], want[i]
        )
    };
    format!(
        "{bad} of {} elements wrong ({:.2}%); first {}; worst {}; {rows} of {} rows wrong, \
         {scaled} of them the reference row times one factor{median}; by b: {}; h: {}; \
         t/64: {}; t%64/16: {}; t%16/8: {}; d/8: {}",
        got.len(),
        100.0 * bad as f64 / got.len().max(1) as f64,
        coord(first),
        coord(worst),
        nb * nt * nh,
        hist(&by_b),
        hist(&by_h),
        hist(&by_tile),
        hist(&by_warp),
        hist(&by_half),
        hist(&by_d8),
    )
}

fn randn(shape: &[usize], std: f64, mean: f64, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, dev)?.affine(std, mean)
}

/// Additive padding mask (B, T): batch 0 unpadded, batch 1 of length 1, others random lengths.
pub fn padding_mask(b: usize, t: usize, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(b * t);
    for bi in 0..b {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let len = match bi {
            0 => t,
            1 => 1,
            _ => 1 + (s % t as u64) as usize,
        };
        v.extend((0..t).map(|j| if j < len { 0f32 } else { -1e9 }));
    }
    Tensor::from_vec(v, (b, t), dev)
}

/// Whether `dev` is an sm_90 (Hopper) GPU, where the fa2wg kernels run.
pub fn is_sm90(dev: &Device) -> bool {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return crate::cuda::arch(d).is_ok_and(|a| a == "sm_90");
    }
    let _ = dev;
    false
}

/// An additive key mask (B, T) with the padding before and between the valid keys, which
/// [`padding_mask`] never makes: rows cycle through keys [min(70, T - 1), T) (with T >= 128 a
/// first key tile of 64 that is all padding), keys [0, 5) and [T - 30, T) (a gap: whole tiles of
/// padding in the middle from T = 192 on), and every key.
pub fn lead_gap_mask(b: usize, t: usize, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(b * t);
    for bi in 0..b {
        v.extend((0..t).map(|j| {
            let valid = match bi % 3 {
                0 => j >= 70.min(t - 1),
                1 => j < 5 || j + 30 >= t,
                _ => true,
            };
            if valid {
                0f32
            } else {
                -1e9
            }
        }));
    }
    Tensor::from_vec(v, (b, t), dev)
}

/// A part of `kernels check` / `kernels bench` (`--only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The bandwidth reference (bench only).
    Copy,
    /// add + LayerNorm (and plain LayerNorm in the checks).
    Ln,
    /// bias + GELU.
    Gelu,
    /// Attention through the default kernel choice (what the model runs), and the Candle path.
    Attention,
    /// The attention kernels named in [`Select::attention_kernels`] (CUDA only).
    Named,
    /// The whole frozen encoder, fused vs the Candle model (check only; run by the CLI).
    Model,
    /// Dropout on the attention probabilities inside the kernels (the `_dropout` entry points;
    /// check: against the same Philox draws through Candle ops, kernel and model level; bench:
    /// against Candle's attention with a dropout mask).
    Dropout,
    /// The fused AdamW update (kernels-cu/optim.cu; check only: against composed Candle ops and
    /// the CPU op, f32).
    Optim,
}

impl Part {
    pub const ALL: [Part; 8] = [
        Part::Copy,
        Part::Ln,
        Part::Gelu,
        Part::Attention,
        Part::Named,
        Part::Model,
        Part::Dropout,
        Part::Optim,
    ];
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "copy" => Part::Copy,
            "ln" => Part::Ln,
            "gelu" => Part::Gelu,
            "attention" => Part::Attention,
            "named" => Part::Named,
            "model" => Part::Model,
            "dropout" => Part::Dropout,
            "optim" => Part::Optim,
            o => {
                return Err(format!(
                    "part `{o}`: expected copy, ln, gelu, attention, named, model, dropout or optim"
                ))
            }
        })
    }
}

/// What a check or timing run covers. A GPU script runs kernels that have never run on a GPU
/// each in its own process (`--only named --attention-kernels fa2`), so that one which crashes
/// or hangs costs its own rows only.
#[derive(Clone, Debug)]
pub struct Select {
    pub parts: Vec<Part>,
    /// Attention kernels checked / timed by name besides the default choice (part `named`; CUDA
    /// only, each where it fits the dtype and head dim).
    pub attention_kernels: Vec<AttentionKernel>,
}

impl Select {
    /// Every part, every named attention kernel.
    pub fn all() -> Self {
        Self {
            parts: Part::ALL.to_vec(),
            attention_kernels: AttentionKernel::NAMED.to_vec(),
        }
    }

    pub fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }

    /// The named attention kernels to run on `dev` for `dtype`, head dim `d` and sequence length
    /// `t`: those that fit (the fa2wg kernels on an sm_90 GPU only), when part `named` is selected, on CUDA
    /// only (the CPU side has one reference).
    pub fn named_kernels(
        &self,
        dev: &Device,
        dtype: DType,
        d: usize,
        t: usize,
    ) -> Vec<AttentionKernel> {
        if !dev.is_cuda() || !self.has(Part::Named) {
            return Vec::new();
        }
        let ks = self.attention_kernels.iter().copied();
        ks.filter(|k| k.fits(dtype, d, t) && (!k.needs_sm90() || is_sm90(dev)))
            .collect()
    }

    /// Parses comma-separated lists (`--only`, `--attention-kernels`); `all` selects everything,
    /// `none` nothing.
    pub fn parse_list<T: std::str::FromStr<Err = String> + Clone>(
        what: &str,
        s: &str,
        all: &[T],
    ) -> std::result::Result<Vec<T>, String> {
        match s.trim() {
            "all" => Ok(all.to_vec()),
            "none" | "" => Ok(Vec::new()),
            s => s
                .split(',')
                .map(|p| p.trim().parse::<T>().map_err(|e| format!("{what}: {e}")))
                .collect(),
        }
    }
}

/// Collects rows and hands each to `sink` as soon as it exists (the CLI prints it then, so a
/// run that dies keeps what it measured before).
struct Rows<'a, R> {
    rows: Vec<R>,
    sink: &'a mut dyn FnMut(&R),
}

impl<R> Rows<'_, R> {
    fn push(&mut self, r: R) {
        (self.sink)(&r);
        self.rows.push(r);
    }
}

impl Rows<'_, CheckRow> {
    /// The kernel's output `got` against the Candle reference `want` and, where given, against
    /// the op's CPU side `on_cpu` (two rows named `name`); `attn`: the (B, T, H, D) of an
    /// attention output, whose failed rows say where they went wrong.
    #[allow(clippy::too_many_arguments)] // the check's identity, its outputs, its shape
    fn push_checks(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &str,
        got: &Tensor,
        want: &Tensor,
        on_cpu: Option<Tensor>,
        attn: Option<(usize, usize, usize, usize)>,
    ) -> Result<()> {
        let cmp = |against: &str, want: &Tensor| match attn {
            Some(dims) => compare_attention(name, dtype, shape.into(), against, got, want, dims),
            None => compare(name, dtype, shape.into(), against, got, want),
        };
        self.push(cmp("candle reference", want)?);
        if let Some(c) = on_cpu {
            self.push(cmp("cpu op", &c)?);
        }
        Ok(())
    }
}

/// The fused AdamW update, each of its outputs (p, m, v after the step) on its own: against
/// composed Candle ops on `dev` (f32 tolerance, relative to that output's largest value) and, off
/// the CPU, against the CPU op on the same inputs with **no** tolerance (the kernel rounds every
/// operation as the CPU op does: the same bits or a failed row), at tensor sizes from 1 element
/// to BERT-base's word embeddings, with and without decay.
fn check_adamw(dev: &Device, rows: &mut Rows<'_, CheckRow>) -> Result<()> {
    for n in [1usize, 1000, 70_001, 768 * 3072, 30522 * 768] {
        if dev.is_cpu() && n > 1 << 20 {
            continue;
        }
        for decay in [Some(0.999_f32), None] {
            let k = crate::cpu::AdamWScalars {
                decay,
                one_minus_beta1: 0.1,
                beta2: 0.999,
                one_minus_beta2: 1e-3,
                inv_bc2_sqrt: 1.0 / (1.0f32 - 0.999f32.powi(3)).sqrt(),
                eps: 1e-6,
                step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
            };
            let p = randn(&[n], 0.05, 0.0, dev)?;
            let g = randn(&[n], 0.01, 0.0, dev)?;
            let mv = Tensor::stack(
                &[
                    randn(&[n], 0.01, 0.0, dev)?,
                    randn(&[n], 1e-4, 0.0, dev)?.abs()?,
                ],
                0,
            )?; // (2, n)
            let got = ops::adamw_step(&p, &g, &mv, k)?; // (3, n)
            let want = reference::adamw_step(&p, &g, &mv, &k)?;
            let on_cpu = if dev.is_cpu() {
                None
            } else {
                let c = |t: &Tensor| t.to_device(&Device::Cpu);
                Some(ops::adamw_step(&c(&p)?, &c(&g)?, &c(&mv)?, k)?)
            };
            let tag = if decay.is_some() { "" } else { ", no decay" };
            for (i, what) in ["p", "m", "v"].into_iter().enumerate() {
                let name = format!("adamw_step {what}{tag}");
                let shape = format!("{n}");
                let got = got.get(i)?;
                rows.push(compare(
                    &name,
                    DType::F32,
                    shape.clone(),
                    "candle reference",
                    &got,
                    &want.get(i)?,
                )?);
                if let Some(c) = &on_cpu {
                    let mut r =
                        compare(&name, DType::F32, shape, "cpu op (exact)", &got, &c.get(i)?)?;
                    r.tol = 0.0;
                    r.pass = r.nonfinite == 0 && r.max_abs_err == 0.0;
                    rows.push(r);
                }
            }
        }
    }
    Ok(())
}

/// Shapes for the checks. `large` adds BERT-base-sized cases (for a GPU).
pub struct CheckShapes {
    pub ln: Vec<(usize, usize)>,
    pub gelu: Vec<(usize, usize)>,
    /// (B, T, H, D)
    pub attn: Vec<(usize, usize, usize, usize)>,
}

impl CheckShapes {
    pub fn small() -> Self {
        Self {
            ln: vec![
                (3, 1),
                (5, 100),
                (37, 768),
                (16, 257),
                (64, 1024),
                (8, 1536),
                (4, 4096),
            ],
            gelu: vec![(5, 7), (33, 1024), (17, 3072), (4, 5000)],
            attn: vec![
                (1, 1, 1, 64),
                (2, 7, 2, 32),
                (3, 33, 2, 64),
                (2, 40, 3, 128),
                (4, 128, 4, 64),
            ],
        }
    }

    pub fn large() -> Self {
        let mut s = Self::small();
        s.ln.extend([(4096, 768), (65536, 1024), (1000, 12288)]);
        s.gelu.extend([(4096, 3072), (65536, 4096)]);
        s.attn.extend([
            (2, 512, 12, 64),
            (4, 200, 4, 128),
            (32, 128, 12, 64),
            (8, 512, 12, 64),
            (16, 384, 16, 64),
            (4, 512, 8, 128),
            (8, 256, 16, 32),
            // 64-wide heads at one whole key tile, a partial second and a partial fifth (the
            // second tile requested early by fa2wg3e / fa2wg4e, rows beyond T zero-filled)
            (2, 64, 4, 64),
            (3, 100, 4, 64),
            (2, 300, 4, 64),
        ]);
        s
    }
}

/// Compares every selected kernel (f32 and bf16) with the reference on `dev`; on a non-CPU
/// device the small cases are also compared with the CPU op on the same inputs. Each row goes
/// to `sink` as soon as it is computed. (Part `model` is the CLI's.)
pub fn check(
    dev: &Device,
    shapes: &CheckShapes,
    sel: &Select,
    sink: &mut dyn FnMut(&CheckRow),
) -> Result<Vec<CheckRow>> {
    let mut rows = Rows {
        rows: Vec::new(),
        sink,
    };
    let cpu = Device::Cpu;
    let small = |n: usize| !dev.is_cpu() && n <= 1 << 20;
    if sel.has(Part::Optim) {
        check_adamw(dev, &mut rows)?;
    }
    for dtype in [DType::F32, DType::BF16] {
        for &(r, c) in shapes.ln.iter().filter(|_| sel.has(Part::Ln)) {
            for has_res in [true, false] {
                let x = randn(&[r, c], 2.0, 0.5, dev)?.to_dtype(dtype)?;
                let res = randn(&[r, c], 1.0, 0.0, dev)?.to_dtype(dtype)?;
                let wb = Tensor::cat(
                    &[
                        randn(&[1, c], 0.5, 1.0, dev)?,
                        randn(&[1, c], 0.1, 0.0, dev)?,
                    ],
                    0,
                )?
                .to_dtype(dtype)?;
                let res_opt = has_res.then_some(&res);
                let got = ops::add_layer_norm(&x, res_opt, &wb, 1e-12)?;
                let want = reference::add_layer_norm(&x, res_opt, &wb, 1e-12)?;
                let name = if has_res {
                    "add_layer_norm"
                } else {
                    "layer_norm"
                };
                let on_cpu = if small(r * c) {
                    let (xc, rc, wc) = (
                        x.to_device(&cpu)?,
                        res.to_device(&cpu)?,
                        wb.to_device(&cpu)?,
                    );
                    Some(ops::add_layer_norm(
                        &xc,
                        has_res.then_some(&rc),
                        &wc,
                        1e-12,
                    )?)
                } else {
                    None
                };
                rows.push_checks(name, dtype, &format!("{r}x{c}"), &got, &want, on_cpu, None)?;
            }
        }
        for &(r, c) in shapes.gelu.iter().filter(|_| sel.has(Part::Gelu)) {
            let x = randn(&[r, c], 2.0, 0.0, dev)?.to_dtype(dtype)?;
            let b = randn(&[c], 0.5, 0.0, dev)?.to_dtype(dtype)?;
            let got = ops::bias_gelu(&x, &b)?;
            let want = reference::bias_gelu(&x, &b)?;
            let on_cpu = if small(r * c) {
                Some(ops::bias_gelu(&x.to_device(&cpu)?, &b.to_device(&cpu)?)?)
            } else {
                None
            };
            rows.push_checks(
                "bias_gelu",
                dtype,
                &format!("{r}x{c}"),
                &got,
                &want,
                on_cpu,
                None,
            )?;
        }
        for (i, &(b, t, h, d)) in shapes.attn.iter().enumerate() {
            let named = sel.named_kernels(dev, dtype, d, t);
            let drop_named: Vec<_> = named.iter().copied().filter(|k| k.has_dropout()).collect();
            let dropout = sel.has(Part::Dropout);
            if !sel.has(Part::Attention) && named.is_empty() && !dropout {
                continue;
            }
            let c = h * d;
            let qkv = randn(&[b, t, 3 * c], 1.0, 0.0, dev)?.to_dtype(dtype)?;
            let mask = padding_mask(b, t, i as u64 + 1, dev)?;
            let shape = format!("B{b} T{t} H{h} D{d}");
            let dims = Some((b, t, h, d));
            // the padded mask, and (T >= 128) keys padded before and between the valid ones:
            // the key-tile skipping, and fa2v3 / fa2w8v3 / the fa2wg kernels, which process key
            // tile 0 even when it is all padding
            let mut masks = vec![(mask.clone(), shape.clone())];
            if t >= 128 && (sel.has(Part::Attention) || !named.is_empty()) {
                masks.push((lead_gap_mask(b, t, dev)?, format!("{shape} lead/gap pad")));
            }
            for (n, (m, shape)) in masks.iter().enumerate() {
                let want = reference::attention(&qkv, m, h)?;
                if sel.has(Part::Attention) {
                    let got = ops::attention(&qkv, m, h)?;
                    let on_cpu = if n == 0 && small(b * t * 3 * c) && b * h * t * t * d <= 1 << 24 {
                        Some(ops::attention(
                            &qkv.to_device(&cpu)?,
                            &m.to_device(&cpu)?,
                            h,
                        )?)
                    } else {
                        None
                    };
                    rows.push_checks("attention", dtype, shape, &got, &want, on_cpu, dims)?;
                }
                for &kern in &named {
                    let got = ops::attention_with(&qkv, m, h, kern)?;
                    rows.push_checks(
                        &format!("attention[{kern}]"),
                        dtype,
                        shape,
                        &got,
                        &want,
                        None,
                        dims,
                    )?;
                }
            }
            // Part `dropout`: dropout on the probabilities inside the kernel (p = 0.1, Philox
            // mask) through the default kernel where it has a dropout variant (always on the
            // CPU), and through every named kernel that has one (with part `named` too); the
            // reference builds the same mask on the host
            let drop_default = dropout && ops::attention_dropout_fits(&qkv, h);
            let drop_named = if dropout { drop_named } else { Vec::new() };
            if (!drop_default && drop_named.is_empty()) || b * h * t * t > 1 << 25 {
                continue;
            }
            let (p, seed) = (0.1, 0x5eed_0000 + i as u64);
            let want = reference::attention_dropout(&qkv, &mask, h, p, seed)?;
            if drop_default {
                let got = ops::attention_dropout(&qkv, &mask, h, p, seed)?;
                let on_cpu =
                    if dev.is_cuda() && small(b * t * 3 * c) && b * h * t * t * d <= 1 << 24 {
                        let (qc, mc) = (qkv.to_device(&cpu)?, mask.to_device(&cpu)?);
                        Some(ops::attention_dropout(&qc, &mc, h, p, seed)?)
                    } else {
                        None
                    };
                rows.push_checks(
                    "attention+dropout",
                    dtype,
                    &shape,
                    &got,
                    &want,
                    on_cpu,
                    dims,
                )?;
            }
            for kern in drop_named {
                let got = ops::attention_dropout_with(&qkv, &mask, h, kern, p, seed)?;
                rows.push_checks(
                    &format!("attn+drop[{kern}]"),
                    dtype,
                    &shape,
                    &got,
                    &want,
                    None,
                    dims,
                )?;
            }
        }
    }
    Ok(rows.rows)
}

/// The card's copy (`cuMemcpyDtoDAsync` into a buffer allocated once) of as many bytes as an op
/// reads and writes at `shape` (`bytes`): row `copy-same-bytes` / `into`, shape "`shape` `dtype`".
/// What a copy reaches at that size, to read a small shape's share of the copy bandwidth against
/// (at 4096 rows launch and tail weigh on any kernel).
#[cfg(feature = "cuda")]
fn same_bytes_copy(
    dev: &Device,
    trials: usize,
    shape: &str,
    dtype: DType,
    bytes: Option<f64>,
    out: &mut Rows<'_, TimeRow>,
) -> Result<()> {
    let (Device::Cuda(cd), Some(total)) = (dev, bytes) else {
        return Ok(());
    };
    let n = (total / 8.0) as usize; // f32 elements: a copy reads and writes 4 bytes each
    let src = randn(&[n], 1.0, 0.0, dev)?;
    // SAFETY: the buffer is only written by the copy, never read.
    let mut dst = unsafe { cd.alloc::<f32>(n)? };
    let t = time(dev, trials, || crate::cuda::copy_into(&src, &mut dst))?;
    let label = format!("{shape} {}", dname(dtype));
    out.push(row(
        "copy-same-bytes",
        "into",
        DType::F32,
        label,
        t,
        Some(8.0 * n as f64),
        None,
    ));
    Ok(())
}

/// Median and spread of one timed operation.
#[derive(Clone, Debug, Serialize)]
pub struct TimeRow {
    pub op: String,
    /// fused (this crate's kernel) or candle (the plain path)
    pub implementation: String,
    pub dtype: String,
    pub shape: String,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Logical bytes moved / time (memory-bound ops).
    pub gb_per_s: Option<f64>,
    /// Model FLOPs / time (attention).
    pub tflop_per_s: Option<f64>,
}

/// Times `f`: warm-up, then the median over `trials` of the mean of `inner` back-to-back calls
/// (inner sized to ~5 ms), with the device synchronised before each clock read.
fn time<R, F: FnMut() -> Result<R>>(
    dev: &Device,
    trials: usize,
    mut f: F,
) -> Result<(f64, f64, f64)> {
    for _ in 0..2 {
        drop(f()?);
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    drop(f()?);
    dev.synchronize()?;
    let one = t0.elapsed().as_secs_f64();
    let inner = ((5e-3 / one.max(1e-7)).ceil() as usize).clamp(1, 100);
    let mut ts = Vec::with_capacity(trials);
    for _ in 0..trials {
        dev.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..inner {
            drop(f()?);
        }
        dev.synchronize()?;
        ts.push(t0.elapsed().as_secs_f64() / inner as f64 * 1e6);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Ok((ts[ts.len() / 2], ts[0], ts[ts.len() - 1]))
}

/// Shapes for the timings.
pub struct BenchShapes {
    /// rows for LayerNorm (C = 768 and 1024) and GELU (C = 3072)
    pub rows: Vec<usize>,
    /// (B, T) at 12 heads x 64
    pub attn: Vec<(usize, usize)>,
    pub copy_mib: usize,
    pub trials: usize,
}

impl BenchShapes {
    pub fn gpu() -> Self {
        Self {
            rows: vec![4096, 32768, 131072],
            attn: vec![
                (32, 128),
                (128, 128),
                (256, 128),
                (32, 512),
                (128, 512),
                (256, 512),
                // T = 256, where the bf16 default switches kernels (appended: the padded
                // masks of the shapes above keep their seeds)
                (64, 256),
                (128, 256),
            ],
            copy_mib: 512,
            trials: 7,
        }
    }
    pub fn tiny() -> Self {
        Self {
            rows: vec![64],
            attn: vec![(2, 32)],
            copy_mib: 4,
            trials: 3,
        }
    }
}

/// One timing row: `implementation` is `candle` (the plain path), `fused` (the kernel through
/// its custom op, output allocated per call), `fused-into` (the kernel into a buffer allocated
/// once), `fused-<kernel>` (a named attention kernel), or a copy variant.
fn row(
    op: &str,
    implementation: &str,
    dtype: DType,
    shape: String,
    t: (f64, f64, f64),
    bytes: Option<f64>,
    flops: Option<f64>,
) -> TimeRow {
    TimeRow {
        op: op.into(),
        implementation: implementation.into(),
        dtype: dname(dtype).into(),
        shape,
        median_us: t.0,
        min_us: t.1,
        max_us: t.2,
        gb_per_s: bytes.map(|b| b / (t.0 * 1e-6) / 1e9),
        tflop_per_s: flops.map(|f| f / (t.0 * 1e-6) / 1e12),
    }
}

/// The plain Candle attention path of a frozen layer (what `--kernels candle` runs), from the
/// same fused projection: split heads, QK^T, scale, mask, Candle's softmax, PV, merge heads.
pub fn candle_attention(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
    let (probs, v) = candle_probs(qkv, mask, heads)?;
    reference::merge_heads(&probs.matmul(&v)?)
}

/// [`candle_attention`] with inverted dropout `p` on the probabilities, the keep mask drawn with
/// `Tensor::rand` on the device and applied in f32 (as `mslt_core::nn::dropout` does).
pub fn candle_attention_dropout(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    p: f64,
) -> Result<Tensor> {
    let (probs, v) = candle_probs(qkv, mask, heads)?; // (B, H, T, T), (B, H, T, D)
    let keep = Tensor::rand(0f32, 1f32, probs.shape(), probs.device())?.ge(p)?;
    let keep = (keep.to_dtype(DType::F32)? * (1.0 / (1.0 - p)))?;
    let probs = probs
        .to_dtype(DType::F32)?
        .mul(&keep)?
        .to_dtype(qkv.dtype())?;
    reference::merge_heads(&probs.matmul(&v)?)
}

/// The Candle path's probabilities and values: qkv (B, T, 3C), mask (B, T) -> softmax(Q K^T /
/// sqrt(D) + mask) (B, H, T, T) and V (B, H, T, D), in qkv's dtype.
fn candle_probs(qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, c3) = qkv.dims3()?;
    let (q, k, v) = reference::split_heads(qkv, heads)?;
    let scale = 1.0 / ((c3 / 3 / heads) as f64).sqrt();
    let s = (q.matmul(&k.t()?)? * scale)?
        .broadcast_add(&mask.to_dtype(qkv.dtype())?.reshape((b, 1, 1, t))?)?;
    Ok((candle_nn::ops::softmax_last_dim(&s)?, v))
}

/// Times `f(out)` where `out` is a device buffer of `n` elements of `dtype`, allocated once
/// (CUDA only: the `*_into` timing aids of `crate::cuda`).
#[cfg(feature = "cuda")]
fn time_into(
    dev: &Device,
    trials: usize,
    dtype: DType,
    n: usize,
    mut f32_fn: impl FnMut(&mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>) -> Result<()>,
    mut bf16_fn: impl FnMut(
        &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<half::bf16>,
    ) -> Result<()>,
) -> Result<(f64, f64, f64)> {
    let Device::Cuda(cd) = dev else {
        candle_core::bail!("time_into: not a CUDA device")
    };
    if dtype == DType::F32 {
        // SAFETY: the buffer is only written by the timed op, never read.
        let mut out = unsafe { cd.alloc::<f32>(n)? };
        time(dev, trials, || f32_fn(&mut out))
    } else {
        // SAFETY: as above.
        let mut out = unsafe { cd.alloc::<half::bf16>(n)? };
        time(dev, trials, || bf16_fn(&mut out))
    }
}

/// Times every selected kernel beside the plain Candle path (f32 and bf16), and a device copy
/// (the bandwidth reference). Each row goes to `sink` as soon as it is timed.
pub fn bench(
    dev: &Device,
    s: &BenchShapes,
    sel: &Select,
    sink: &mut dyn FnMut(&TimeRow),
) -> Result<Vec<TimeRow>> {
    let mut out = Rows {
        rows: Vec::new(),
        sink,
    };
    if sel.has(Part::Copy) {
        let n = s.copy_mib * 1024 * 1024 / 4;
        let big = randn(&[n], 1.0, 0.0, dev)?;
        let bytes = Some(2.0 * (n * 4) as f64);
        let shape = format!("{} MiB", s.copy_mib);
        let t = time(dev, s.trials, || big.copy())?;
        out.push(row(
            "copy",
            "candle",
            DType::F32,
            shape.clone(),
            t,
            bytes,
            None,
        ));
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cd) = dev {
            // into a buffer allocated once, as PyTorch's `y.copy_(x)`: the card's bandwidth
            // SAFETY: the buffer is only written by the copy, never read.
            let mut dst = unsafe { cd.alloc::<f32>(n)? };
            let t = time(dev, s.trials, || crate::cuda::copy_into(&big, &mut dst))?;
            drop(dst);
            out.push(row(
                "copy",
                "into",
                DType::F32,
                shape.clone(),
                t,
                bytes,
                None,
            ));
            // The CUDA default pool policy (freed memory handed back to the driver at every
            // synchronisation, MSLT_CUDA_POOL=release): what each Candle allocation costs then.
            if let Some(prev) = crate::cuda::pool_release_threshold(cd)? {
                crate::cuda::set_pool_release_threshold(cd, 0)?;
                let t = time(dev, s.trials, || big.copy());
                crate::cuda::set_pool_release_threshold(cd, prev)?;
                out.push(row(
                    "copy",
                    "candle-pool-release",
                    DType::F32,
                    shape,
                    t?,
                    bytes,
                    None,
                ));
            }
        }
    }
    for dtype in [DType::F32, DType::BF16] {
        let es = dtype.size_in_bytes() as f64;
        for &r in &s.rows {
            for c in [768usize, 1024].into_iter().filter(|_| sel.has(Part::Ln)) {
                let x = randn(&[r, c], 2.0, 0.5, dev)?.to_dtype(dtype)?;
                let res = randn(&[r, c], 1.0, 0.0, dev)?.to_dtype(dtype)?;
                let w = randn(&[c], 0.5, 1.0, dev)?.to_dtype(dtype)?;
                let b = randn(&[c], 0.1, 0.0, dev)?.to_dtype(dtype)?;
                let wb = Tensor::stack(&[&w, &b], 0)?;
                let bytes = Some(3.0 * (r * c) as f64 * es);
                let shape = format!("{r}x{c}");
                let t = time(dev, s.trials, || {
                    ops::add_layer_norm(&x, Some(&res), &wb, 1e-12)
                })?;
                let op = "add_layer_norm";
                out.push(row(op, "fused", dtype, shape.clone(), t, bytes, None));
                #[cfg(feature = "cuda")]
                if dev.is_cuda() {
                    let t = time_into(
                        dev,
                        s.trials,
                        dtype,
                        r * c,
                        |o| crate::cuda::add_layer_norm_into(&x, &res, &wb, 1e-12, o),
                        |o| crate::cuda::add_layer_norm_into(&x, &res, &wb, 1e-12, o),
                    )?;
                    out.push(row(op, "fused-into", dtype, shape.clone(), t, bytes, None));
                    same_bytes_copy(dev, s.trials, &shape, dtype, bytes, &mut out)?;
                }
                let t = time(dev, s.trials, || {
                    candle_nn::ops::layer_norm(&(&x + &res)?, &w, &b, 1e-12)
                })?;
                out.push(row(op, "candle", dtype, shape, t, bytes, None));
            }
            if sel.has(Part::Gelu) {
                let c = 3072;
                let x = randn(&[r, c], 2.0, 0.0, dev)?.to_dtype(dtype)?;
                let b = randn(&[c], 0.5, 0.0, dev)?.to_dtype(dtype)?;
                let bytes = Some(2.0 * (r * c) as f64 * es);
                let shape = format!("{r}x{c}");
                let op = "bias_gelu";
                let t = time(dev, s.trials, || ops::bias_gelu(&x, &b))?;
                out.push(row(op, "fused", dtype, shape.clone(), t, bytes, None));
                #[cfg(feature = "cuda")]
                if dev.is_cuda() {
                    let t = time_into(
                        dev,
                        s.trials,
                        dtype,
                        r * c,
                        |o| crate::cuda::bias_gelu_into(&x, &b, o),
                        |o| crate::cuda::bias_gelu_into(&x, &b, o),
                    )?;
                    out.push(row(op, "fused-into", dtype, shape.clone(), t, bytes, None));
                    same_bytes_copy(dev, s.trials, &shape, dtype, bytes, &mut out)?;
                }
                let t = time(dev, s.trials, || x.broadcast_add(&b)?.gelu_erf())?;
                out.push(row(op, "candle", dtype, shape, t, bytes, None));
            }
        }
        for (i, &(b, t_)) in s.attn.iter().enumerate() {
            let (h, d) = (12, 64);
            let named = sel.named_kernels(dev, dtype, d, t_);
            if !sel.has(Part::Attention) && named.is_empty() && !sel.has(Part::Dropout) {
                continue;
            }
            let qkv = randn(&[b, t_, 3 * h * d], 1.0, 0.0, dev)?.to_dtype(dtype)?;
            let mask = padding_mask(b, t_, i as u64 + 7, dev)?;
            // no padding (mask all 0): nothing to skip; compared with SDPA without a mask
            let nopad = Tensor::zeros((b, t_), DType::F32, dev)?;
            let flops = Some(4.0 * (b * h * t_ * t_ * d) as f64);
            let shape = format!("B{b} T{t_} H{h} D{d}");
            let op = "attention";
            if sel.has(Part::Attention) {
                for (m, sfx) in [(&mask, ""), (&nopad, " nopad")] {
                    let t = time(dev, s.trials, || ops::attention(&qkv, m, h))?;
                    let shape = format!("{shape}{sfx}");
                    out.push(row(op, "fused", dtype, shape, t, None, flops));
                }
            }
            for kern in named {
                let imp = format!("fused-{kern}");
                for (m, sfx) in [(&mask, ""), (&nopad, " nopad")] {
                    let t = time(dev, s.trials, || ops::attention_with(&qkv, m, h, kern))?;
                    let shape = format!("{shape}{sfx}");
                    out.push(row(op, &imp, dtype, shape, t, None, flops));
                }
            }
            if sel.has(Part::Attention) {
                let t = time(dev, s.trials, || candle_attention(&qkv, &mask, h))?;
                out.push(row(op, "candle", dtype, shape.clone(), t, None, flops));
            }
            // dropout p = 0.1 on the probabilities: inside the default kernel (where it has a
            // dropout variant), and Candle's attention with a device-drawn mask as a frozen layer
            // with frozen dropout on runs it otherwise
            if sel.has(Part::Dropout) && ops::attention_dropout_fits(&qkv, h) {
                let op = "attention+dropout";
                for (m, sfx) in [(&mask, ""), (&nopad, " nopad")] {
                    let t = time(dev, s.trials, || ops::attention_dropout(&qkv, m, h, 0.1, 7))?;
                    let shape = format!("{shape}{sfx}");
                    out.push(row(op, "fused", dtype, shape, t, None, flops));
                }
                let t = time(dev, s.trials, || {
                    candle_attention_dropout(&qkv, &mask, h, 0.1)
                })?;
                out.push(row(op, "candle", dtype, shape, t, None, flops));
            }
        }
    }
    Ok(out.rows)
}

/// The header line of [`check_line`].
pub fn check_header() -> String {
    format!(
        "{:<18} {:<5} {:<20} {:<17} {:>10} {:>10} {:>8} {:>4} {}",
        "kernel", "dtype", "shape", "against", "max|err|", "rel err", "tol", "nan", "result"
    )
}

/// One check row as a line of text.
pub fn check_line(r: &CheckRow) -> String {
    format!(
        "{:<18} {:<5} {:<20} {:<17} {:>10.2e} {:>10.2e} {:>8.0e} {:>4} {}",
        r.kernel,
        r.dtype,
        r.shape,
        r.against,
        r.max_abs_err,
        r.rel_err,
        r.tol,
        r.nonfinite,
        if r.pass { "ok" } else { "FAIL" }
    )
}

/// Check rows as a text table.
pub fn check_table(rows: &[CheckRow]) -> String {
    let mut s = check_header() + "\n";
    for r in rows {
        s += &(check_line(r) + "\n");
    }
    s
}

/// The header line of [`bench_line`].
pub fn bench_header() -> String {
    format!(
        "{:<15} {:<19} {:<5} {:<20} {:>11} {:>21} {:>9} {:>9}",
        "op", "impl", "dtype", "shape", "median us", "(min-max)", "GB/s", "TFLOP/s"
    )
}

/// One timing row as a line of text.
pub fn bench_line(r: &TimeRow) -> String {
    format!(
        "{:<15} {:<19} {:<5} {:<20} {:>11.1} {:>21} {:>9} {:>9}",
        r.op,
        r.implementation,
        r.dtype,
        r.shape,
        r.median_us,
        format!("({:.1}-{:.1})", r.min_us, r.max_us),
        r.gb_per_s.map(|v| format!("{v:.0}")).unwrap_or_default(),
        r.tflop_per_s.map(|v| format!("{v:.2}")).unwrap_or_default(),
    )
}

/// Time rows as a text table.
pub fn bench_table(rows: &[TimeRow]) -> String {
    let mut s = bench_header() + "\n";
    for r in rows {
        s += &(bench_line(r) + "\n");
    }
    s
}
