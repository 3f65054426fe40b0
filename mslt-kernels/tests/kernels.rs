//! CPU tests of the fused-kernel crate: the custom ops' CPU side against the composed Candle
//! references at many shapes (masked/padded batches included), input validation, dispatch, and
//! the NVRTC compile check of every `.cu` source.

use candle_core::{DType, Device, Tensor, Var};
use mslt_kernels::harness::{self, BenchShapes, CheckShapes, Part, Select};
use mslt_kernels::{nvrtc, ops, AttentionKernel, Kernels};

#[test]
fn cpu_ops_match_candle_references() -> candle_core::Result<()> {
    let mut streamed = 0;
    let rows = harness::check(
        &Device::Cpu,
        &CheckShapes::small(),
        &Select::all(),
        &mut |_| streamed += 1,
    )?;
    print!("{}", harness::check_table(&rows));
    assert_eq!(streamed, rows.len(), "every row goes to the sink");
    // 7 LN shapes x 2 (residual or not) + 4 GELU + 5 attention + 1 attention with keys padded
    // before and between the valid ones (T >= 128) + 5 attention with dropout (CPU op vs the
    // Candle reference with the same Philox mask), in f32 and bf16; + the fused AdamW update's
    // three outputs at 3 sizes (those up to 2^20 elements) with and without decay, f32.
    assert_eq!(rows.len(), 2 * (7 * 2 + 4 + 5 + 1 + 5) + 3 * 2 * 3);
    // The AdamW op rounds every operation as the composed Candle ops do: the same bits.
    let optim: Vec<_> = rows
        .iter()
        .filter(|r| r.kernel.starts_with("adamw_step"))
        .collect();
    assert_eq!(optim.len(), 18);
    assert!(optim.iter().all(|r| r.max_abs_err == 0.0), "{optim:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.kernel == "attention" && r.shape.ends_with("lead/gap pad"))
            .count(),
        2
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.kernel == "attention+dropout")
            .count(),
        10
    );
    for r in &rows {
        assert!(r.pass, "{r:?}");
        assert!(r.max_abs_ref > 0.0, "reference is all zeros: {r:?}");
    }
    // the lead/gap mask: keys 0..70 padding (a first key tile of 64 all padding), a gap, full
    let m = harness::lead_gap_mask(3, 128, &Device::Cpu)?.to_vec2::<f32>()?;
    let valid = |r: &Vec<f32>| r.iter().map(|&v| v == 0.0).collect::<Vec<_>>();
    assert!(valid(&m[0])
        .iter()
        .enumerate()
        .all(|(j, &v)| v == (j >= 70)));
    assert!(valid(&m[1])
        .iter()
        .enumerate()
        .all(|(j, &v)| v != (5..98).contains(&j)));
    assert!(valid(&m[2]).iter().all(|&v| v));
    Ok(())
}

#[test]
fn padding_changes_attention_output_and_masked_keys_are_ignored() -> candle_core::Result<()> {
    // Changing a padded key's value must not change any output; changing an attended one must.
    let dev = Device::Cpu;
    let (b, t, h, d) = (2, 6, 2, 32);
    let c = h * d;
    let qkv = Tensor::randn(0f32, 1f32, (b, t, 3 * c), &dev)?;
    let mut m = vec![0f32; b * t];
    for j in 4..t {
        m[t + j] = -1e9; // batch 1: keys 4, 5 are padding
    }
    let mask = Tensor::from_vec(m, (b, t), &dev)?;
    let base = ops::attention(&qkv, &mask, h)?;
    let bump = |key: usize| -> candle_core::Result<Tensor> {
        let mut v = qkv.to_vec3::<f32>()?;
        for x in v[1][key][c..].iter_mut() {
            *x += 3.0; // key and value of batch 1, token `key`
        }
        Tensor::new(v, &dev)
    };
    let padded = ops::attention(&bump(5)?, &mask, h)?;
    let attended = ops::attention(&bump(2)?, &mask, h)?;
    let diff = |a: &Tensor| -> candle_core::Result<f32> {
        (a - &base)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()
    };
    assert_eq!(diff(&padded)?, 0.0);
    assert!(diff(&attended)? > 1e-3);
    Ok(())
}

#[test]
fn bad_inputs_are_refused_naming_the_kernel() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((4, 8), DType::F32, &dev)?;
    let wb = Tensor::zeros((2, 8), DType::F32, &dev)?;
    let err = |r: candle_core::Result<Tensor>| format!("{}", r.expect_err("must fail"));
    let e = err(ops::add_layer_norm(
        &x,
        None,
        &Tensor::zeros((2, 7), DType::F32, &dev)?,
        1e-5,
    ));
    assert!(e.contains("add_layer_norm") && e.contains("[2, 8]"), "{e}");
    let e = err(ops::add_layer_norm(
        &x,
        None,
        &wb.to_dtype(DType::BF16)?,
        1e-5,
    ));
    assert!(e.contains("mixed dtypes"), "{e}");
    let e = err(ops::add_layer_norm(
        &x.to_dtype(DType::F64)?,
        None,
        &wb,
        1e-5,
    ));
    assert!(e.contains("expected f32 or bf16"), "{e}");
    // A tracked input: these ops have no backward, so they must refuse it, not cut the gradient.
    let v = Var::from_tensor(&x)?;
    let e = err(ops::add_layer_norm(v.as_tensor(), None, &wb, 1e-5));
    assert!(e.contains("tracked by autograd"), "{e}");
    let e = err(ops::bias_gelu(&x, &Tensor::zeros(7, DType::F32, &dev)?));
    assert!(e.contains("bias_gelu") && e.contains("[8]"), "{e}");
    let qkv = Tensor::zeros((2, 3, 3 * 2 * 48), DType::F32, &dev)?;
    let mask = Tensor::zeros((2, 3), DType::F32, &dev)?;
    let e = err(ops::attention(&qkv, &mask, 2));
    assert!(e.contains("attention") && e.contains("head dim 48"), "{e}");
    let qkv = Tensor::zeros((2, 3, 3 * 64), DType::F32, &dev)?;
    let e = err(ops::attention(
        &qkv,
        &Tensor::zeros((2, 4), DType::F32, &dev)?,
        1,
    ));
    assert!(e.contains("mask") && e.contains("[2, 3]"), "{e}");
    let e = err(ops::attention(&qkv, &mask, 5));
    assert!(e.contains("not 3 x heads"), "{e}");
    Ok(())
}

#[test]
fn kernels_switch_parses() {
    assert_eq!("fused".parse::<Kernels>(), Ok(Kernels::Fused));
    assert_eq!("candle".parse::<Kernels>(), Ok(Kernels::Candle));
    assert!("cuda"
        .parse::<Kernels>()
        .unwrap_err()
        .contains("fused or candle"));
    for k in [
        "auto", "simt", "tc", "fa2", "fa2v2", "fa2q128", "fa2w8", "fa2v3", "fa2w8v3", "fa2w8v4",
        "fa2w8v5", "fa2wg", "fa2wg2", "fa2wg3", "fa2wg3e", "fa2wg4", "fa2wg4e", "fa2wg3s",
        "tf32x3",
    ] {
        assert_eq!(
            k.parse::<AttentionKernel>().map(|v| v.to_string()),
            Ok(k.to_string())
        );
    }
    assert!("flash"
        .parse::<AttentionKernel>()
        .unwrap_err()
        .contains("fa2q128"));
}

/// Which CUDA attention kernel runs (decided without a GPU).
#[test]
fn gelu_unroll_switch_parses() {
    assert_eq!(ops::gelu_unroll(None), Ok(true));
    assert_eq!(ops::gelu_unroll(Some("u1")), Ok(false));
    assert_eq!(ops::gelu_unroll(Some("u4")), Ok(true));
    let e = ops::gelu_unroll(Some("4")).unwrap_err();
    assert!(e.contains("MSLT_GELU=`4`") && e.contains("u4"), "{e}");
}

#[test]
fn attention_kernel_dispatch() {
    use AttentionKernel::*;
    let r = |k, env, dt, d, al| ops::resolve_attention_kernel(k, env, dt, d, 128, al);
    // default (runs 5-8 on the H100): for aligned 64-wide heads fa2v3 (T < 256), fa2w8v3
    // (256 <= T <= 512) or fa2w8 (T > 512) in bf16, tf32x3 in f32; CUDA cores otherwise
    assert_eq!(r(Auto, None, DType::BF16, 64, true).unwrap(), Fa2V3);
    let at = |t| ops::resolve_attention_kernel(Auto, None, DType::BF16, 64, t, true).unwrap();
    assert_eq!(
        (at(1), at(255), at(256), at(512), at(513), at(4096)),
        (Fa2V3, Fa2V3, Fa2W8V3, Fa2W8V3, Fa2W8, Fa2W8)
    );
    let f32_at = |t| ops::resolve_attention_kernel(Auto, None, DType::F32, 64, t, true).unwrap();
    assert_eq!((f32_at(128), f32_at(512)), (Tf32x3, Tf32x3));
    assert_eq!(r(Auto, None, DType::F32, 64, true).unwrap(), Tf32x3);
    assert_eq!(r(Auto, None, DType::BF16, 128, true).unwrap(), Simt);
    assert_eq!(r(Auto, None, DType::F32, 32, true).unwrap(), Simt);
    assert_eq!(r(Auto, None, DType::BF16, 64, false).unwrap(), Simt);
    assert_eq!(r(Auto, None, DType::F32, 64, false).unwrap(), Simt);
    // MSLT_ATTENTION where it fits, the default where it does not
    assert_eq!(r(Auto, Some("tc"), DType::BF16, 64, true).unwrap(), Tc);
    assert_eq!(r(Auto, Some("fa2"), DType::BF16, 64, true).unwrap(), Fa2);
    assert_eq!(
        r(Auto, Some("fa2q128"), DType::BF16, 64, true).unwrap(),
        Fa2Q128
    );
    assert_eq!(r(Auto, Some("simt"), DType::BF16, 64, true).unwrap(), Simt);
    assert_eq!(r(Auto, Some("simt"), DType::F32, 64, true).unwrap(), Simt);
    assert_eq!(r(Auto, Some("fa2"), DType::F32, 64, true).unwrap(), Tf32x3);
    assert_eq!(r(Auto, Some("fa2"), DType::F32, 128, true).unwrap(), Simt);
    assert_eq!(
        r(Auto, Some("tf32x3"), DType::F32, 64, true).unwrap(),
        Tf32x3
    );
    assert_eq!(
        r(Auto, Some("tf32x3"), DType::BF16, 64, true).unwrap(),
        Fa2V3
    );
    assert_eq!(r(Auto, Some("tf32x3"), DType::F32, 32, true).unwrap(), Simt);
    assert_eq!(r(Tf32x3, None, DType::F32, 64, true).unwrap(), Tf32x3);
    assert!(r(Tf32x3, None, DType::BF16, 64, true).is_err());
    assert!(r(Tf32x3, None, DType::F32, 64, false).is_err());
    let e = r(Auto, Some("flash"), DType::BF16, 64, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MSLT_ATTENTION") && e.contains("flash"), "{e}");
    // an explicit choice must fit (the environment does not override it)
    assert_eq!(r(Fa2, Some("tc"), DType::BF16, 64, true).unwrap(), Fa2);
    assert_eq!(r(Simt, None, DType::BF16, 64, true).unwrap(), Simt);
    let e = r(Fa2, None, DType::F32, 64, true).unwrap_err().to_string();
    assert!(
        e.contains("fa2") && e.contains("bf16") && e.contains("F32"),
        "{e}"
    );
    assert!(r(Tc, None, DType::BF16, 32, true).is_err());
    // fa2v3 / fa2w8v3: chosen by name up to T = 512
    let at = |k, env, t| ops::resolve_attention_kernel(k, env, DType::BF16, 64, t, true);
    assert_eq!(at(Auto, Some("fa2v3"), 512).unwrap(), Fa2V3);
    assert_eq!(at(Auto, Some("fa2w8v3"), 128).unwrap(), Fa2W8V3);
    assert_eq!(at(Fa2W8V3, None, 512).unwrap(), Fa2W8V3);
    // beyond 512 the environment falls back to the default, an explicit choice is an error
    assert_eq!(at(Auto, Some("fa2v3"), 513).unwrap(), Fa2W8);
    let e = at(Fa2V3, None, 513).unwrap_err().to_string();
    assert!(e.contains("T = 513") && e.contains("T <= 512"), "{e}");
    assert!(at(Fa2W8V3, None, 600).is_err());
    assert!(AttentionKernel::Fa2V3.has_dropout() && AttentionKernel::Fa2W8V3.has_dropout());
    // fa2w8v4 / fa2w8v5 (not yet run on a GPU, so not defaults): by name up to T = 512
    for (name, k) in [("fa2w8v4", Fa2W8V4), ("fa2w8v5", Fa2W8V5)] {
        assert_eq!(at(Auto, Some(name), 128).unwrap(), k);
        assert_eq!(at(Auto, Some(name), 513).unwrap(), Fa2W8);
        assert!(at(k, None, 513).is_err());
        assert!(k.has_dropout() && !k.needs_sm90());
    }
    // fa2wg (wgmma, sm_90 only: the launch checks the device): by name up to T = 512
    assert_eq!(at(Auto, Some("fa2wg"), 512).unwrap(), Fa2Wg);
    assert!(at(Fa2Wg, None, 513).is_err());
    assert!(Fa2Wg.has_dropout() && Fa2Wg.needs_sm90() && !Fa2V3.needs_sm90());
    assert_eq!(at(Auto, Some("fa2wg2"), 128).unwrap(), Fa2Wg2);
    assert!(at(Fa2Wg2, None, 600).is_err());
    assert!(Fa2Wg2.has_dropout() && Fa2Wg2.needs_sm90());
    // fa2wg3 / fa2wg3e / fa2wg4 / fa2wg4e (not yet run on a GPU, so not defaults): by name up to
    // T = 512, sm_90
    for (name, k) in [
        ("fa2wg3", Fa2Wg3),
        ("fa2wg3e", Fa2Wg3E),
        ("fa2wg4", Fa2Wg4),
        ("fa2wg4e", Fa2Wg4E),
        ("fa2wg3s", Fa2Wg3S),
    ] {
        assert_eq!(at(Auto, Some(name), 512).unwrap(), k);
        assert_eq!(at(Auto, Some(name), 513).unwrap(), Fa2W8);
        assert!(at(k, None, 513).is_err());
        assert!(ops::resolve_attention_kernel(k, None, DType::F32, 64, 128, true).is_err());
        assert!(k.has_dropout() && k.needs_sm90());
    }
    // fa2wg3e / fa2wg4e hold the Q tile (64 rows per warpgroup x 64 bf16) in dynamic shared
    // memory; no other kernel takes any
    assert_eq!(Fa2Wg3E.dynamic_shared_bytes(), 128 * 64 * 2);
    assert_eq!(Fa2Wg4E.dynamic_shared_bytes(), 64 * 64 * 2);
    for k in AttentionKernel::NAMED {
        if !matches!(k, Fa2Wg3E | Fa2Wg4E) {
            assert_eq!(k.dynamic_shared_bytes(), 0, "{k}");
        }
    }
    // no environment: the defaults stay fa2v3 / fa2w8v3 / fa2w8
    for (t, k) in [(128, Fa2V3), (256, Fa2W8V3), (512, Fa2W8V3), (513, Fa2W8)] {
        assert_eq!(at(Auto, None, t).unwrap(), k);
    }
}

/// The 512-key limit of fa2v3 / fa2w8v3 / fa2w8v4 / fa2w8v5 / the fa2wg kernels in Rust is the
/// size of their shared mask row in the kernel source.
#[test]
fn fa2p_max_t_matches_the_kernel_source() {
    let src = include_str!("../../kernels-cu/attention.cu");
    let def = format!("#define FA2P_MAXT {}\n", ops::FA2P_MAX_T);
    assert!(src.contains(&def), "attention.cu has no `{def}`");
    for k in [
        AttentionKernel::Fa2V3,
        AttentionKernel::Fa2W8V3,
        AttentionKernel::Fa2W8V4,
        AttentionKernel::Fa2W8V5,
        AttentionKernel::Fa2Wg,
        AttentionKernel::Fa2Wg2,
        AttentionKernel::Fa2Wg3,
        AttentionKernel::Fa2Wg3E,
        AttentionKernel::Fa2Wg4,
        AttentionKernel::Fa2Wg4E,
        AttentionKernel::Fa2Wg3S,
    ] {
        assert_eq!(k.max_seq_len(), Some(ops::FA2P_MAX_T));
    }
    assert_eq!(AttentionKernel::Fa2W8.max_seq_len(), None);
}

/// On CPU every attention kernel choice runs the one CPU reference.
#[test]
fn attention_kernel_choice_is_the_reference_on_cpu() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let qkv = Tensor::randn(0f32, 1.0, (2, 9, 3 * 2 * 64), &dev)?.to_dtype(DType::BF16)?;
    let mask = harness::padding_mask(2, 9, 3, &dev)?;
    let want = ops::attention(&qkv, &mask, 2)?.to_dtype(DType::F32)?;
    // simt and every named kernel that takes bf16 (all but tf32x3)
    let bf16 = AttentionKernel::NAMED
        .into_iter()
        .filter(|k| k.fits(DType::BF16, 64, 9));
    let kernels: Vec<_> = [AttentionKernel::Simt].into_iter().chain(bf16).collect();
    assert_eq!(kernels.len(), 17);
    for k in kernels {
        let got = ops::attention_with(&qkv, &mask, 2, k)?.to_dtype(DType::F32)?;
        let d = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "{k}");
    }
    Ok(())
}

#[test]
fn timing_harness_runs_on_cpu() -> candle_core::Result<()> {
    let rows = harness::bench(
        &Device::Cpu,
        &BenchShapes::tiny(),
        &Select::all(),
        &mut |_| {},
    )?;
    print!("{}", harness::bench_table(&rows));
    // copy + per dtype: (2 LN + GELU) x (fused, candle) + attention and attention with dropout,
    // each x (fused, fused without padding, candle); the named-kernel rows, the `into` rows
    // (kernel into a buffer allocated once) and the pool A/B of the copy are CUDA-only
    assert_eq!(rows.len(), 1 + 2 * (3 * 2 + 3 + 3));
    assert_eq!(
        rows.iter().filter(|r| r.op == "attention+dropout").count(),
        6
    );
    assert!(rows.iter().any(|r| r.shape.ends_with(" nopad")));
    assert!(rows
        .iter()
        .all(|r| r.median_us > 0.0 && r.min_us <= r.max_us));
    Ok(())
}

/// Every `.cu` compiles to PTX with NVRTC and exports its entry points. Runs wherever the NVRTC
/// library can be loaded (no GPU needed); skipped with a message elsewhere, unless
/// `MSLT_REQUIRE_NVRTC=1` (CI sets it after fetching the library) makes a missing one a failure.
#[test]
fn every_kernel_source_compiles_with_nvrtc() {
    let nv = match nvrtc::Nvrtc::load() {
        Ok(nv) => nv,
        Err(e) => {
            assert!(
                std::env::var("MSLT_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "MSLT_REQUIRE_NVRTC=1 but {e}"
            );
            eprintln!("SKIPPED every_kernel_source_compiles_with_nvrtc: {e}");
            return;
        }
    };
    let version = nv.version().expect("nvrtcVersion");
    // sm_90a: what an sm_90 device compiles attention.cu for (its fa2wg entry points use wgmma;
    // elsewhere they compile to a trap)
    let wg = |ptx: &str| ptx.contains("wgmma.mma_async");
    let att = |arch| {
        nv.compile_ptx(&mslt_kernels::ATTENTION, arch)
            .expect("attention.cu")
    };
    assert!(wg(&att("sm_90a")) && !wg(&att("sm_90")) && !wg(&att("sm_80")));
    // optim.cu rounds every operation on its own (the CPU update's bits): no fused multiply-add
    let optim = nv
        .compile_ptx(&mslt_kernels::OPTIM, "sm_90")
        .expect("optim.cu");
    assert!(
        optim.contains("mul.rn.f32") && !optim.contains("fma."),
        "{optim}"
    );
    for arch in ["sm_80", "sm_90", "sm_90a"] {
        let out = nvrtc::check_all(&nv, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for (file, entries, bytes) in &out {
            eprintln!(
                "NVRTC {version:?} ({}) {arch}: {file}: {entries} entries, {bytes} bytes of PTX",
                nv.origin
            );
        }
        assert_eq!(out.len(), mslt_kernels::SOURCES.len());
    }
    // ptxas (MSLT_PTXAS, fetched with NVRTC by scripts/nvrtc-env.sh) assembles the PTX as the
    // driver's JIT would and reports registers and spills: no kernel may spill.
    match std::env::var_os("MSLT_PTXAS") {
        Some(ptxas) => {
            let mut dyn_checked = 0;
            for arch in ["sm_80", "sm_90", "sm_90a"] {
                let mut n = 0;
                for src in mslt_kernels::SOURCES {
                    let ptx = nv.compile_ptx(src, arch).expect("compiled above");
                    let usage = nvrtc::assemble(std::path::Path::new(&ptxas), src.file, &ptx, arch)
                        .unwrap_or_else(|e| panic!("{arch}: {e}"));
                    assert_eq!(usage.len(), src.entries.len(), "{}: {usage:?}", src.file);
                    for u in &usage {
                        eprintln!("ptxas {arch} {u:?}");
                        assert!(u.registers > 0, "{arch} {u:?}: no register count parsed");
                        assert_eq!(
                            (u.spill_stores, u.spill_loads),
                            (0, 0),
                            "{arch} {u:?} spills"
                        );
                        // fa2wg3 / fa2wg4 overlap the softmax with an in-flight wgmma: ptxas
                        // must not serialise it (nor any other kernel's)
                        assert!(!u.wgmma_serialized, "{arch} {u:?}: wgmma serialised");
                        // fa2wg3e / fa2wg4e: static + dynamic shared memory (the launch opts in
                        // beyond 48 KB) keeps 2 / 4 blocks per SM of an H100 (228 KB, 1 KB
                        // reserved per block)
                        for (name, k, blocks) in [
                            (
                                "attention_fwd_bf16_d64_fa2_wg3e",
                                AttentionKernel::Fa2Wg3E,
                                2,
                            ),
                            (
                                "attention_fwd_bf16_d64_fa2_wg4e",
                                AttentionKernel::Fa2Wg4E,
                                4,
                            ),
                        ] {
                            if arch == "sm_90a" && u.entry.trim_end_matches("_dropout") == name {
                                let st = u.shared_bytes as usize;
                                let block = st + k.dynamic_shared_bytes() + 1024;
                                assert!(block * blocks <= 228 * 1024, "{u:?}: {block} B per block");
                                assert!(st <= 48 * 1024, "{u:?}");
                                dyn_checked += 1;
                            }
                        }
                        n += 1;
                    }
                }
                assert_eq!(
                    n,
                    mslt_kernels::SOURCES
                        .iter()
                        .map(|s| s.entries.len())
                        .sum::<usize>()
                );
            }
            assert_eq!(dyn_checked, 4, "fa2wg3e, fa2wg4e and their _dropout twins");
        }
        None => {
            assert!(
                std::env::var("MSLT_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "MSLT_REQUIRE_NVRTC=1 but MSLT_PTXAS is not set (scripts/nvrtc-env.sh sets both)"
            );
            eprintln!("SKIPPED the ptxas part: MSLT_PTXAS not set (scripts/nvrtc-env.sh)");
        }
    }
    // A broken source, and bad inline PTX (NVRTC runs ptxas for a real sm_XX), are reported
    // with the compiler's log, naming the file.
    for (file, code, needle) in [
        (
            "bad.cu",
            "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
            "undefined_name",
        ),
        (
            "bad_asm.cu",
            "extern \"C\" __global__ void k(float* x) { float y; asm(\"ex2.approx.nonsense.f32 %0, %1;\" : \"=f\"(y) : \"f\"(x[0])); x[0] = y; }",
            "nonsense",
        ),
    ] {
        let bad = mslt_kernels::Source {
            module: "bad",
            file,
            code,
            entries: &["k"],
            sm90a: false,
        };
        let e = nv
            .compile_ptx(&bad, "sm_90")
            .expect_err("must fail")
            .to_string();
        assert!(e.contains(file) && e.contains(needle), "{e}");
    }
}

#[test]
fn check_and_bench_run_the_selected_parts_only() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let only = |parts: &[Part]| Select {
        parts: parts.to_vec(),
        attention_kernels: vec![AttentionKernel::Fa2],
    };
    let rows = harness::check(
        &dev,
        &CheckShapes::small(),
        &only(&[Part::Gelu]),
        &mut |_| {},
    )?;
    assert_eq!(rows.len(), 2 * 4);
    assert!(rows.iter().all(|r| r.kernel == "bias_gelu" && r.pass));
    // named kernels are CUDA-only: nothing to check on the CPU
    let rows = harness::check(
        &dev,
        &CheckShapes::small(),
        &only(&[Part::Named]),
        &mut |_| {},
    )?;
    assert!(rows.is_empty());
    let rows = harness::bench(
        &dev,
        &BenchShapes::tiny(),
        &only(&[Part::Attention]),
        &mut |_| {},
    )?;
    assert_eq!(rows.len(), 2 * 3);
    assert!(rows.iter().all(|r| r.op == "attention"));
    Ok(())
}

#[test]
fn select_lists_parse_and_name_bad_entries() {
    let all = Select::all();
    let k = Select::parse_list("--attention-kernels", "fa2, tf32x3", &all.attention_kernels);
    assert_eq!(k, Ok(vec![AttentionKernel::Fa2, AttentionKernel::Tf32x3]));
    assert_eq!(
        Select::parse_list("--only", "all", &all.parts),
        Ok(Part::ALL.to_vec())
    );
    assert_eq!(Select::parse_list("--only", "none", &all.parts), Ok(vec![]));
    let e = Select::parse_list("--only", "ln,attn", &all.parts).unwrap_err();
    assert!(e.contains("--only") && e.contains("`attn`"), "{e}");
    let e = Select::parse_list("--attention-kernels", "fa3", &all.attention_kernels).unwrap_err();
    assert!(e.contains("`fa3`"), "{e}");
    // fits: which kernel takes which inputs
    assert!(AttentionKernel::Fa2.fits(DType::BF16, 64, 128));
    assert!(AttentionKernel::Fa2W8.fits(DType::BF16, 64, 4096));
    assert!(AttentionKernel::Fa2V2.fits(DType::BF16, 64, 128));
    assert!(!AttentionKernel::Fa2W8.fits(DType::F32, 64, 128));
    assert!(!AttentionKernel::Fa2.fits(DType::F32, 64, 128));
    assert!(!AttentionKernel::Tc.fits(DType::BF16, 128, 128));
    assert!(AttentionKernel::Tf32x3.fits(DType::F32, 64, 4096));
    assert!(AttentionKernel::Simt.fits(DType::F32, 32, 4096));
    assert!(AttentionKernel::Fa2V3.fits(DType::BF16, 64, 512));
    assert!(!AttentionKernel::Fa2V3.fits(DType::BF16, 64, 513));
    assert!(!AttentionKernel::Fa2W8V3.fits(DType::F32, 64, 128));
}

/// Dropout inside the attention op (CPU side, the same Philox draw as the CUDA kernels): equal
/// to the Candle reference with the same mask, different with another seed, unbiased over
/// seeds, the identity at p = 0, and p outside [0, 1) refused.
#[test]
fn attention_dropout_matches_the_philox_reference() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (b, t, h, d) = (3, 21, 2, 32);
    let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * h * d), &dev)?;
    let mask = harness::padding_mask(b, t, 5, &dev)?;
    let max_diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    };
    assert!(ops::attention_dropout_fits(&qkv, h));
    let got = ops::attention_dropout(&qkv, &mask, h, 0.1, 7)?;
    let want = mslt_kernels::reference::attention_dropout(&qkv, &mask, h, 0.1, 7)?;
    assert!(max_diff(&got, &want)? < 1e-5);
    // negative controls: another seed, no dropout
    let other = mslt_kernels::reference::attention_dropout(&qkv, &mask, h, 0.1, 8)?;
    assert!(max_diff(&got, &other)? > 1e-2);
    let plain = ops::attention(&qkv, &mask, h)?;
    assert!(max_diff(&got, &plain)? > 1e-2);
    assert!(max_diff(&ops::attention_dropout(&qkv, &mask, h, 0.0, 7)?, &plain)? < 1e-6);
    // Inverted dropout is unbiased: over n seeds, every element's mean is within 6 standard
    // errors (its own sample spread / sqrt(n)) of the plain output. Fixed inputs (not randn:
    // a test over fresh random inputs failed 1 run in a few on its old max-error bound), so
    // the draw is the same on every run; dropout without the 1 / (1 - p) rescale fails it.
    let qkv = Tensor::arange(0u32, (b * t * 3 * h * d) as u32, &dev)?
        .to_dtype(DType::F32)?
        .affine(0.618_034, 0.0)?
        .sin()?
        .affine(1.7, 0.0)?
        .reshape((b, t, 3 * h * d))?; // (B, T, 3C), values in [-1.7, 1.7]
    let plain = ops::attention(&qkv, &mask, h)?;
    let (n, p) = (400u64, 0.3);
    let (mut sum, mut sq) = (plain.zeros_like()?, plain.zeros_like()?);
    for seed in 0..n {
        let o = ops::attention_dropout(&qkv, &mask, h, p, 1000 + seed)?;
        sum = (sum + &o)?;
        sq = (sq + o.sqr()?)?;
    }
    let mean = (&sum / n as f64)?;
    let var = ((sq / n as f64)? - mean.sqr()?)?.relu()?;
    let se = (var.sqrt()? / (n as f64).sqrt())?;
    let z = ((&mean - &plain)?.abs()? / (&se + 1e-6)?)?;
    let z_max = z.max_all()?.to_scalar::<f32>()?;
    assert!(
        z_max < 6.0,
        "the mean over {n} seeds is {z_max:.1} standard errors from the plain output"
    );
    let biased = ((&mean * (1.0 - p))? - &plain)?
        .abs()?
        .div(&(&se + 1e-6)?)?;
    assert!(
        biased.max_all()?.to_scalar::<f32>()? > 12.0,
        "negative control: the test cannot see a missing 1 / (1 - p)"
    );
    for p in [-0.1, 1.0] {
        let e = ops::attention_dropout(&qkv, &mask, h, p, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dropout probability"), "{e}");
    }
    Ok(())
}

/// The CUDA source's Philox (`philox4x32_10` in kernels-cu/attention.cu, which the `_dropout`
/// kernels run) compiled as host C++ and run on Random123's known-answer vectors and on the
/// counters of a dropout mask, against `mslt_kernels::philox`: the two implementations agree,
/// so the CPU op and the references draw what the kernels draw.
#[test]
fn cuda_philox_source_matches_the_rust_one() {
    let src = include_str!("../../kernels-cu/attention.cu");
    let start = src
        .find("__device__ __forceinline__ void philox4x32_10(")
        .expect("philox4x32_10 in attention.cu");
    let end = start + src[start..].find("\n}\n").expect("end of philox4x32_10") + 3;
    let func = &src[start..end];
    let dir = tempfile::tempdir().unwrap();
    let cpp = dir.path().join("philox.cpp");
    let prog = format!(
        "#include <cstdio>\n#include <cstdint>\n#define __device__\n#define __forceinline__ inline\n\
         static unsigned __umulhi(unsigned a, unsigned b) {{ return (unsigned)(((uint64_t)a * b) >> 32); }}\n\
         {func}\nint main() {{ unsigned c[4], k0, k1;\n\
         while (scanf(\"%u %u %u %u %u %u\", &c[0], &c[1], &c[2], &c[3], &k0, &k1) == 6) {{\n\
         philox4x32_10(c, k0, k1); printf(\"%u %u %u %u\\n\", c[0], c[1], c[2], c[3]); }} }}\n"
    );
    std::fs::write(&cpp, prog).unwrap();
    let exe = dir.path().join("philox");
    let cc = std::process::Command::new("c++")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&cpp)
        .output()
        .expect("a C++ compiler (c++) on the PATH");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut cases: Vec<([u32; 4], [u32; 2])> = vec![
        ([0; 4], [0; 2]),
        ([u32::MAX; 4], [u32::MAX; 2]),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
        ),
    ];
    let seed = 0xfeed_beef_1234_5678u64;
    for (i, j, h, b) in [
        (0, 0, 0, 0),
        (9, 31, 3, 7),
        (511, 510, 11, 255),
        (16, 2, 1, 1),
    ] {
        cases.push(([j >> 1, i & !8, h, b], [seed as u32, (seed >> 32) as u32]));
    }
    let input: String = cases
        .iter()
        .map(|(c, k)| format!("{} {} {} {} {} {}\n", c[0], c[1], c[2], c[3], k[0], k[1]))
        .collect();
    let mut child = std::process::Command::new(&exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let got: Vec<[u32; 4]> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<u32> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect();
    assert_eq!(got.len(), cases.len());
    assert_eq!(got[0], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    for ((c, k), g) in cases.iter().zip(&got) {
        assert_eq!(
            *g,
            mslt_kernels::philox::philox4x32_10(*c, *k),
            "{c:?} {k:?}"
        );
    }
}

/// A failed attention check says where its wrong elements lie: errors injected into the Candle
/// reference's output along one coordinate at a time show up along that coordinate only.
#[test]
fn failed_attention_checks_locate_the_wrong_elements() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (b, t, h, d) = (2, 128, 3, 64);
    let qkv = Tensor::randn(0f32, 1f32, (b, t, 3 * h * d), &dev)?;
    let mask = harness::padding_mask(b, t, 5, &dev)?;
    let want = mslt_kernels::reference::attention(&qkv, &mask, h)?; // (B, T, H * D)
    let w = want.flatten_all()?.to_vec1::<f32>()?;
    let at = |bi: usize, ti: usize, hi: usize, di: usize| ((bi * t + ti) * h + hi) * d + di;
    let check = |g: Vec<f32>| {
        let got = Tensor::from_vec(g, (b, t, h * d), &dev)?;
        harness::compare_attention(
            "k",
            DType::F32,
            "s".into(),
            "ref",
            &got,
            &want,
            (b, t, h, d),
        )
    };

    // the reference itself: a pass, no spread
    let ok = check(w.clone())?;
    assert!(ok.pass && ok.spread.is_none(), "{ok:?}");

    // batch 1, head 2: every row halved (a row-sum error)
    let mut g = w.clone();
    for ti in 0..t {
        for di in 0..d {
            g[at(1, ti, 2, di)] *= 0.5;
        }
    }
    let r = check(g)?;
    assert!(!r.pass);
    let s = r.spread.expect("a failed attention row has a spread");
    assert!(s.contains(&format!("{t} of {} rows wrong, {t} of them the reference row times one factor (median factor 0.500)", b * t * h)), "{s}");
    assert!(
        s.contains("by b: 1 of 2 {1: ") && s.contains("h: 1 of 3 {2: "),
        "{s}"
    );
    assert!(
        s.contains("t/64: 2 of 2") && s.contains("d/8: 8 of 8"),
        "{s}"
    );

    // the head dim's column group 3 of query rows 64-79 (tile 1, warp 0) in every batch and head
    let mut g = w.clone();
    for (bi, ti, hi, di) in (0..b).flat_map(|bi| {
        (64..80)
            .flat_map(move |ti| (0..h).flat_map(move |hi| (24..32).map(move |di| (bi, ti, hi, di))))
    }) {
        g[at(bi, ti, hi, di)] += 1.0;
    }
    let s = check(g)?.spread.expect("spread");
    println!("{s}");
    let n = b * 16 * h * 8;
    assert!(
        s.starts_with(&format!("{n} of {} elements wrong", w.len())),
        "{s}"
    );
    assert!(
        s.contains("0 of them the reference row times one factor"),
        "{s}"
    );
    assert!(s.contains(&format!("t/64: 1 of 2 {{1: {n}}}")), "{s}");
    assert!(s.contains(&format!("t%64/16: 1 of 4 {{0: {n}}}")), "{s}");
    assert!(s.contains("t%16/8: 2 of 2"), "{s}");
    assert!(s.contains(&format!("d/8: 1 of 8 {{3: {n}}}")), "{s}");
    assert!(s.contains("first b0 t64 h0 d24"), "{s}");

    // one non-finite element: first and worst name it
    let mut g = w.clone();
    g[at(1, 77, 1, 5)] = f32::NAN;
    let r = check(g)?;
    assert_eq!(r.nonfinite, 1);
    let s = r.spread.expect("spread");
    assert!(
        s.starts_with(&format!("1 of {} elements wrong", w.len())),
        "{s}"
    );
    assert!(
        s.contains("first b1 t77 h1 d5 (got NaN") && s.contains("worst b1 t77 h1 d5"),
        "{s}"
    );
    assert!(
        s.contains("t%64/16: 1 of 4 {0: 1}") && s.contains("t%16/8: 1 of 2 {1: 1}"),
        "{s}"
    );
    Ok(())
}
