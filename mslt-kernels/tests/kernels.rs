//! CPU tests of the fused-kernel crate: the custom ops' CPU side against the composed Candle
//! references at many shapes (masked/padded batches included), input validation, dispatch, and
//! the NVRTC compile check of every `.cu` source.

use candle_core::{DType, Device, Tensor, Var};
use mslt_kernels::harness::{self, BenchShapes, CheckShapes};
use mslt_kernels::{nvrtc, ops, Kernels};

#[test]
fn cpu_ops_match_candle_references() -> candle_core::Result<()> {
    let rows = harness::check(&Device::Cpu, &CheckShapes::small())?;
    print!("{}", harness::check_table(&rows));
    // 7 LN shapes x 2 (residual or not) + 4 GELU + 5 attention, in f32 and bf16.
    assert_eq!(rows.len(), 2 * (7 * 2 + 4 + 5));
    for r in &rows {
        assert!(r.pass, "{r:?}");
        assert!(r.max_abs_ref > 0.0, "reference is all zeros: {r:?}");
    }
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
}

#[test]
fn timing_harness_runs_on_cpu() -> candle_core::Result<()> {
    let rows = harness::bench(&Device::Cpu, &BenchShapes::tiny())?;
    print!("{}", harness::bench_table(&rows));
    // copy + per dtype: (2 LN + GELU) x (fused, candle) + attention x (fused, candle)
    assert_eq!(rows.len(), 1 + 2 * (3 * 2 + 2));
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
    for arch in ["sm_80", "sm_90"] {
        let out = nvrtc::check_all(&nv, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for (file, entries, bytes) in &out {
            eprintln!(
                "NVRTC {version:?} ({}) {arch}: {file}: {entries} entries, {bytes} bytes of PTX",
                nv.origin
            );
        }
        assert_eq!(out.len(), mslt_kernels::SOURCES.len());
    }
    // A broken source is reported with NVRTC's log, naming the file.
    let bad = mslt_kernels::Source {
        module: "bad",
        file: "bad.cu",
        code: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        entries: &["k"],
    };
    let e = nv
        .compile_ptx(&bad, "sm_90")
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("bad.cu") && e.contains("undefined_name"), "{e}");
}
