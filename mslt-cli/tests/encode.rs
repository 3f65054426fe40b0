//! `mslt-cli encode --input` on the tiny HF fixture: every head's output against transformers,
//! loading with and without the `bert.` prefix, and from the HF hub cache by id.

mod common;
use candle_core::Tensor;
use common::*;
use std::collections::HashMap;

/// The fixture's inputs (plus a tensor encode must ignore) as an --input file.
fn write_inputs(dir: &std::path::Path) -> std::path::PathBuf {
    let r = load(&fixture("tiny/reference.safetensors"));
    let mut m: HashMap<String, Tensor> = HashMap::new();
    for k in [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "mlm_labels",
    ] {
        m.insert(k.into(), r[k].clone());
    }
    let p = dir.join("inputs.safetensors");
    save(&m, &p);
    p
}

fn check_outputs(out: &std::path::Path) {
    let got = load(out);
    let want = load(&fixture("tiny/reference.safetensors"));
    for (k, r) in [
        ("last_hidden_state", "hidden_states.2"),
        ("pooler_output", "pooler_output"),
        ("prediction_logits", "prediction_logits"),
        ("seq_relationship_logits", "seq_relationship_logits"),
    ] {
        let d = max_abs(&got[k], &want[r]);
        assert!(d < 1e-5, "{k}: max abs error {d:.3e}");
    }
    assert_eq!(i64s(&got["input_ids"]), i64s(&want["input_ids"]));
    assert!(
        !got.contains_key("mlm_labels"),
        "extra input tensors are not copied"
    );
}

/// `encode` of a model directory on the fixture's inputs (written into it), outputs checked;
/// returns stderr.
fn encode_model_dir(dir: &std::path::Path) -> String {
    let inputs = write_inputs(dir);
    let out = dir.join("out.safetensors");
    let o = run_ok(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        inputs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    check_outputs(&out);
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn encode_input_file_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_inputs(tmp.path());
    let out = tmp.path().join("out.safetensors");
    let o = run_ok(&[
        "encode",
        "--model",
        fixture("tiny/model").to_str().unwrap(),
        "--input",
        inputs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--batch-size",
        "2", // exercises batching over the 3 rows
    ]);
    check_outputs(&out);
    // every tensor of the fixture is a parameter that was read
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("not used"), "{err}");
}

#[test]
fn loads_without_the_bert_prefix() {
    let tmp = tiny_model_copy();
    let w = load(&tmp.path().join("model.safetensors"));
    let mut renamed: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("bert.").map(String::from).unwrap_or(k), v))
        .collect();
    assert!(renamed.contains_key("embeddings.word_embeddings.weight"));
    // a buffer, as sentence-transformers' files carry (not a parameter: not reported), and a
    // head mslt does not have (reported as not used)
    let ids = Tensor::arange(0i64, 16, &candle_core::Device::Cpu).unwrap();
    renamed.insert("embeddings.position_ids".into(), ids.unsqueeze(0).unwrap());
    let qa = Tensor::zeros((2, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    renamed.insert("qa_outputs.weight".into(), qa);
    save(&renamed, &tmp.path().join("model.safetensors"));
    let err = encode_model_dir(tmp.path());
    assert!(
        err.contains("1 tensor(s) not used: qa_outputs.weight"),
        "{err}"
    );
    assert!(!err.contains("position_ids"), "{err}");
}

#[test]
fn resolves_a_hub_id_from_the_hf_cache() {
    // HF cache layout: $HF_HOME/hub/models--{owner}--{name}/{refs/main, snapshots/<rev>/...}
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--mslt-test--tiny-bert");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny/model").join(f), snap.join(f)).unwrap();
    }
    let inputs = write_inputs(home.path());
    let out = home.path().join("out.safetensors");
    let o = cli()
        .env("HF_HOME", home.path())
        .args(["encode", "--model", "mslt-test/tiny-bert", "--input"])
        .arg(&inputs)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_outputs(&out);
}

#[test]
fn inspect_lists_config_and_tensors() {
    let o = run_ok(&["inspect", fixture("tiny/model").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("layers 2  hidden 64"), "{s}");
    assert!(
        s.contains("parameters with all heads (BertForPreTraining): 146178"),
        "{s}"
    );
    assert!(
        s.contains("bert.encoder.layer.1.attention.self.query.weight"),
        "{s}"
    );
    assert!(s.contains("[64, 64]"), "{s}");
}

#[test]
fn inspect_counts_the_mlm_bias_once_across_shards() {
    // The tiny fixture (tied decoder) split into two shards, the second holding the MLM bias a
    // second time under the decoder's name: the used count over both shards is the model's
    // parameter count, as for the single file, and not one bias more.
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny/model/config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    let w = load(&fixture("tiny/model/model.safetensors"));
    let bias = w["cls.predictions.bias"].clone();
    let (a, b) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    let mut shard_b = HashMap::new();
    shard_b.insert("cls.predictions.decoder.bias".to_string(), bias);
    let mut weight_map = serde_json::Map::new();
    for k in w.keys() {
        weight_map.insert(k.clone(), a.into());
    }
    weight_map.insert("cls.predictions.decoder.bias".into(), b.into());
    save(&w, &d.path().join(a));
    save(&shard_b, &d.path().join(b));
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();
    let o = run_ok(&["inspect", d.path().to_str().unwrap()]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("all 2 shards: 146178 elements in BERT parameters mslt uses"),
        "{s}"
    );
    // the second shard's only tensor is the shadowed bias: none of its elements are used
    assert!(
        s.contains("1 tensors, 512 elements; 0 in BERT parameters"),
        "{s}"
    );
    // encode reads the same bias: the copy under the other name is not reported; a second
    // name with other values is
    let err = encode_model_dir(d.path());
    assert!(!err.contains("not used"), "{err}");
    shard_b.insert(
        "cls.predictions.decoder.bias".to_string(),
        (&w["cls.predictions.bias"] + 1.0).unwrap(),
    );
    save(&shard_b, &d.path().join(b));
    let err = encode_model_dir(d.path());
    assert!(
        err.contains("1 tensor(s) not used: cls.predictions.decoder.bias"),
        "{err}"
    );
}
