//! Bad input: each case fails with a one-line error that names the problem.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use std::collections::HashMap;

fn tiny() -> String {
    fixture("tiny/model").to_str().unwrap().to_string()
}

/// Writes `input_ids` to `dir/ids.safetensors`.
fn ids_file(dir: &std::path::Path, ids: Tensor) -> std::path::PathBuf {
    let p = dir.join("ids.safetensors");
    let mut m = HashMap::new();
    m.insert("input_ids".to_string(), ids);
    save(&m, &p);
    p
}

/// `mslt-cli encode --model MODEL --input INPUT` expected to fail; its one-line error.
fn encode_err(model: &str, input: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec![
        "encode",
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        "/tmp/o.st",
    ];
    args.extend_from_slice(extra);
    run_err(&args)
}

#[test]
fn missing_input_file() {
    let e = encode_err(
        &tiny(),
        std::path::Path::new("/no/such/ids.safetensors"),
        &[],
    );
    assert!(
        e.contains("/no/such/ids.safetensors") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn missing_model_directory() {
    let e = encode_err("/no/such/model", std::path::Path::new("x"), &[]);
    assert!(
        e.contains("/no/such/model") && e.contains("no such directory"),
        "{e}"
    );
}

#[test]
fn corrupt_safetensors_weights() {
    let d = tiny_model_copy();
    std::fs::write(
        d.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids_file(
        tmp.path(),
        Tensor::new(&[[2i64, 7, 9]], &Device::Cpu).unwrap(),
    );
    let e = encode_err(d.path().to_str().unwrap(), &ids, &[]);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn corrupt_safetensors_input() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.safetensors");
    std::fs::write(&ids, b"garbage").unwrap();
    let e = encode_err(&tiny(), &ids, &[]);
    assert!(
        e.contains("ids.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn config_with_a_wrong_field_type() {
    let d = tiny_model_copy();
    let p = d.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"hidden_size\": 64", "\"hidden_size\": \"64\"");
    std::fs::write(&p, text).unwrap();
    let e = run_err(&["inspect", d.path().to_str().unwrap()]);
    assert!(
        e.contains("config.json")
            && e.contains("field `hidden_size`")
            && e.contains("expected a non-negative integer"),
        "{e}"
    );
}

#[test]
fn model_directory_without_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("s.txt");
    std::fs::write(&text, "hello world\n").unwrap();
    let e = run_err(&[
        "encode",
        "--model",
        &tiny(),
        "--text-file",
        text.to_str().unwrap(),
        "--output",
        "/tmp/o.st",
    ]);
    assert!(
        e.contains("tokenizer") && e.contains("neither tokenizer.json nor vocab.txt"),
        "{e}"
    );
}

#[test]
fn ids_beyond_the_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids_file(
        tmp.path(),
        Tensor::new(&[[2i64, 7, 9], [2, 600, 3]], &Device::Cpu).unwrap(),
    );
    let e = encode_err(&tiny(), &ids, &[]);
    assert!(
        e.contains("input_ids[1][1] = 600") && e.contains("[0, 512)"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let d = tiny_model_copy();
    let p = d.path().join("model.safetensors");
    let mut w = load(&p);
    w.remove("bert.encoder.layer.1.output.dense.weight");
    save(&w, &p);
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids_file(tmp.path(), Tensor::new(&[[2i64, 7]], &Device::Cpu).unwrap());
    let e = encode_err(d.path().to_str().unwrap(), &ids, &[]);
    assert!(
        e.contains("`bert.encoder.layer.1.output.dense.weight` is missing")
            && e.contains("[64, 256]"),
        "{e}"
    );
}

#[test]
fn mis_shaped_tensor_names_expected_and_found() {
    let d = tiny_model_copy();
    let p = d.path().join("model.safetensors");
    let mut w = load(&p);
    let bad = Tensor::zeros((64, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    w.insert("bert.encoder.layer.0.attention.self.key.weight".into(), bad);
    save(&w, &p);
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids_file(tmp.path(), Tensor::new(&[[2i64, 7]], &Device::Cpu).unwrap());
    let e = encode_err(d.path().to_str().unwrap(), &ids, &[]);
    assert!(e.contains("`bert.encoder.layer.0.attention.self.key.weight` has shape [64, 32], expected [64, 64]"), "{e}");
}

#[test]
fn float_ids_and_unknown_device() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids_file(
        tmp.path(),
        Tensor::new(&[[2f32, 7.]], &Device::Cpu).unwrap(),
    );
    let e = encode_err(&tiny(), &ids, &[]);
    assert!(
        e.contains("`input_ids` has dtype F32, expected an integer type"),
        "{e}"
    );
    let e = encode_err(&tiny(), &ids, &["--device", "tpu"]);
    assert!(e.contains("device `tpu`"), "{e}");
}

#[test]
fn bad_frozen_layer_switches() {
    let base = [
        "bench",
        "--model-config",
        "tiny",
        "--stages",
        "1,2",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        run_err(&a)
    };
    let e = with(&["--kernels", "cuda"]);
    assert!(
        e.contains("--kernels") && e.contains("fused or candle"),
        "{e}"
    );
    let e = with(&["--frozen-dropout", "maybe"]);
    assert!(
        e.contains("--frozen-dropout") && e.contains("on or off"),
        "{e}"
    );
    let e = with(&["--frozen-dtype", "f16"]);
    assert!(
        e.contains("--frozen-dtype") && e.contains("f32 or bf16"),
        "{e}"
    );
    let e = with(&["--matmul-precision", "bf16"]);
    assert!(
        e.contains("matmul-precision") && e.contains("\"bf16\"") && e.contains("tf32"),
        "{e}"
    );
    // On CPU `--kernels fused` is accepted and falls back to Candle's ops (no fused layers).
    let out = common::run_ok(&[
        "bench",
        "--model-config",
        "tiny",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--frozen-dropout",
        "off",
        "--kernels",
        "fused",
        "--stages",
        "1,2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "kernels fused, frozen dtype F32, frozen dropout off (fused layers per row: [0, 0, 0"
        ),
        "{text}"
    );
}

#[test]
fn data_parallel_without_nccl_or_with_a_bad_world_is_a_clear_error() {
    let base = [
        "train",
        "--data",
        "/no/such/data",
        "--out",
        "/tmp/mslt-dp-never",
    ];
    let with = |extra: &[&str], env: &[(&str, &str)]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        run_err_env(&a, env)
    };
    if !cfg!(feature = "nccl") {
        let e = with(&["--nproc", "2"], &[]);
        assert!(
            e.contains("--nproc 2") && e.contains("needs NCCL") && e.contains("--features nccl"),
            "{e}"
        );
        let e = with(&[], &[("WORLD_SIZE", "2"), ("RANK", "1")]);
        assert!(e.contains("2 ranks needs NCCL"), "{e}");
    }
    let e = with(&["--nproc", "0"], &[]);
    assert!(e.contains("--nproc 0: expected at least 1"), "{e}");
    let e = with(&["--matmul-precision", "fp8"], &[]);
    assert!(e.contains("matmul_precision \"fp8\": expected f32"), "{e}");
    let e = with(&["--rank", "1"], &[]);
    assert!(e.contains("need --world-size"), "{e}");
    let e = with(&["--world-size", "2", "--rank", "2"], &[]);
    assert!(e.contains("rank 2 is outside world size 2"), "{e}");
    let e = with(&[], &[("WORLD_SIZE", "2")]);
    assert!(e.contains("RANK is not"), "{e}");
    let e = with(&["--nproc", "2"], &[("WORLD_SIZE", "2"), ("RANK", "0")]);
    assert!(e.contains("do not combine"), "{e}");
}
