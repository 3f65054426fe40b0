//! Pre-training end to end through the CLI on a small synthetic corpus with its own vocab.txt
//! and a very small BERT: exact resume, crash during a checkpoint save, NaN handling, bad input.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const WORDS: &[&str] = &[
    "the", "a", "state", "union", "congress", "people", "nation", "law", "year", "war", "peace",
    "trade", "tax", "we", "must", "will", "have", "is", "of", "and", "to", "in", "for", "our",
    "new", "great", "land", "work", "free", "men", "power", "public", "good", "##s", "##ed",
    "##ing", "un", "##ion",
];

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn s(&self, s: &str) -> String {
        self.p(s).to_str().unwrap().to_string()
    }
}

/// A corpus of 40 documents (files) of pseudo-random sentences, a vocab.txt, a BERT config.
fn setup() -> Env {
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    std::fs::write(env.p("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    std::fs::create_dir(env.p("corpus")).unwrap();
    let mut x: u64 = 7;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let plain: Vec<&str> = WORDS
        .iter()
        .copied()
        .filter(|w| !w.starts_with("##"))
        .collect();
    for d in 0..40 {
        let mut text = String::new();
        for _ in 0..(6 + next() % 10) {
            let n = 4 + next() % 12;
            let words: Vec<&str> = (0..n)
                .map(|_| plain[(next() % plain.len() as u64) as usize])
                .collect();
            let mut s = words.join(" ");
            s[..1].make_ascii_uppercase();
            text.push_str(&s);
            text.push_str(". ");
        }
        std::fs::write(env.p(&format!("corpus/doc{d:02}.txt")), text).unwrap();
    }
    let cfg = serde_json::json!({
        "vocab_size": vocab.len(), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "model_type": "bert"
    });
    std::fs::write(env.p("bert.json"), cfg.to_string()).unwrap();
    run_ok(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--seq-len",
        "32",
        "--out",
        &env.s("data"),
        "--val-fraction",
        "0.1",
        &env.s("corpus"),
    ]);
    env
}

fn train_args<'a>(env: &'a Env, out: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "train",
        "--data",
        &env.s("data"),
        "--model-config",
        &env.s("bert.json"),
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--eval-every",
        "4",
        "--eval-batches",
        "2",
        "--no-progress",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_train(args: &[String], env_vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = cli();
    for (k, v) in env_vars {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

/// (step, loss) of every step line of metrics.jsonl, as written (bit-exact text).
fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

#[test]
fn prepare_is_byte_identical_and_manifest_is_right() {
    let env = setup();
    run_ok(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--seq-len",
        "32",
        "--out",
        &env.s("data2"),
        "--val-fraction",
        "0.1",
        &env.s("corpus"),
    ]);
    for f in [
        "manifest.json",
        "train-00000.safetensors",
        "val-00000.safetensors",
        "subwords.bin",
    ] {
        assert_eq!(
            std::fs::read(env.p("data").join(f)).unwrap(),
            std::fs::read(env.p("data2").join(f)).unwrap(),
            "{f} differs between runs"
        );
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("data/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["train"]["documents"].as_u64().unwrap() + m["val"]["documents"].as_u64().unwrap(),
        40
    );
    assert_eq!(m["val"]["documents"], 4);
    assert_eq!(m["seq_len"], 32);
}

#[test]
fn exact_resume_after_a_crash_during_checkpoint_writing() {
    let env = setup();
    // A: 8 steps straight.
    let a = env.s("runA");
    let o = run_train(&train_args(&env, &a, "8", &["--save-every", "4"]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // B: same run, killed while writing the step-8 checkpoint (after the model file, before the
    // rename): the step-4 checkpoint must stay complete and loadable.
    let b = env.s("runB");
    let o = run_train(
        &train_args(&env, &b, "8", &["--save-every", "4"]),
        &[("MSLT_TEST_CRASH_DURING_SAVE", "8")],
    );
    assert!(!o.status.success(), "the injected crash did not happen");
    let ck = env.p("runB/checkpoints");
    assert!(
        ck.join(".tmp-step-00000008/model.safetensors").is_file(),
        "crash left a partial save"
    );
    assert!(!ck.join("step-00000008").exists());
    assert!(ck.join("step-00000004/state.json").is_file());
    let ev = run_ok(&[
        "eval",
        "--checkpoint",
        &b,
        "--data",
        &env.s("data"),
        "--batch-size",
        "4",
        "--batches",
        "2",
    ]);
    let ev: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert!(
        ev["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("step-00000004"),
        "{ev}"
    );
    assert!(ev["mlm_loss"].as_f64().unwrap().is_finite());

    // Resume: continues from step 4 and reproduces A bit for bit.
    let o = run_train(
        &train_args(&env, &b, "8", &["--save-every", "4", "--resume"]),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resumed from"));
    let (la, lb) = (losses(Path::new(&a)), losses(Path::new(&b)));
    assert_eq!(la.len(), 8);
    assert_eq!(
        la, lb,
        "losses of the resumed run differ from the uninterrupted one"
    );
    assert!(
        !ck.join(".tmp-step-00000008").exists(),
        "partial save cleaned up"
    );
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let fa = std::fs::read(env.p("runA/checkpoints/step-00000008").join(f)).unwrap();
        let fb = std::fs::read(ck.join("step-00000008").join(f)).unwrap();
        assert!(fa == fb, "{f}: final state differs after resume");
    }
}

#[test]
fn checkpoint_is_a_hf_model_directory_for_encode() {
    let env = setup();
    let r = env.s("run");
    let o = run_train(
        &train_args(&env, &r, "2", &["--matmul-precision", "tf32"]),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // the run's resolved config records the matmul precision (no effect on the CPU)
    let run_cfg = std::fs::read_to_string(env.p("run/config.json")).unwrap();
    assert!(
        run_cfg.contains("\"matmul_precision\": \"tf32\""),
        "{run_cfg}"
    );
    let ck = env.s("run/checkpoints/step-00000002");
    std::fs::write(env.p("s.txt"), "the people of the union.\nwe must work.\n").unwrap();
    run_ok(&[
        "encode",
        "--model",
        &ck,
        "--text-file",
        &env.s("s.txt"),
        "--output",
        &env.s("e.safetensors"),
    ]);
    let e = load(&env.p("e.safetensors"));
    assert_eq!(e["prediction_logits"].dims()[2], WORDS.len() + 7);
    assert!(e.contains_key("seq_relationship_logits"));
    let cfg = std::fs::read_to_string(env.p("run/checkpoints/step-00000002/config.json")).unwrap();
    assert!(cfg.contains("BertForPreTraining"));
}

#[test]
fn nan_steps_are_skipped_and_repeated_ones_stop_the_run() {
    let env = setup();
    let r = env.s("run");
    let o = run_train(
        &train_args(&env, &r, "6", &[]),
        &[("MSLT_TEST_INJECT_NAN", "3")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = std::fs::read_to_string(env.p("run/metrics.jsonl")).unwrap();
    assert!(
        m.lines()
            .any(|l| l.contains("\"step\":3") && l.contains("skipped")),
        "{m}"
    );
    assert!(losses(Path::new(&r))
        .iter()
        .all(|(s, l)| *s != 3 && l != "null"));

    let r2 = env.s("run2");
    let o = run_train(
        &train_args(&env, &r2, "10", &["--save-every", "2"]),
        &[("MSLT_TEST_INJECT_NAN", "3,4,5,6,7,8")],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("5 consecutive steps with non-finite loss"),
        "{err}"
    );
    assert!(err.contains("step-00000002"), "{err}");
    run_ok(&[
        "eval",
        "--checkpoint",
        &r2,
        "--data",
        &env.s("data"),
        "--batches",
        "1",
        "--batch-size",
        "4",
    ]);
}

/// `mslt-cli train --data DATA --model-config MODEL --out OUT --steps STEPS [extra]`, expected to
/// fail; its one-line error.
fn train_err(data: &str, model: &str, out: &str, steps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--model-config",
        model,
        "--out",
        out,
        "--steps",
        steps,
    ];
    args.extend_from_slice(extra);
    run_err(&args)
}

#[test]
fn bad_input_gives_clear_errors() {
    let env = setup();
    let data = env.s("data");
    let bert = env.s("bert.json");
    // --steps 0
    let e = train_err(&data, &bert, &env.s("r0"), "0", &[]);
    assert!(e.contains("field `steps`: must be at least 1"), "{e}");
    // a batch larger than the data
    let e = train_err(&data, &bert, &env.s("r1"), "2", &["--batch-size", "100000"]);
    assert!(e.contains("batch size 100000 is larger than the"), "{e}");
    // not a data directory
    let e = train_err(&env.s("corpus"), &bert, &env.s("r2"), "2", &[]);
    assert!(e.contains("not a prepared data directory"), "{e}");
    // output directory that cannot be created (its parent is a file)
    let e = train_err(
        &data,
        &bert,
        &env.s("vocab.txt/run"),
        "2",
        &["--batch-size", "4"],
    );
    assert!(e.contains("vocab.txt/run"), "{e}");
    // data with a longer seq len than the model's positions
    let prepare = |tok: &str, seq: &str, out: &str| {
        run_ok(&[
            "prepare",
            "--tokenizer",
            &env.s(tok),
            "--seq-len",
            seq,
            "--out",
            &env.s(out),
            &env.s("corpus"),
        ]);
    };
    prepare("vocab.txt", "80", "data80");
    let e = train_err(
        &env.s("data80"),
        &bert,
        &env.s("r3"),
        "2",
        &["--batch-size", "4"],
    );
    assert!(
        e.contains("seq len 80 is beyond the model's max_position_embeddings 64"),
        "{e}"
    );
    // resume with another model config, and with data made by another tokenizer
    let r = env.s("r4");
    let o = run_train(&train_args(&env, &r, "2", &[]), &[]);
    assert!(o.status.success());
    let e = train_err(&data, "tiny", &r, "4", &["--batch-size", "8", "--resume"]);
    assert!(e.contains("different model config"), "{e}");
    let mut v = std::fs::read_to_string(env.p("vocab.txt")).unwrap();
    v.push_str("extra\n");
    std::fs::write(env.p("vocab2.txt"), v).unwrap();
    prepare("vocab2.txt", "32", "data_v2");
    let e = train_err(
        &env.s("data_v2"),
        &bert,
        &r,
        "4",
        &["--batch-size", "8", "--resume"],
    );
    assert!(
        e.contains("another tokenizer, seq len or NSP setting"),
        "{e}"
    );
    // a run directory with checkpoints, without --resume
    let e = train_err(&data, &bert, &r, "4", &["--batch-size", "8"]);
    assert!(e.contains("already has checkpoints"), "{e}");
    // TOML config with an unknown key
    std::fs::write(env.p("run.toml"), "steps = 3\nbatchsize = 4\n").unwrap();
    let e = run_err(&[
        "train",
        "--config",
        &env.s("run.toml"),
        "--data",
        &data,
        "--out",
        &env.s("r5"),
    ]);
    assert!(e.contains("run.toml") && e.contains("batchsize"), "{e}");
    // an unknown optimizer, and a LAMB switch without LAMB
    let e = train_err(&data, &bert, &env.s("r6"), "2", &["--optimizer", "sgd"]);
    assert!(
        e.contains("--optimizer `sgd`: expected adamw or lamb"),
        "{e}"
    );
    let e = train_err(&data, &bert, &env.s("r7"), "2", &["--lamb-adapt-all"]);
    assert!(
        e.contains("lamb_adapt_all") && e.contains("the optimizer is adamw (expected lamb)"),
        "{e}"
    );
}

#[test]
fn prepare_bad_input() {
    let env = setup();
    // empty corpus
    std::fs::create_dir(env.p("empty")).unwrap();
    std::fs::write(env.p("empty/a.txt"), "   \n\n").unwrap();
    let e = run_err(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--out",
        &env.s("d1"),
        &env.s("empty"),
    ]);
    assert!(e.contains("empty corpus"), "{e}");
    // a directory without text files
    std::fs::create_dir(env.p("none")).unwrap();
    let e = run_err(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--out",
        &env.s("d2"),
        &env.s("none"),
    ]);
    assert!(e.contains("no input files"), "{e}");
    // binary and non-UTF-8 files are skipped and counted
    std::fs::copy(env.p("corpus/doc00.txt"), env.p("empty/good.txt")).unwrap();
    std::fs::copy(env.p("corpus/doc01.txt"), env.p("empty/good2.txt")).unwrap();
    std::fs::write(env.p("empty/bin.txt"), [0u8, 159, 146, 150, 0, 1, 2]).unwrap();
    std::fs::write(
        env.p("empty/latin1.txt"),
        [b'c', b'a', b'f', 0xe9, b' ', b'x'],
    )
    .unwrap();
    let o = run_ok(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--out",
        &env.s("d3"),
        "--seq-len",
        "32",
        &env.s("empty"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipped 1 not UTF-8, 1 binary, 1 empty"),
        "{err}"
    );
    // the output already holds prepared data
    let e = run_err(&[
        "prepare",
        "--tokenizer",
        &env.s("vocab.txt"),
        "--out",
        &env.s("d3"),
        &env.s("corpus"),
    ]);
    assert!(e.contains("already holds prepared data"), "{e}");
}

#[test]
fn init_from_an_encoder_only_checkpoint_initialises_the_heads_and_says_so() {
    let env = setup();
    // The tiny HF fixture (vocab 512 >= our 45 tokens) without its heads, and without `bert.`:
    // what a `BertModel` checkpoint looks like.
    let m = tiny_model_copy();
    let p = m.path().join("model.safetensors");
    let w = load(&p);
    let enc: std::collections::HashMap<String, candle_core::Tensor> = w
        .into_iter()
        .filter(|(k, _)| k.starts_with("bert.embeddings") || k.starts_with("bert.encoder"))
        .map(|(k, v)| (k.trim_start_matches("bert.").to_string(), v))
        .collect();
    // and a head mslt does not have, which the run lists as not used
    let qa = candle_core::Tensor::zeros((2, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let mut file = enc.clone();
    file.insert("qa_outputs.weight".into(), qa);
    save(&file, &p);
    let r = env.s("run");
    let o = run_train(
        &train_args(&env, &r, "2", &["--init-from", m.path().to_str().unwrap()]),
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("has no bert.pooler.*: initialised fresh"),
        "{err}"
    );
    assert!(err.contains("has no cls.predictions.*"), "{err}");
    assert!(err.contains("has no cls.seq_relationship.*"), "{err}");
    assert!(
        err.contains("tensor(s) not used: ") && err.contains("qa_outputs.weight"),
        "{err}"
    );
    // The encoder started from the checkpoint: layer 0's query weight moved by at most
    // 2 steps x lr 1e-3 per element.
    let ck = load(&env.p("run/checkpoints/step-00000002/model.safetensors"));
    let k = "bert.encoder.layer.0.attention.self.query.weight";
    let d = max_abs(&ck[k], &enc["encoder.layer.0.attention.self.query.weight"]);
    assert!(d > 0.0 && d < 2.5e-3, "{d}");
}

/// Step lines, stage events and (step -> file) checkpoint list of an MSLT run.
fn stage_events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("event").is_some_and(|e| e != "stage_resume"))
        .collect()
}

/// (step, depth, frozen_layers, train_embeddings) of every stage start.
fn stage_starts(ev: &[serde_json::Value]) -> Vec<(u64, u64, u64, bool)> {
    ev.iter()
        .filter(|v| v["event"] == "stage_start")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["depth"].as_u64().unwrap(),
                v["frozen_layers"].as_u64().unwrap(),
                v["train_embeddings"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn mslt_args<'a>(env: &'a Env, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v = train_args(
        env,
        out,
        "8",
        &[
            "--schedule",
            "mslt",
            "--stages",
            "1,2",
            "--final-joint-frac",
            "0.25",
            "--save-every",
            "4",
            "--keep-last",
            "0",
        ],
    );
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn mslt_stages_grow_freeze_and_resume_exactly_mid_stage_and_at_boundaries() {
    let env = setup();
    let a = env.s("A");
    let o = run_train(&mslt_args(&env, &a, &[]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Stages: depth 1 (steps 0-3), depth 2 with layer 0 frozen (3-6), joint (6-8).
    let ev = stage_events(Path::new(&a));
    let starts = stage_starts(&ev);
    assert_eq!(
        starts,
        vec![(0, 1, 0, true), (3, 2, 1, false), (6, 2, 0, true)]
    );
    assert_eq!(ev[2]["growth"]["operator"], "copy-top");
    assert_eq!(ev.iter().filter(|v| v["event"] == "stage_end").count(), 3);
    // A checkpoint at every stage boundary (3, 6, 8) besides --save-every 4.
    let ck = env.p("A/checkpoints");
    for s in [3, 4, 6, 8] {
        assert!(
            ck.join(format!("step-{s:08}/state.json")).is_file(),
            "no checkpoint at {s}"
        );
    }
    // During stage 1, the frozen layer 0 and the embeddings do not change; layer 1 and the heads do.
    let s3 = load(&ck.join("step-00000003/model.safetensors"));
    let s6 = load(&ck.join("step-00000006/model.safetensors"));
    let s8 = load(&ck.join("step-00000008/model.safetensors"));
    assert!(!s3.contains_key("bert.encoder.layer.1.output.dense.weight"));
    for (k, t) in &s6 {
        let frozen = k.starts_with("bert.encoder.layer.0.") || k.starts_with("bert.embeddings.");
        if frozen {
            assert_eq!(max_abs(t, &s3[k]), 0.0, "{k} changed while frozen");
            assert!(
                max_abs(t, &s8[k]) > 0.0,
                "{k} did not train in the joint stage"
            );
        } else if k.starts_with("cls.predictions.transform") {
            assert!(max_abs(t, &s3[k]) > 0.0, "{k} did not train");
        }
    }
    // Resume at a boundary (crash while saving step 4 -> the step-3 checkpoint, before growth)
    // and mid-stage (crash while saving step 6 -> the step-4 checkpoint): both reproduce A.
    for (crash, name) in [("4", "B"), ("6", "C")] {
        let r = env.s(name);
        let o = run_train(
            &mslt_args(&env, &r, &[]),
            &[("MSLT_TEST_CRASH_DURING_SAVE", crash)],
        );
        assert!(!o.status.success());
        let o = run_train(&mslt_args(&env, &r, &["--resume"]), &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            losses(Path::new(&a)),
            losses(Path::new(&r)),
            "resume after a crash at {crash} differs"
        );
        assert_eq!(stage_events(Path::new(&a)), stage_events(Path::new(&r)));
        let fa = std::fs::read(ck.join("step-00000008/model.safetensors")).unwrap();
        let fr = std::fs::read(
            env.p(name)
                .join("checkpoints/step-00000008/model.safetensors"),
        )
        .unwrap();
        assert!(
            fa == fr,
            "final model differs after resuming from a crash at {crash}"
        );
    }
    // A resume must not change the schedule.
    let args = mslt_args(
        &env,
        &a,
        &["--resume", "--stages", "1,2", "--init", "random"],
    );
    let e = run_err(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(
        e.contains("the schedule differs from the checkpoint's"),
        "{e}"
    );
}

#[test]
fn train_old_layers_and_stage_fracs_reach_the_run() {
    // 1 -> 2 with --train-old-layers 1: stage 1 trains layer 0 (the old top) with layer 1, the
    // embeddings stay frozen; --stage-fracs 0.25,0.75 splits the 6 stage steps 2 + 4 (rounded
    // by largest remainder: 1.5 + 4.5 -> 2 + 4).
    let env = setup();
    let a = env.s("A");
    let o = run_train(
        &mslt_args(
            &env,
            &a,
            &["--train-old-layers", "1", "--stage-fracs", "0.25,0.75"],
        ),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = stage_events(Path::new(&a));
    let starts = stage_starts(&ev);
    assert_eq!(
        starts,
        vec![(0, 1, 0, true), (2, 2, 0, false), (6, 2, 0, true)]
    );
    let ck = env.p("A/checkpoints");
    let s2 = load(&ck.join("step-00000002/model.safetensors"));
    let s6 = load(&ck.join("step-00000006/model.safetensors"));
    for (k, t) in &s2 {
        let d = max_abs(t, &s6[k]);
        if k.starts_with("bert.embeddings.") {
            assert_eq!(d, 0.0, "{k} changed while frozen");
        } else if k.starts_with("bert.encoder.layer.0.") && k.ends_with(".weight") {
            assert!(d > 0.0, "{k} (the old top layer) did not train");
        }
    }
    // the knob is part of the schedule: a resume without it is refused
    let args = mslt_args(&env, &a, &["--resume", "--stage-fracs", "0.25,0.75"]);
    let e = run_err(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(
        e.contains("the schedule differs") && e.contains("train_old_layers 1"),
        "{e}"
    );
}

#[test]
fn an_untied_decoder_trains_while_the_embeddings_are_frozen() {
    let env = setup();
    let a = env.s("A");
    let o = run_train(&mslt_args(&env, &a, &["--untie-decoder"]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = env.p("A/checkpoints");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ck.join("step-00000006/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    // stage 1 (steps 3-6): embeddings frozen, the decoder's own weight trains
    let s3 = load(&ck.join("step-00000003/model.safetensors"));
    let s6 = load(&ck.join("step-00000006/model.safetensors"));
    let (dec, word) = (
        "cls.predictions.decoder.weight",
        "bert.embeddings.word_embeddings.weight",
    );
    assert!(
        max_abs(&s6[dec], &s3[dec]) > 0.0,
        "the decoder did not train"
    );
    assert_eq!(max_abs(&s6[word], &s3[word]), 0.0, "the embeddings trained");
    // eval reads the untied checkpoint
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mslt-cli"))
        .args(["eval", "--checkpoint", &a, "--data", &env.s("data")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // the export writes the MLM bias under both names (transformers reads the decoder's own
    // bias when the decoder is untied), equal, and the decoder weight
    run_ok(&["export", "--checkpoint", &a, "--out", &env.s("A-export")]);
    let x = load(&env.p("A-export/model.safetensors"));
    let mut steps: Vec<_> = std::fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    steps.sort();
    let last = load(&steps.last().unwrap().join("model.safetensors"));
    let (bias, dbias) = ("cls.predictions.bias", "cls.predictions.decoder.bias");
    assert_eq!(max_abs(&x[bias], &x[dbias]), 0.0);
    assert_eq!(max_abs(&x[bias], &last[bias]), 0.0);
    assert_eq!(max_abs(&x[dec], &last[dec]), 0.0);
    // and mslt reads the export back to the same evaluation as the run's own checkpoint
    let eval_of = |ck: &str| -> serde_json::Value {
        let o = run_ok(&["eval", "--checkpoint", ck, "--data", &env.s("data")]);
        // the export's second bias name copies the first: nothing to report
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("not used"), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("checkpoint");
        v
    };
    assert_eq!(eval_of(&a), eval_of(&env.s("A-export")));
    // a crash while saving step 6 resumes mid-stage from step 4 (decoder weight and its moments
    // from the checkpoint) and reproduces the run
    let b = env.s("B");
    let o = run_train(
        &mslt_args(&env, &b, &["--untie-decoder"]),
        &[("MSLT_TEST_CRASH_DURING_SAVE", "6")],
    );
    assert!(!o.status.success());
    let o = run_train(&mslt_args(&env, &b, &["--untie-decoder", "--resume"]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(Path::new(&a)), losses(Path::new(&b)));
    // a resume must keep the decoder as it was
    let args = mslt_args(&env, &a, &["--resume"]);
    let e = run_err(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(
        e.contains("has an untied MLM decoder, this run asks for a tied one"),
        "{e}"
    );
}

#[test]
fn init_from_a_tied_checkpoint_with_untie_decoder_starts_from_the_same_function() {
    // A tied run, then a new run from its checkpoint with --untie-decoder at lr 1e-30 (no
    // parameter moves in f32): the decoder weight is the word-embedding matrix, bit for bit,
    // and the run says so.
    let env = setup();
    let a = env.s("A");
    let o = run_train(&train_args(&env, &a, "2", &[]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let src = env.s("A/checkpoints/step-00000002");
    let b = env.s("B");
    let mut args = train_args(&env, &b, "1", &["--init-from", &src, "--untie-decoder"]);
    let lr = args.iter().position(|x| x == "--lr").unwrap();
    args[lr + 1] = "1e-30".into();
    let o = run_train(&args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("the untied decoder starts as a copy of them"),
        "{err}"
    );
    let ta = load(&env.p("A/checkpoints/step-00000002/model.safetensors"));
    let tb = load(&env.p("B/checkpoints/step-00000001/model.safetensors"));
    let word = "bert.embeddings.word_embeddings.weight";
    assert!(!ta.contains_key("cls.predictions.decoder.weight"));
    assert_eq!(
        max_abs(&tb["cls.predictions.decoder.weight"], &ta[word]),
        0.0
    );
    assert_eq!(max_abs(&tb[word], &ta[word]), 0.0);
    // a tied model's export leaves both decoder names to transformers' tying
    run_ok(&["export", "--checkpoint", &src, "--out", &env.s("A-export")]);
    let x = load(&env.p("A-export/model.safetensors"));
    assert!(x.contains_key("cls.predictions.bias"));
    assert!(!x.contains_key("cls.predictions.decoder.bias"));
    assert!(!x.contains_key("cls.predictions.decoder.weight"));
}

/// Every evaluation line of metrics.jsonl: (step, eval MLM loss as written, after_growth).
fn evals(run: &Path) -> Vec<(u64, String, bool)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval_loss").is_some())
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["eval_mlm_loss"].to_string(),
                v.get("after_growth").is_some_and(|a| a == true),
            )
        })
        .collect()
}

#[test]
fn eval_after_growth_shows_the_jump_and_survives_a_resume_at_the_boundary() {
    let env = setup();
    let a = env.s("A");
    let extra = ["--eval-after-growth", "--init", "copy-top-zero"];
    let o = run_train(&mslt_args(&env, &a, &extra), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = evals(Path::new(&a));
    // step 3 ends stage 0 (eval), the growth to 2 layers follows (eval after growth), then the
    // eval_every 4 and stage-end evaluations
    let at3: Vec<&(u64, String, bool)> = ev.iter().filter(|e| e.0 == 3).collect();
    assert_eq!(at3.len(), 2, "{ev:?}");
    assert!(!at3[0].2 && at3[1].2, "{ev:?}");
    assert_ne!(at3[0].1, at3[1].1, "the growth did not change the loss");
    assert_eq!(ev.iter().filter(|e| e.2).count(), 1); // one growth; the joint stage grows nothing
    let g = stage_events(Path::new(&a));
    assert_eq!(g[2]["growth"]["operator"], "copy-top-zero");
    // a crash while saving step 4 resumes from step 3, before the growth: the growth and its
    // evaluation are redone once, and every line matches the uninterrupted run
    let b = env.s("B");
    let o = run_train(
        &mslt_args(&env, &b, &extra),
        &[("MSLT_TEST_CRASH_DURING_SAVE", "4")],
    );
    assert!(!o.status.success());
    let mut resume = extra.to_vec();
    resume.push("--resume");
    let o = run_train(&mslt_args(&env, &b, &resume), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(evals(Path::new(&b)), ev);
    assert_eq!(losses(Path::new(&a)), losses(Path::new(&b)));
}

#[test]
fn keep_optimizer_state_across_stages_resumes_exactly_too() {
    let env = setup();
    let a = env.s("A");
    let o = run_train(&mslt_args(&env, &a, &["--keep-optimizer-state"]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = env.s("B");
    let o = run_train(
        &mslt_args(&env, &b, &["--keep-optimizer-state"]),
        &[("MSLT_TEST_CRASH_DURING_SAVE", "4")],
    );
    assert!(!o.status.success());
    let o = run_train(
        &mslt_args(&env, &b, &["--keep-optimizer-state", "--resume"]),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(Path::new(&a)), losses(Path::new(&b)));
    // and it is a different run than the default (reset at each stage)
    let c = env.s("C");
    assert!(run_train(&mslt_args(&env, &c, &[]), &[]).status.success());
    assert_ne!(losses(Path::new(&a)), losses(Path::new(&c)));
}

/// LAMB through the whole MSLT path: staged growth, moments kept across stages, a crash while
/// checkpointing and an exact resume; the run records its optimizer and is not AdamW's run.
#[test]
fn lamb_runs_the_mslt_schedule_and_resumes_exactly() {
    let env = setup();
    let lamb = ["--optimizer", "lamb", "--keep-optimizer-state"];
    let a = env.s("A");
    let o = run_train(&mslt_args(&env, &a, &lamb), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("A/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["run"]["optimizer"], "lamb", "{cfg}");
    let b = env.s("B");
    let o = run_train(
        &mslt_args(&env, &b, &lamb),
        &[("MSLT_TEST_CRASH_DURING_SAVE", "4")],
    );
    assert!(!o.status.success());
    let mut resume = lamb.to_vec();
    resume.push("--resume");
    let o = run_train(&mslt_args(&env, &b, &resume), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let la = losses(Path::new(&a));
    assert_eq!(la, losses(Path::new(&b)));
    assert!(
        la.iter()
            .all(|(_, l)| l.parse::<f64>().unwrap().is_finite()),
        "{la:?}"
    );
    // Resuming with another optimizer is refused (a forgotten --optimizer would switch silently).
    let o = run_train(
        &mslt_args(&env, &a, &["--keep-optimizer-state", "--resume"]),
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("was trained with the optimizer lamb, this run asks for adamw"),
        "{err}"
    );
    let c = env.s("C");
    let o = run_train(&mslt_args(&env, &c, &["--keep-optimizer-state"]), &[]);
    assert!(o.status.success());
    assert_ne!(la, losses(Path::new(&c)), "LAMB gave AdamW's losses");
}

#[test]
fn bad_schedules_give_clear_errors() {
    let env = setup();
    let r = env.s("r");
    for (extra, want) in [
        (
            vec!["--schedule", "mslt", "--stages", "2,1"],
            "not strictly increasing",
        ),
        (
            vec!["--schedule", "mslt", "--stages", "1"],
            "the last stage has 1 layers but the model has 2",
        ),
        (
            vec![
                "--schedule",
                "mslt",
                "--stages",
                "1,2",
                "--stage-steps",
                "2,2",
            ],
            "field `stage_steps`: they add up to 4",
        ),
        (vec!["--schedule", "mslt"], "no default stages for 2 layers"),
        (vec!["--schedule", "staircase"], "--schedule `staircase`"),
        (
            vec!["--schedule", "mslt", "--stages", "1,2", "--init", "magic"],
            "growth init `magic`",
        ),
        (
            vec![
                "--schedule",
                "stack",
                "--stages",
                "1,2",
                "--train-old-layers",
                "1",
            ],
            "field `train_old_layers`: is an mslt knob",
        ),
        (
            vec![
                "--schedule",
                "mslt",
                "--stages",
                "1,2",
                "--stage-fracs",
                "0.5,0.6",
            ],
            "field `stage_fracs`: [0.5, 0.6] add up to 1.1",
        ),
    ] {
        let mut args = train_args(&env, &r, "8", &[]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let e = run_err(&args);
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}

#[test]
fn bench_reports_every_stage_against_the_cost_model() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("b.json");
    let o = run_ok(&[
        "bench",
        "--model-config",
        "tiny",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--stages",
        "1,2",
        "--steps",
        "100",
        "--final-joint-frac",
        "0",
        "--matmul-precision",
        "tf32",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("stage 1") && out.contains("speedup"), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // recorded, and said to change nothing on the CPU
    assert_eq!(r["matmul_precision"], "tf32");
    assert!(out.contains("GFLOP/s (tf32)"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tf32 has no effect on Cpu"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "full, stage 0, stage 1, forward-only");
    assert_eq!(rows[0]["name"], "full");
    assert_eq!(rows[3]["name"], "forward-only");
    assert_eq!(
        (
            rows[1]["depth"].as_u64(),
            rows[2]["trainable_layers"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Cost model: tiny = 2 x 128, intermediate 512, vocab 30522; B=2, T=16, M masked rows.
    let (c, i, v, b, t) = (128f64, 512f64, 30522f64, 2f64, 16f64);
    let m = r["masked_rows"].as_f64().unwrap();
    let layer = 2.0 * b * t * (4.0 * c * c + 2.0 * c * i) + 4.0 * b * t * t * c;
    let transform = 2.0 * m * c * c + 2.0 * b * c * c;
    let dec = 2.0 * m * c * v;
    let full = 3.0 * (2.0 * layer + transform + dec);
    let stage1 = layer + 3.0 * (layer + transform) + 2.0 * dec; // layer 0 and embeddings frozen
    let got = rows[2]["ideal_speedup"].as_f64().unwrap();
    assert!(
        (got - full / stage1).abs() < 1e-9,
        "{got} vs {}",
        full / stage1
    );
    // Inference forward of the whole model: 2 layers + MLM head on the masked rows.
    let fwd = 2.0 * layer + transform + dec;
    let got = rows[3]["ideal_speedup"].as_f64().unwrap();
    assert!((got - full / fwd).abs() < 1e-9, "{got} vs {}", full / fwd);
    for row in rows {
        assert!(row["step"]["median_ms"].as_f64().unwrap() > 0.0);
        assert!(row["mfu"].as_f64().unwrap() > 0.0);
    }
    for row in &rows[..3] {
        assert!(row["step_peak_bytes"].as_u64().unwrap() > 0);
    }
    // the forward-only part timed alone: only stage 1 has one (layer 0 and the embeddings)
    assert!(rows[0]["frozen_forward"].is_null() && rows[1]["frozen_forward"].is_null());
    assert!(rows[2]["frozen_forward"]["median_ms"].as_f64().unwrap() > 0.0);
    assert!(out.contains("frozen ms"), "{out}");
    // The frozen stage (layer 0 and embeddings frozen) needs less step memory than a full step.
    let mem = |i: usize| rows[i]["step_peak_bytes"].as_u64().unwrap();
    assert!(mem(2) < mem(0), "stage 1 {} vs full {}", mem(2), mem(0));
}

#[test]
fn ablate_runs_a_plan_and_summarises_it() {
    let env = setup();
    let plan = format!(
        r#"out = "{out}"
baseline = "full"
[base]
data = "{data}"
model_config = "{bert}"
steps = 8
batch_size = 8
lr = 1e-3
eval_every = 4
eval_batches = 2
[[run]]
name = "full"
schedule = "full"
[[run]]
name = "stack"
schedule = "stack"
stages = [1, 2]
[[run]]
name = "mslt"
schedule = "mslt"
stages = [1, 2]
final_joint_frac = 0.0
"#,
        out = env.s("abl"),
        data = env.s("data"),
        bert = env.s("bert.json")
    );
    std::fs::write(env.p("plan.toml"), plan).unwrap();
    let o = run_ok(&["ablate", "--plan", &env.s("plan.toml")]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| full | full | 8 |") && table.contains("| mslt | mslt | 8 |"),
        "{table}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("abl/summary.json")).unwrap()).unwrap();
    assert_eq!(s[0]["speedup"].as_f64(), Some(1.0));
    assert_eq!(s[0]["mlm_loss_gap"].as_f64(), Some(0.0));
    assert!(s[2]["speedup"].as_f64().unwrap() > 0.0);
    assert_eq!(
        s[2]["evals"].as_array().unwrap().len(),
        2,
        "one eval at step 4 (every 4 = stage end), one at 8"
    );
    for f in [
        "summary.md",
        "eval_loss_vs_step.svg",
        "eval_loss_vs_time.svg",
    ] {
        let t = std::fs::read_to_string(env.p("abl").join(f)).unwrap();
        assert!(!t.is_empty());
    }
    let svg = std::fs::read_to_string(env.p("abl/eval_loss_vs_step.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3);
    // Running the plan again skips the finished runs.
    let o = run_ok(&["ablate", "--plan", &env.s("plan.toml")]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .matches("already finished")
            .count(),
        3
    );
    // A plan with a bad key names it.
    std::fs::write(
        env.p("bad.toml"),
        format!(
            "out = \"{}\"\n[[run]]\nname = \"x\"\nschedul = \"mslt\"\n",
            env.s("abl2")
        ),
    )
    .unwrap();
    let e = run_err(&["ablate", "--plan", &env.s("bad.toml")]);
    assert!(e.contains("schedul"), "{e}");
}

/// `bench --layer-ops`: one frozen layer taken apart op by op on the path the CPU runs (the plain
/// layer), as a table and as JSON.
#[test]
fn bench_layer_ops_takes_a_frozen_layer_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("ops.json");
    let o = run_ok(&[
        "bench",
        "--layer-ops",
        "--model-config",
        "tiny",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("one frozen layer on the Candle path (128 x 512, 2 heads), batch 2 x seq 16, f32, frozen dropout on"),
        "{out}"
    );
    assert!(
        out.contains("FFN down (matmul + bias)") && out.contains("sum of the ops"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["path"], "candle");
    let ops = r["ops"].as_array().unwrap();
    assert_eq!(ops.len(), 10, "{ops:?}");
    assert_eq!(ops[1]["op"], "attention");
    assert!(r.get("fused_layer").is_none());
    assert!(r["candle_layer"]["median_ms"].as_f64().unwrap() > 0.0);
}
