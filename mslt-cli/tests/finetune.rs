//! Fine-tuning (GLUE TSV / CSV tasks, a real pretrained model on a real task), export to a
//! Hugging Face directory and its round trip, and the bad inputs of both.

mod common;
use common::*;
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn minilm_learns_movie_review_sentiment() {
    let (Some(model), Some(task)) = (minilm_dir(), task_dir("rotten-tomatoes")) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let o = run_ok(&[
        "finetune",
        "--checkpoint",
        model.to_str().unwrap(),
        "--task",
        task.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--epochs",
        "1",
        "--max-train",
        "1000",
        "--max-dev",
        "400",
        "--max-seq-len",
        "64",
        "--batch-size",
        "16",
        "--lr",
        "1e-4",
        "--no-progress",
    ]);
    println!("{}", String::from_utf8_lossy(&o.stdout));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap())
            .unwrap();
    let run = &r["runs"][0];
    let acc = run["final_dev"]["accuracy"].as_f64().unwrap();
    // Majority class of these 400 dev reviews:
    let dev = std::fs::read_to_string(task.join("dev.csv")).unwrap();
    let fresh = dev
        .lines()
        .skip(1)
        .take(400)
        .filter(|l| l.starts_with("fresh,"))
        .count() as f64
        / 400.0;
    let majority = fresh.max(1.0 - fresh);
    println!("rotten-tomatoes: dev accuracy {acc:.4} (majority class {majority:.4})");
    assert_eq!(run["dev_examples"], 400);
    assert!(
        acc >= 0.70 && acc >= majority + 0.1,
        "accuracy {acc} vs majority {majority}"
    );
    // The fine-tuned model is a HF BertForSequenceClassification directory.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("model/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["1"], "rotten");
    let w = load(&out.path().join("model/model.safetensors"));
    assert_eq!(w["classifier.weight"].dims(), &[2, 384]);
}

#[test]
fn glue_tsv_layouts_are_read() {
    use mslt_core::finetune::{load_task, Metric};
    let d = tempfile::tempdir().unwrap();
    // SST-2: header sentence \t label
    let sst = d.path().join("SST-2");
    write(
        &sst,
        "train.tsv",
        "sentence\tlabel\na great film \t1\nawful\t0\n",
    );
    write(&sst, "dev.tsv", "sentence\tlabel\nfine\t1\n");
    let t = load_task(&sst).unwrap();
    assert_eq!((t.train.len(), t.dev.len(), t.pair), (2, 1, false));
    assert_eq!(t.labels, vec!["0", "1"]);
    assert_eq!(t.train[0].a, "a great film");
    // MRPC: pairs, label column "Quality", metric F1
    let mrpc = d.path().join("MRPC");
    let h = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n";
    write(
        &mrpc,
        "train.tsv",
        &format!("{h}1\t1\t2\tA b.\tA b!\n0\t3\t4\tC.\tD.\n"),
    );
    write(&mrpc, "dev.tsv", &format!("{h}1\t5\t6\tE.\tE!\n"));
    let t = load_task(&mrpc).unwrap();
    assert!(t.pair);
    assert_eq!(t.metric, Metric::F1);
    assert_eq!(
        (t.train[0].a.as_str(), t.train[0].b.as_deref()),
        ("A b.", Some("A b!"))
    );
    // QNLI: question + sentence
    let qnli = d.path().join("QNLI");
    let h = "index\tquestion\tsentence\tlabel\n";
    write(
        &qnli,
        "train.tsv",
        &format!("{h}0\tWho?\tHim.\tentailment\n1\tWhat?\tNo.\tnot_entailment\n"),
    );
    write(
        &qnli,
        "dev.tsv",
        &format!("{h}0\tWhy?\tBecause.\tentailment\n"),
    );
    let t = load_task(&qnli).unwrap();
    assert_eq!(
        (t.train[0].a.as_str(), t.train[0].b.as_deref()),
        ("Who?", Some("Him."))
    );
    // CoLA: no header, 4 columns, Matthews correlation
    let cola = d.path().join("CoLA");
    write(
        &cola,
        "train.tsv",
        "gj04\t1\t\tThe book is red.\ngj04\t0\t*\tBook the red is.\n",
    );
    write(&cola, "dev.tsv", "gj04\t1\t\tIt rains.\n");
    let t = load_task(&cola).unwrap();
    assert_eq!(t.metric, Metric::Matthews);
    assert_eq!(
        (t.train[1].a.as_str(), t.train[1].label.as_str()),
        ("Book the red is.", "0")
    );
    // CSV pairs with quoting; one file -> every tenth row is dev
    let f = d.path().join("pairs.csv");
    let mut csv = String::from("label,text_a,text_b\n");
    for i in 0..20 {
        csv.push_str(&format!("{},\"a, {i}\",b {i}\n", i % 2));
    }
    std::fs::write(&f, csv).unwrap();
    let t = load_task(&f).unwrap();
    assert_eq!((t.train.len(), t.dev.len(), t.pair), (18, 2, true));
    assert_eq!(t.train[1].a, "a, 1");
}

#[test]
fn bad_task_files_and_checkpoints_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny/model");
    let run = |task: &Path, ckpt: &Path| {
        run_err(&[
            "finetune",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--task",
            task.to_str().unwrap(),
            "--out",
            d.path().join("out").to_str().unwrap(),
            "--no-progress",
        ])
    };
    // unknown label in dev
    let t1 = d.path().join("t1");
    write(&t1, "train.csv", "label,text\npos,good\nneg,bad\n");
    write(&t1, "dev.csv", "label,text\npos,fine\nmeh,so so\n");
    let e = run(&t1, &model);
    assert!(
        e.contains("dev.csv") && e.contains("\"meh\"") && e.contains("pos"),
        "{e}"
    );
    // empty split
    let t2 = d.path().join("t2");
    write(&t2, "train.csv", "label,text\npos,good\nneg,bad\n");
    write(&t2, "dev.csv", "label,text\n");
    let e = run(&t2, &model);
    assert!(e.contains("dev.csv") && e.contains("no examples"), "{e}");
    // ragged TSV row
    let t3 = d.path().join("SST-2");
    write(
        &t3,
        "train.tsv",
        "sentence\tlabel\ngood\t1\nbad\t0\textra\n",
    );
    write(&t3, "dev.tsv", "sentence\tlabel\nok\t1\n");
    let e = run(&t3, &model);
    assert!(
        e.contains("train.tsv") && e.contains("line 3") && e.contains("ragged"),
        "{e}"
    );
    // a checkpoint without a tokenizer (the tiny fixture has only config + weights)
    let e = run(&t1.join("../t1-ok"), &model);
    assert!(e.contains("no such task"), "{e}");
    let t4 = d.path().join("t4");
    write(&t4, "train.csv", "label,text\npos,good\nneg,bad\n");
    write(&t4, "dev.csv", "label,text\npos,fine\n");
    let e = run(&t4, &model);
    assert!(e.contains("has no tokenizer"), "{e}");
    // export of a checkpoint without a tokenizer
    let e = run_err(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        d.path().join("x").to_str().unwrap(),
    ]);
    assert!(e.contains("no tokenizer.json or vocab.txt"), "{e}");
}

#[test]
fn export_round_trips_through_our_loader() {
    let Some(model) = minilm_dir() else { return };
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("export");
    run_ok(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertModel");
    // HF names with the `bert.` prefix, and a safetensors header transformers accepts.
    let w = load(&out.join("model.safetensors"));
    assert!(w.contains_key("bert.encoder.layer.5.output.dense.weight"));
    // Same outputs, bit for bit, from the original and the exported directory.
    let enc = |m: &Path, name: &str| {
        let p = d.path().join(name);
        run_ok(&[
            "encode",
            "--model",
            m.to_str().unwrap(),
            "--text-file",
            fixture("minilm/sentences.txt").to_str().unwrap(),
            "--output",
            p.to_str().unwrap(),
        ]);
        load(&p)
    };
    let (a, b) = (enc(&model, "a.safetensors"), enc(&out, "b.safetensors"));
    for k in ["input_ids", "last_hidden_state", "pooler_output"] {
        assert_eq!(max_abs(&a[k], &b[k]), 0.0, "{k}");
    }
    // A second export into the same place needs --force.
    let e = run_err(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--force"), "{e}");
    run_ok(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
}
