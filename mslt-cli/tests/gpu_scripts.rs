//! The GPU scripts run once per lent GPU, never in CI, so a flag renamed in the CLI or a slip in
//! their control flow would cost a GPU session. This runs `scripts/gpu-all.sh` (gpu-check.sh,
//! then gpu-dist-check.sh) on the CPU with a stand-in binary that hands every command line to
//! the real `mslt-cli` (which parses it, then stops at `--device cuda` on this build) and reports
//! success, so every branch runs. A command line the CLI rejects (clap's exit code 2) fails the
//! test. (It found that gpu-dist-check.sh stopped at its library check on every machine.)

use std::path::Path;
use std::process::Command;

const STANDIN: &str = r#"#!/usr/bin/env bash
"$REAL_MSLT_CLI" "$@" > /dev/null 2> "$STANDIN_ERR"
rc=$?
if [ "$rc" -eq 2 ]; then echo "REJECTED: $*"; cat "$STANDIN_ERR"; exit 2; fi
if [ -n "${STANDIN_FAIL:-}" ] && [[ "$* " == *"$STANDIN_FAIL"* ]]; then echo "RAN (failing) $*"; exit 1; fi
echo "RAN ${MSLT_ATTENTION:+MSLT_ATTENTION=$MSLT_ATTENTION }${MSLT_ATTENTION_DROPOUT:+MSLT_ATTENTION_DROPOUT=$MSLT_ATTENTION_DROPOUT }${MSLT_GELU:+MSLT_GELU=$MSLT_GELU }${MSLT_CUDA_POOL:+MSLT_CUDA_POOL=$MSLT_CUDA_POOL }${MSLT_OPTIMIZER_KERNEL:+MSLT_OPTIMIZER_KERNEL=$MSLT_OPTIMIZER_KERNEL }$*"
exit 0
"#;

/// Runs `scripts/gpu-all.sh` with the stand-ins and `envs`; returns its stdout.
fn run_gpu_all(envs: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    std::fs::create_dir(&dist).unwrap();
    for name in ["mslt-cli", "mslt-cli-nccl"] {
        let p = dist.join(name);
        std::fs::write(&p, STANDIN).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    // gpu-all.sh runs in the repo root with dist/ carried over: a root of links and the stand-ins
    for d in ["scripts", "tools"] {
        std::os::unix::fs::symlink(root.join(d), tmp.path().join(d)).unwrap();
    }
    let o = Command::new("bash")
        .arg("scripts/gpu-all.sh")
        .arg("out")
        .current_dir(tmp.path())
        .env("REAL_MSLT_CLI", env!("CARGO_BIN_EXE_mslt-cli"))
        .env("STANDIN_ERR", tmp.path().join("err"))
        .env("TORCH_PY", "true")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{all}");
    assert!(
        !all.contains("REJECTED"),
        "a GPU script passes a command line the CLI rejects"
    );
    all
}

/// How many command lines the stand-ins ran that contain `s`.
fn count_ran(all: &str, s: &str) -> usize {
    all.lines()
        .filter(|l| l.starts_with("RAN ") && l.contains(s))
        .count()
}

#[test]
fn gpu_scripts_pass_only_command_lines_the_cli_accepts() {
    let all = run_gpu_all(&[("NEW_KERNELS", "fa2v2 fa2w8")]);
    let ran = |s: &str| count_ran(&all, s);
    // gpu-check: the default check, one check and one timing per new attention kernel (all
    // "pass" here), the base benches (incl. one per new kernel)
    // ... and the attention dropout inside the kernels: one check of the defaults and one per
    // new kernel (each in its own process), one timing for the default kernel and one per new
    // kernel, and the base benches with frozen dropout on, with it inside the kernels and on
    // Candle ops (f32, bf16); the ablation (ABLATION_KERNELS unset: fa2wg3s) checked and timed
    // once each
    assert_eq!(ran("kernels check"), 8, "{all}");
    assert_eq!(ran("kernels check --device cuda --only optim"), 1, "{all}");
    assert_eq!(
        ran("MSLT_OPTIMIZER_KERNEL=fused bench --model-config base"),
        1,
        "{all}"
    );
    assert_eq!(ran("kernels bench"), 7, "{all}");
    assert_eq!(ran("--only named --attention-kernels fa2wg3s "), 2, "{all}");
    assert_eq!(ran("MSLT_ATTENTION=fa2wg3s"), 0, "{all}");
    assert_eq!(
        ran("--only named,dropout --attention-kernels fa2v3,fa2w8v3,fa2w8,tf32x3 "),
        1
    );
    for k in ["fa2v2", "fa2w8"] {
        assert_eq!(
            ran(&format!("--only named,dropout --attention-kernels {k} ")),
            1
        );
    }
    assert_eq!(ran("MSLT_ATTENTION_DROPOUT=kernel bench"), 2, "{all}");
    // the kernel is the default on a GPU: the Candle rows name theirs
    assert_eq!(ran("MSLT_ATTENTION_DROPOUT=candle bench"), 2, "{all}");
    for k in ["fa2v2", "fa2w8"] {
        assert_eq!(
            ran(&format!("--only named --attention-kernels {k} ")),
            2,
            "{k}"
        );
        assert_eq!(ran(&format!("MSLT_ATTENTION={k} bench")), 1, "{k}");
        assert_eq!(
            ran(&format!(
                "MSLT_ATTENTION={k} kernels bench --device cuda --only dropout"
            )),
            1,
            "{k}"
        );
    }
    assert_eq!(ran("--matmul-precision tf32"), 1);
    assert_eq!(ran("bench --model-config base"), 13);
    assert_eq!(ran("--optimizer lamb"), 1);
    assert_eq!(ran("--frozen-dropout on"), 6);
    // one frozen layer op by op: fused bf16 at T = 128 (dropout off and on) and 512, Candle f32
    assert_eq!(ran("bench --layer-ops --model-config base"), 4, "{all}");
    assert_eq!(ran("--layer-ops --model-config base --device cuda --warmup 3 --repeats 10 --batch-size 16 --seq-len 512"), 1);
    assert_eq!(ran("--kernels candle --frozen-dtype f32 --json out/check/json/layer-ops-b32-t128-dropout-off-candle-f32.json"), 1);
    assert!(all.contains("new attention kernels that passed their checks: fa2v2 fa2w8"));
    // gpu-dist-check: the single-process run and the one-rank NCCL run
    assert_eq!(ran("train --data"), 2, "{all}");
    assert_eq!(ran("--nproc 1"), 1);

    // GPU_CHECK_QUICK=1: the base rows run 5 measured are skipped, the rest runs; NEW_KERNELS
    // unset: the kernels not yet run on a GPU, fa2w8v4, fa2w8v5, fa2wg3, fa2wg3e, fa2wg4 and
    // fa2wg4e
    let quick = run_gpu_all(&[("GPU_CHECK_QUICK", "1")]);
    let ran = |s: &str| count_ran(&quick, s);
    assert_eq!(ran("bench --model-config base"), 13, "{quick}");
    assert_eq!(ran("kernels check"), 16, "{quick}");
    assert_eq!(ran("kernels bench"), 15, "{quick}");
    for k in [
        "fa2w8v4", "fa2w8v5", "fa2wg3", "fa2wg3e", "fa2wg4", "fa2wg4e",
    ] {
        assert_eq!(
            ran(&format!("--only named,dropout --attention-kernels {k} ")),
            1
        );
    }
    // the main check names every kernel that ran on a GPU before
    assert_eq!(
        ran("--attention-kernels tc,fa2,fa2v2,fa2q128,fa2w8,fa2v3,fa2w8v3,fa2wg,fa2wg2 "),
        1
    );
    assert!(quick.contains(
        "new attention kernels that passed their checks: fa2w8v4 fa2w8v5 fa2wg3 fa2wg3e fa2wg4 fa2wg4e"
    ));
    // a new kernel that fails its check is neither timed nor benched; its dropout twin is
    // checked alone as a diagnostic
    let fail = run_gpu_all(&[
        ("GPU_CHECK_QUICK", "1"),
        ("STANDIN_FAIL", "--only named --attention-kernels fa2wg3 "),
    ]);
    let ran = |s: &str| count_ran(&fail, s);
    assert!(fail.contains(
        "new attention kernels that passed their checks: fa2w8v4 fa2w8v5 fa2wg3e fa2wg4 fa2wg4e"
    ));
    assert_eq!(
        ran("MSLT_ATTENTION=fa2wg3 kernels check --device cuda --large --only dropout"),
        1,
        "{fail}"
    );
    assert_eq!(ran("kernels check --device cuda --large --only dropout"), 1);
    assert_eq!(ran("MSLT_ATTENTION=fa2wg3 bench"), 0);
    assert_eq!(ran("--only named --attention-kernels fa2wg3 "), 1);
    assert_eq!(ran("--only named,dropout --attention-kernels fa2wg3 "), 0);
    assert_eq!(ran("--only named,dropout --attention-kernels fa2wg4 "), 1);
    // a new kernel whose dropout twin fails: no dropout timing for it, the others unaffected
    let dfail = run_gpu_all(&[
        ("GPU_CHECK_QUICK", "1"),
        (
            "STANDIN_FAIL",
            "--only named,dropout --attention-kernels fa2wg4e ",
        ),
    ]);
    let ran = |s: &str| count_ran(&dfail, s);
    assert_eq!(
        ran("MSLT_ATTENTION=fa2wg4e kernels bench --device cuda --only dropout"),
        0
    );
    assert_eq!(
        ran("MSLT_ATTENTION=fa2wg4 kernels bench --device cuda --only dropout"),
        1
    );
    assert_eq!(ran("MSLT_ATTENTION_DROPOUT=kernel bench"), 2, "{dfail}");
    // NEW_KERNELS and ABLATION_KERNELS empty: only the default check and timings
    let none = run_gpu_all(&[
        ("GPU_CHECK_QUICK", "1"),
        ("NEW_KERNELS", ""),
        ("ABLATION_KERNELS", ""),
    ]);
    assert_eq!(count_ran(&none, "kernels check"), 3, "{none}");
    assert_eq!(count_ran(&none, "kernels bench"), 2, "{none}");
    assert_eq!(count_ran(&none, "bench --model-config base"), 7, "{none}");
    assert!(none.contains("new attention kernels that passed their checks: none"));
}

/// tools/gpu_report.py on the committed H100 runs 5-8 finds the figures docs/gpu-results.md
/// quotes from them.
#[test]
fn gpu_report_reproduces_runs_5_to_8() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = |run: &str| {
        let o = Command::new("python3")
            .arg("tools/gpu_report.py")
            .arg(format!("docs/gpu/{run}"))
            .arg("--log")
            .arg(format!("docs/gpu/{run}/gpu-check.log"))
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let runs: [(&str, &[&str]); 4] = [
        ("run5", &[
            "195 of 195 checks passed.",
            "Reference: the fastest, **2976 GB/s**.",
            "fused: 86-100% -> **met**",
            "fused-tf32x3 [kbench-tf32x3] f32: ours / SDPA 0.41-0.82 over 12 of 12 shapes -> **met**",
            "fused-fa2 [kbench-fa2] bf16: ours / SDPA 0.93-2.73 over 12 of 12 shapes -> **not met**",
            "| fused-bf16-tf32 | kernels fused, frozen dtype BF16, frozen dropout off | retain | tf32 46.1 TFLOP/s | 118.8 (1.00x)",
        ]),
        ("run6", &[
            "175 of 175 checks passed.",
            "| fused-fa2w8 [kbench-fa2w8] | bf16 | B256 T512 H12 D64 nopad | 1049.5 | 196.4 | 499.8 (no mask) | 2.10 |",
            "| fused-fa2v2 [kbench-fa2v2] | bf16 | B128 T128 H12 D64 | 53.6 | 120.1 | 48.5 (mask) | 1.11 |",
            "fused f32: ours / SDPA 0.40-0.82 over 12 of 12 shapes -> **met**",
        ]),
        ("run7", &[
            "393 of 393 checks passed.",
            "| fused-fa2wg [kbench-fa2wg] | bf16 | B256 T512 H12 D64 | 869.4 | 237.1 | 799.8 (mask) | 1.09 |",
        ]),
        ("run8", &[
            "333 of 333 checks passed.",
            "| fused-fa2v3 [kbench-fa2v3] | bf16 | B128 T128 H12 D64 | 48.3 | 133.5 | 47.5 (mask) | 1.02 |",
            "| fused-fa2w8v3 [kbench-fa2w8v3] | bf16 | B256 T512 H12 D64 nopad | 1004.8 | 205.2 | 491.9 (no mask) | 2.04 |",
            "| dropout-on-fused-bf16-kernel-dropout | kernels fused, frozen dtype BF16, frozen dropout on | retain | f32 26.7 TFLOP/s | 149.2 (1.00x) | 46.8 (3.19x) | 45.2 (3.30x; frozen fwd 2.6) | 45.4 (3.29x; frozen fwd 4.7) | 47.0 (3.18x; frozen fwd 6.6)",
            "| t512-auto | kernels fused, frozen dtype BF16, frozen dropout off | retain | f32 26.5 TFLOP/s | 407.2 (1.00x) | 121.4 (3.35x) | 108.9 (3.74x; frozen fwd 2.8) | 111.2 (3.66x; frozen fwd 5.2) | 115.3 (3.53x; frozen fwd 7.7)",
            // the fastest kernel per shape: what run 8 made the defaults on
            "| bf16 | B128 T128 H12 D64 nopad | fa2v3 | 53.8 | fa2w8v3 | 54.8 | 1.31 |",
            "| bf16 | B128 T256 H12 D64 nopad | fa2w8v3 | 152.5 | default | 154.2 | 1.95 |",
        ]),
    ];
    for (run, wants) in runs {
        let r = report(run);
        for want in wants {
            assert!(r.contains(want), "{run}: missing `{want}` in\n{r}");
        }
    }
}

/// tools/gpu_report.py turns a run's JSON into the tables and verdicts of docs/gpu-results.md:
/// on the committed H100 run 3 it must reproduce the figures written there by hand.
#[test]
fn gpu_report_reproduces_the_committed_h100_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = Command::new("python3")
        .arg("tools/gpu_report.py")
        .arg("docs/gpu")
        .arg("--log")
        .arg("docs/gpu/gpu-check-h100.log")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = String::from_utf8_lossy(&o.stdout);
    for want in [
        "Card: NVIDIA H100 80GB HBM3, 580.159.04",
        "146 of 146 checks passed.",
        "Reference: the fastest, **2979 GB/s**.",
        // docs/gpu-results.md: 131072 x 768 f32 add + LN 616.8 us, 66% of copy, 0.44 of Candle
        "| add_layer_norm | fused | f32 | 131072x768 | 616.8 | 66% |",
        "fused: 59-83% -> **not met**",
        "| fused | bf16 | B32 T128 H12 D64 | 115.5 | 13.9 | 42.2 (mask) | 2.74 | 458.7 |",
        "fused bf16: ours / SDPA 2.74-20.24 over 6 of 6 shapes -> **not met**",
        "Steps that failed: none",
    ] {
        assert!(r.contains(want), "missing `{want}` in\n{r}");
    }
    assert!(!r.contains("Missing or unreadable"), "{r}");
    // a step that crashed leaves no file or a partial one: named in the report, not fatal
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("kbench-fa2.json"), "[{\"op\": ").unwrap();
    // a kernel whose output has an inf: serde_json writes the error as null
    let bad = r#"[{"kernel": "attention[fa2]", "dtype": "bf16", "shape": "B2 T7", "against": "candle reference",
        "max_abs_err": null, "max_abs_ref": 1.0, "rel_err": null, "tol": 0.01, "nonfinite": 3, "pass": false,
        "spread": "3 of 28 elements wrong (10.71%); first b1 t0 h0 d0 (got inf, want 0.1000)"}]"#;
    std::fs::write(tmp.path().join("check-fa2.json"), bad).unwrap();
    // a diagnostic run (MSLT_ATTENTION=fa2wg3, its dropout twin): rows kept apart by their file
    let diag = r#"[{"kernel": "attention+dropout", "dtype": "bf16", "shape": "B2 T7", "against": "candle reference",
        "max_abs_err": 0.001, "max_abs_ref": 1.0, "rel_err": 0.001, "tol": 0.05, "nonfinite": 0, "pass": true}]"#;
    std::fs::write(tmp.path().join("check-diag-fa2wg3.json"), diag).unwrap();
    // add + LayerNorm at 4096 rows beside a copy of as many bytes
    let ln = r#"[
        {"op": "add_layer_norm", "implementation": "fused", "dtype": "bf16", "shape": "4096x768",
         "median_us": 12.0, "min_us": 11.0, "max_us": 13.0, "gb_per_s": 1572.9, "tflop_per_s": null},
        {"op": "add_layer_norm", "implementation": "fused-into", "dtype": "bf16", "shape": "4096x768",
         "median_us": 10.0, "min_us": 9.0, "max_us": 11.0, "gb_per_s": 1887.4, "tflop_per_s": null},
        {"op": "copy-same-bytes", "implementation": "into", "dtype": "f32", "shape": "4096x768 bf16",
         "median_us": 8.0, "min_us": 7.5, "max_us": 9.0, "gb_per_s": 2359.3, "tflop_per_s": null}]"#;
    std::fs::write(tmp.path().join("kbench.json"), ln).unwrap();
    // one frozen layer op by op, as the binary writes it
    let lops = tmp
        .path()
        .join("layer-ops-b2-t16-dropout-off-candle-f32.json");
    let o = Command::new(env!("CARGO_BIN_EXE_mslt-cli"))
        .args([
            "bench",
            "--layer-ops",
            "--model-config",
            "tiny",
            "--batch-size",
            "2",
        ])
        .args([
            "--seq-len",
            "16",
            "--frozen-dropout",
            "off",
            "--warmup",
            "1",
            "--repeats",
            "1",
        ])
        .arg("--json")
        .arg(&lops)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = "=== kernel check: attention[fa2] (not yet run) (12:00:01)\nexit 1\n\
               === kernel check: attention[tf32x3] (12:00:09)\nexit 124\n";
    std::fs::write(tmp.path().join("gpu-check.log"), log).unwrap();
    let o = Command::new("python3")
        .arg(root.join("tools/gpu_report.py"))
        .arg(tmp.path())
        .arg("--log")
        .arg(tmp.path().join("gpu-check.log"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = String::from_utf8_lossy(&o.stdout);
    assert!(
        r.contains("- kbench-fa2.json: ") && r.contains("- torch.json: "),
        "{r}"
    );
    assert!(r.contains("1 of 2 checks passed."), "{r}");
    assert!(
        r.contains("### candle path, f32, B2 T16, frozen dropout off (layer-ops-b2-t16-dropout-off-candle-f32.json)"),
        "{r}"
    );
    assert!(r.contains("| FFN down (matmul + bias) | "), "{r}");
    // fused-into at 10 us against the same bytes copied in 8 us: 80%
    assert!(
        r.contains("| add_layer_norm | fused | bf16 | 4096x768 | 12.0 |")
            && r.contains(" | 80% |\n"),
        "{r}"
    );
    assert!(r.contains("| attention[fa2] | bf16 | 1 | 1 | inf |"), "{r}");
    // a failed row is listed with where its wrong elements lie
    assert!(
        r.contains(
            "- attention[fa2] bf16 B2 T7 vs candle reference, rel error inf: 3 of 28 elements wrong \
             (10.71%); first b1 t0 h0 d0 (got inf, want 0.1000)"
        ),
        "{r}"
    );
    assert!(
        r.contains("| attention+dropout [check-diag-fa2wg3] | bf16 | 1 | 0 | 1.0e-03 |"),
        "{r}"
    );
    assert!(
        r.contains(
            "Steps that failed: kernel check: attention[fa2] (not yet run) (exit 1); \
             kernel check: attention[tf32x3] (exit 124, time limit)"
        ),
        "{r}"
    );
}

/// Out of its time budget, gpu-check.sh skips steps instead of overrunning the GPU call.
#[test]
fn gpu_check_skips_steps_past_its_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("mslt-cli");
    std::fs::write(&bin, STANDIN).unwrap();
    Command::new("chmod").arg("+x").arg(&bin).status().unwrap();
    let o = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg(tmp.path().join("out"))
        .current_dir(&root)
        .env("MSLT_BIN", &bin)
        .env("REAL_MSLT_CLI", env!("CARGO_BIN_EXE_mslt-cli"))
        .env("STANDIN_ERR", tmp.path().join("err"))
        .env("TORCH_PY", "true")
        .env("GPU_CHECK_SECONDS", "10")
        .env("NEW_KERNELS", "fa2v2 fa2w8")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.lines().any(|l| l.starts_with("RAN ")), "{out}");
    // 1 check + 2 new attention kernel checks + their 2 diagnostics (neither passed) + the
    // ablation's check + the dropout check + the AdamW kernel's check + kbench + torch + 6 base
    // benches (LAMB's included; the fused AdamW one needs its check to pass;
    // nothing new passed, so nothing new is checked with dropout or timed) + 4 layer-ops benches
    let log = std::fs::read_to_string(tmp.path().join("out/gpu-check.log")).unwrap();
    assert_eq!(log.matches("skipped: ").count(), 20, "{log}");
    assert!(out.contains("new attention kernels that passed their checks: none"));
}

/// `kernels check --only model,dropout` on the CPU: the model-level rows gpu-check.sh runs on a GPU
/// (fused vs Candle encoder in eval, in train mode with frozen dropout on, and with the
/// attention dropout inside the fused op against its Philox reference).
#[test]
fn kernels_check_of_the_model_runs_on_cpu() {
    let o = Command::new(env!("CARGO_BIN_EXE_mslt-cli"))
        .args(["kernels", "check", "--only", "model,dropout"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("layers + dropout   f32   mini layer 2/2 train"),
        "{out}"
    );
    // Philox dropout inside the attention op against the same draws through Candle ops
    for dtype in ["f32", "bf16"] {
        let row = format!("layers + kernel dropout {dtype:<5} mini layer 2/2 train");
        assert!(out.contains(&row), "{row} missing in\n{out}");
    }
    // with part `dropout` also the attention-dropout rows of the op: 5 shapes x 2 dtypes
    assert!(out.contains("all 17 kernel checks passed"), "{out}");
}
