//! A real pretrained BERT (all-MiniLM-L6-v2) against transformers' outputs
//! (mslt-core/tests/fixtures/minilm): token ids equal, last_hidden_state within 1e-4 absolute,
//! through `mslt-cli encode --text-file`.

mod common;
use common::*;
use mslt_core::tokenizer::{pad_batch, BertTokenizer};

#[test]
fn encode_text_file_matches_transformers() {
    let Some(model) = minilm_dir() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("minilm.safetensors");
    run_ok(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--text-file",
        fixture("minilm/sentences.txt").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let got = load(&out);
    let want = load(&fixture("minilm/reference.safetensors"));
    for k in ["input_ids", "attention_mask", "token_type_ids"] {
        assert_eq!(got[k].dims(), want[k].dims(), "{k}");
        assert_eq!(i64s(&got[k]), i64s(&want[k]), "{k} differ from HF's");
    }
    for (k, tol) in [("last_hidden_state", 1e-4), ("pooler_output", 1e-4)] {
        let d = max_abs(&got[k], &want[k]);
        println!("minilm {k}: max abs error {d:.3e}");
        assert!(d < tol, "{k}: max abs error {d:.3e}");
    }
    assert!(
        !got.contains_key("prediction_logits"),
        "MiniLM has no MLM head"
    );
}

#[test]
fn vocab_txt_tokenizer_gives_hf_ids() {
    // The bare vocab.txt path (BERT WordPiece, lowercase) must equal tokenizer.json / HF ids.
    let Some(model) = minilm_dir() else { return };
    let sentences = std::fs::read_to_string(fixture("minilm/sentences.txt")).unwrap();
    let want = load(&fixture("minilm/reference.safetensors"));
    for tok in [
        BertTokenizer::from_vocab_txt(&model.join("vocab.txt"), true).unwrap(),
        BertTokenizer::from_tokenizer_json(&model.join("tokenizer.json")).unwrap(),
    ] {
        let enc: Vec<_> = sentences.lines().map(|l| tok.encode(l).unwrap()).collect();
        let (ids, mask, _, _) = pad_batch(&enc, tok.pad_id);
        assert_eq!(ids, i64s(&want["input_ids"]), "{}", tok.origin());
        assert_eq!(mask, i64s(&want["attention_mask"]), "{}", tok.origin());
    }
}
