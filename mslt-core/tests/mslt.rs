//! Multi-stage layerwise training: growth operators, frozen forward-only layers, trainable sets.

use candle_core::{Device, Tensor};
use mslt_core::growth::{grow, operator};
use mslt_core::loss::MlmTargets;
use mslt_core::train::stage_model;
use mslt_core::train::stages::{plan, ScheduleKind, ScheduleSpec};
use mslt_core::weights::{load_safetensors, ModelFiles, Params};
use mslt_core::{BertConfig, BertForPreTraining, BertInput, Mode, Rng};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture() -> (BertConfig, HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let files = ModelFiles::from_dir(&dir.join("model")).unwrap();
    let cfg = files.load_config().unwrap();
    let w = load_safetensors(&files.weights, &cfg, &Device::Cpu)
        .unwrap()
        .tensors;
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (cfg, w, r)
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn input(cfg: &BertConfig, r: &HashMap<String, Tensor>) -> BertInput {
    let (b, t) = r["input_ids"].dims2().unwrap();
    BertInput::from_host(
        cfg,
        (b, t),
        &i64s(&r["input_ids"]),
        Some(&i64s(&r["attention_mask"])),
        Some(&i64s(&r["token_type_ids"])),
        &Device::Cpu,
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// The fixture's MLM targets and NSP labels.
fn targets(cfg: &BertConfig, r: &HashMap<String, Tensor>) -> (MlmTargets, Tensor) {
    let mlm =
        MlmTargets::from_labels(&i64s(&r["mlm_labels"]), cfg.vocab_size, &Device::Cpu).unwrap();
    let nsp: Vec<u32> = i64s(&r["nsp_labels"]).iter().map(|&v| v as u32).collect();
    let n = nsp.len();
    (mlm, Tensor::from_vec(nsp, n, &Device::Cpu).unwrap())
}

/// Sum of |t|.
fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs the embeddings and then the given layers of `m`, in order.
fn run_layers(m: &BertForPreTraining, x: &BertInput, order: &[usize]) -> Tensor {
    let mask = x.additive_mask().unwrap();
    let mut h = m.embeddings.forward(x, &mut Mode::Eval).unwrap();
    for &i in order {
        h = m.layers[i].forward(&h, &mask, &mut Mode::Eval).unwrap();
    }
    h
}

#[test]
fn growth_keeps_old_tensors_and_equals_the_documented_stack() {
    let (cfg, w, r) = fixture();
    let x = input(&cfg, &r);
    let old = BertForPreTraining::from_tensors(&cfg, &w, "fixture").unwrap();
    for (op, depth, order) in [
        ("copy-stack", 4, vec![0, 1, 0, 1]), // PS 1.0: the stack repeated
        ("copy-top", 3, vec![0, 1, 1]),      // the top layer repeated
        ("copy-top", 4, vec![0, 1, 0, 1]),   // the top 2 layers repeated
        ("copy-stack", 5, vec![0, 1, 0, 1, 0]),
    ] {
        let (c2, t2, rep) = grow(
            &w,
            &cfg,
            depth,
            operator(op).unwrap().as_ref(),
            &mut Rng::new(0),
        )
        .unwrap();
        assert_eq!(c2.num_hidden_layers, depth);
        assert_eq!(rep.kept, w.len());
        assert_eq!(rep.added.len(), 16 * (depth - 2));
        for (k, t) in &w {
            assert_eq!(bits(t), bits(&t2[k]), "{op}: `{k}` changed");
        }
        let grown = BertForPreTraining::from_tensors(&c2, &t2, "grown").unwrap();
        let got = grown
            .encode(&x, &mut Mode::Eval, false)
            .unwrap()
            .last_hidden_state;
        let want = run_layers(&old, &x, &order);
        assert_eq!(
            bits(&got),
            bits(&want),
            "{op} to {depth}: output is not the documented stack {order:?}"
        );
    }
    // copy-top cannot add more layers than exist; growth must add layers.
    assert!(grow(
        &w,
        &cfg,
        5,
        operator("copy-top").unwrap().as_ref(),
        &mut Rng::new(0)
    )
    .unwrap_err()
    .to_string()
    .contains("copy-top cannot grow 2 -> 5"));
    assert!(grow(
        &w,
        &cfg,
        2,
        operator("random").unwrap().as_ref(),
        &mut Rng::new(0)
    )
    .is_err());
    assert!(operator("interpolate").is_err());
    // random: new layers follow BERT init (LayerNorm weight 1, biases 0).
    let (_, t3, _) = grow(
        &w,
        &cfg,
        3,
        operator("random").unwrap().as_ref(),
        &mut Rng::new(0),
    )
    .unwrap();
    assert!(t3["bert.encoder.layer.2.output.LayerNorm.weight"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v == 1.0));
    assert!(t3["bert.encoder.layer.2.intermediate.dense.bias"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
}

fn two_stage_plan(train_embeddings: bool) -> Vec<mslt_core::train::stages::Stage> {
    plan(&ScheduleSpec {
        kind: ScheduleKind::Mslt,
        target_depth: 2,
        steps: 10,
        stages: &[1, 2],
        final_joint_frac: 0.0,
        train_embeddings,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn an_mslt_stage_trains_only_its_set_and_builds_no_graph_through_frozen_layers() {
    let (cfg, w, r) = fixture();
    let params = Params::from_tensors(&w).unwrap();
    let stage = &two_stage_plan(false)[1]; // layer 0 and the embeddings frozen
    let (model, trainable) = stage_model(&cfg, &params, stage).unwrap();
    let x = input(&cfg, &r);

    // No activations kept for backward: the frozen prefix's output records no graph.
    let frozen_out = run_layers(&model, &x, &[0]);
    assert!(
        !frozen_out.track_op(),
        "the frozen layer's output is on the autograd graph"
    );
    let top = model.layers[1]
        .forward(&frozen_out, &x.additive_mask().unwrap(), &mut Mode::Eval)
        .unwrap();
    assert!(
        top.track_op(),
        "the trainable layer's output must be tracked"
    );

    // Trainable set: layer 1 + pooler + MLM head + NSP head; its size as documented.
    let c = cfg.hidden_size;
    let layer =
        4 * (c * c + c) + 2 * (c * cfg.intermediate_size) + cfg.intermediate_size + c + 4 * c;
    let heads = (c * c + c) + (c * c + c + 2 * c + cfg.vocab_size) + (2 * c + 2);
    let n: usize = trainable.iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(n, layer + heads);
    assert!(trainable
        .iter()
        .all(|(k, _)| k.starts_with("bert.encoder.layer.1.")
            || k.starts_with("cls.")
            || k.starts_with("bert.pooler.")));

    // Gradients reach exactly the trainable set, and every trainable parameter.
    let (mlm, nsp) = targets(&cfg, &r);
    let mut rng = Rng::new(1);
    let l = model
        .pretraining_loss(&x, &mlm, Some(&nsp), &mut Mode::Train(&mut rng))
        .unwrap();
    let grads = l.loss.backward().unwrap();
    for (name, var) in &params.vars {
        let g = grads.get(var.as_tensor());
        if stage.trains(name) {
            let g = g.unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(abs_sum(g) > 0.0, "{name}: zero gradient");
        } else {
            assert!(g.is_none(), "{name} is frozen but got a gradient");
        }
    }
    // With --train-embeddings the embeddings (and the tied decoder) train, through the frozen layer.
    let stage_e = &two_stage_plan(true)[1];
    let (_, tr) = stage_model(&cfg, &params, stage_e).unwrap();
    assert!(tr
        .iter()
        .any(|(k, _)| k == "bert.embeddings.word_embeddings.weight"));
    assert!(!tr
        .iter()
        .any(|(k, _)| k.starts_with("bert.encoder.layer.0.")));
}

#[test]
fn train_old_layers_unfreezes_the_top_old_layer_and_nothing_below_it() {
    // 2 -> 3 layers with --train-old-layers 1: in stage 1 layer 1 (the old top) trains with the
    // new layer 2; layer 0 and the embeddings stay frozen and forward-only.
    let (cfg, w, r) = fixture();
    let (cfg3, w3, _) = grow(
        &w,
        &cfg,
        3,
        operator("copy-top").unwrap().as_ref(),
        &mut Rng::new(0),
    )
    .unwrap();
    let params = Params::from_tensors(&w3).unwrap();
    let stage = plan(&ScheduleSpec {
        kind: ScheduleKind::Mslt,
        target_depth: 3,
        steps: 10,
        stages: &[2, 3],
        final_joint_frac: 0.0,
        train_old_layers: 1,
        ..Default::default()
    })
    .unwrap()[1]
        .clone();
    assert_eq!((stage.train_from_layer, stage.train_embeddings), (1, false));
    let (model, trainable) = stage_model(&cfg3, &params, &stage).unwrap();
    let x = input(&cfg, &r);
    let frozen_out = run_layers(&model, &x, &[0]);
    assert!(
        !frozen_out.track_op(),
        "the frozen layer 0's output is on the autograd graph"
    );
    let trains = |k: &str| {
        k.starts_with("bert.encoder.layer.1.")
            || k.starts_with("bert.encoder.layer.2.")
            || k.starts_with("cls.")
            || k.starts_with("bert.pooler.")
    };
    assert!(trainable.iter().all(|(k, _)| trains(k)));
    let (mlm, _) = targets(&cfg, &r);
    let mut rng = Rng::new(1);
    let l = model
        .pretraining_loss(&x, &mlm, None, &mut Mode::Train(&mut rng))
        .unwrap();
    let grads = l.loss.backward().unwrap();
    for (name, var) in &params.vars {
        let g = grads.get(var.as_tensor());
        if name.starts_with("bert.encoder.layer.") && trains(name) {
            let g = g.unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(abs_sum(g) > 0.0, "{name}: zero gradient");
        } else if !trains(name) {
            assert!(g.is_none(), "{name} is frozen but got a gradient");
        }
    }
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(1e-30)
}

#[test]
fn an_untied_decoder_equal_to_the_embeddings_matches_the_tied_model() {
    // The tied model is checked against PyTorch (tests/hf_reference.rs). Untying the decoder
    // with a copy of the word embeddings must give the same loss, the same gradient for every
    // other parameter, and split the tied weight's gradient into the two copies:
    // d(word) + d(decoder) = d(tied word).
    let (cfg, w, r) = fixture();
    let x = input(&cfg, &r);
    let (mlm, nsp) = targets(&cfg, &r);
    let loss_and_grads = |cfg: &BertConfig, w: &HashMap<String, Tensor>| {
        let params = Params::from_tensors(w).unwrap();
        let m = BertForPreTraining::from_tensors(cfg, &params.tensors(), "t").unwrap();
        let l = m
            .pretraining_loss(&x, &mlm, Some(&nsp), &mut Mode::Eval)
            .unwrap();
        let g = l.loss.backward().unwrap();
        let grads: HashMap<String, Tensor> = params
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), g.get(v.as_tensor()).unwrap().clone()))
            .collect();
        (l.loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (tied_loss, tied) = loss_and_grads(&cfg, &w);

    let mut ucfg = cfg.clone();
    ucfg.tie_word_embeddings = false;
    assert_eq!(
        ucfg.num_parameters() - cfg.num_parameters(),
        cfg.vocab_size * cfg.hidden_size
    );
    let mut uw = w.clone();
    assert!(mslt_core::weights::untie_decoder(&ucfg, &mut uw).unwrap());
    let dec = "cls.predictions.decoder.weight";
    let word = "bert.embeddings.word_embeddings.weight";
    assert_eq!(bits(&uw[dec]), bits(&w[word]));
    assert!(!mslt_core::weights::untie_decoder(&ucfg, &mut uw).unwrap()); // already untied
    let (untied_loss, untied) = loss_and_grads(&ucfg, &uw);
    assert_eq!(tied_loss.to_bits(), untied_loss.to_bits());
    assert_eq!(untied.len(), tied.len() + 1);
    for (k, g) in &tied {
        if k == word {
            let sum = (&untied[word] + &untied[dec]).unwrap();
            let e = rel_diff(&sum, g);
            assert!(e < 1e-6, "{k}: d(word) + d(decoder) off by {e}");
            // both copies get a real share: the decoder's from the MLM logits, the embedding's
            // from the input lookup
            assert!(rel_diff(&untied[dec], g) > 1e-3 && rel_diff(&untied[word], g) > 1e-3);
        } else {
            assert_eq!(bits(&untied[k]), bits(g), "{k}: gradient changed");
        }
    }
}

#[test]
fn an_untied_decoder_trains_in_an_mslt_stage_with_frozen_embeddings() {
    let (cfg, w, r) = fixture();
    let mut ucfg = cfg.clone();
    ucfg.tie_word_embeddings = false;
    let mut uw = w.clone();
    mslt_core::weights::untie_decoder(&ucfg, &mut uw).unwrap();
    let params = Params::from_tensors(&uw).unwrap();
    let stage = &two_stage_plan(false)[1]; // layer 0 and the embeddings frozen
    let (model, trainable) = stage_model(&ucfg, &params, stage).unwrap();
    let dec = "cls.predictions.decoder.weight";
    assert!(trainable.iter().any(|(k, _)| k == dec));
    let x = input(&cfg, &r);
    let (mlm, _) = targets(&cfg, &r);
    let l = model
        .pretraining_loss(&x, &mlm, None, &mut Mode::Eval)
        .unwrap();
    let g = l.loss.backward().unwrap();
    let gd = g
        .get(params.vars[dec].as_tensor())
        .expect("decoder gradient");
    assert!(abs_sum(gd) > 0.0);
    assert!(g
        .get(params.vars["bert.embeddings.word_embeddings.weight"].as_tensor())
        .is_none());
}

#[test]
fn untied_checkpoints_load_and_tied_ones_drop_a_stray_decoder_weight() {
    let (cfg, w, _) = fixture();
    let dir = std::env::temp_dir().join(format!("mslt-untied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dec = "cls.predictions.decoder.weight";
    let word = "bert.embeddings.word_embeddings.weight";
    let scaled = (&w[word] * 0.5).unwrap();
    let mut uw = w.clone();
    uw.insert(dec.into(), scaled.clone());
    candle_core::safetensors::save(&uw, dir.join("model.safetensors")).unwrap();

    // config.json says untied: the decoder weight is loaded and used
    let mut ucfg = cfg.clone();
    ucfg.tie_word_embeddings = false;
    let json = ucfg.to_hf_json();
    assert_eq!(json["tie_word_embeddings"], false);
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let files = ModelFiles::from_dir(&dir).unwrap();
    let c = files.load_config().unwrap();
    assert!(!c.tie_word_embeddings);
    let l = load_safetensors(&files.weights, &c, &Device::Cpu).unwrap();
    assert_eq!(bits(&l.tensors[dec]), bits(&scaled));
    let m = BertForPreTraining::from_tensors(&c, &l.tensors, &l.origin).unwrap();
    assert_eq!(
        bits(m.mlm.as_ref().unwrap().decoder.as_ref().unwrap()),
        bits(&scaled)
    );

    // the same file under a tied config: the decoder weight is ignored, the embeddings decode
    let t = load_safetensors(&files.weights, &cfg, &Device::Cpu).unwrap();
    assert!(!t.tensors.contains_key(dec));
    assert!(t.ignored.iter().any(|n| n == dec));
    let m = BertForPreTraining::from_tensors(&cfg, &t.tensors, &t.origin).unwrap();
    assert!(m.mlm.as_ref().unwrap().decoder.is_none());

    // Both MLM bias names, different values (what transformers 5.x saves for an untied model,
    // whose forward adds `cls.predictions.decoder.bias`): the untied config reads the decoder's,
    // the tied one `cls.predictions.bias` (5.x ties the two then); the other is listed as ignored.
    let (bias, dbias) = ("cls.predictions.bias", "cls.predictions.decoder.bias");
    let other = (&w[bias] + 1.0).unwrap();
    uw.insert(dbias.into(), other.clone());
    candle_core::safetensors::save(&uw, dir.join("model.safetensors")).unwrap();
    for (config, read, skipped) in [(&c, &other, bias), (&cfg, &w[bias], dbias)] {
        let l = load_safetensors(&files.weights, config, &Device::Cpu).unwrap();
        assert_eq!(
            bits(&l.tensors[bias]),
            bits(read),
            "tie {}",
            config.tie_word_embeddings
        );
        assert!(l.ignored.iter().any(|n| n == skipped), "{:?}", l.ignored);
        let names = uw.keys().map(|k| k.as_str());
        assert_eq!(
            mslt_core::weights::shadowed_mlm_bias(names, config.tie_word_embeddings),
            Some(skipped)
        );
    }
    // the same with the two names in two shards, read in both orders: the choice does not
    // depend on the order the files or their tensors come in
    let (a, b) = (
        dir.join("shard-a.safetensors"),
        dir.join("shard-b.safetensors"),
    );
    let mut only_dbias = HashMap::new();
    only_dbias.insert(dbias.to_string(), other.clone());
    let mut rest = uw.clone();
    rest.remove(dbias);
    candle_core::safetensors::save(&rest, &a).unwrap();
    candle_core::safetensors::save(&only_dbias, &b).unwrap();
    for paths in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
        for (config, read, skipped, used) in
            [(&c, &other, bias, dbias), (&cfg, &w[bias], dbias, bias)]
        {
            let l = load_safetensors(&paths, config, &Device::Cpu).unwrap();
            assert_eq!(bits(&l.tensors[bias]), bits(read), "{paths:?}");
            assert!(l.ignored.iter().any(|n| n == skipped), "{:?}", l.ignored);
            assert!(!l.ignored.iter().any(|n| n == used), "{:?}", l.ignored);
        }
    }
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    // the second bias name holding the same values (what mslt's untied export writes): listed
    // as redundant, not as unused, under either tie
    let mut same = uw.clone();
    same.insert(dbias.into(), w[bias].clone());
    candle_core::safetensors::save(&same, dir.join("model.safetensors")).unwrap();
    for config in [&c, &cfg] {
        let tie = config.tie_word_embeddings;
        let l = load_safetensors(&files.weights, config, &Device::Cpu).unwrap();
        assert_eq!(bits(&l.tensors[bias]), bits(&w[bias]));
        let skipped = mslt_core::weights::preferred_mlm_bias(!tie);
        assert_eq!(l.redundant, vec![skipped.to_string()], "tie {tie}");
        assert!(
            !l.ignored.iter().any(|n| n.ends_with("bias")),
            "tie {tie}: {:?}",
            l.ignored
        );
    }
    // a tied config and a stored decoder weight equal to the word embeddings (HF checkpoints
    // may carry it): redundant, nothing to report; one that differs is reported
    let mut tied_copy = w.clone();
    tied_copy.insert(dec.into(), w[word].clone());
    candle_core::safetensors::save(&tied_copy, dir.join("model.safetensors")).unwrap();
    let l = load_safetensors(&files.weights, &cfg, &Device::Cpu).unwrap();
    assert_eq!(l.redundant, vec![dec.to_string()]);
    assert_eq!(l.unused_note(), None, "{:?}", l.ignored);
    tied_copy.insert(dec.into(), scaled.clone());
    candle_core::safetensors::save(&tied_copy, dir.join("model.safetensors")).unwrap();
    let l = load_safetensors(&files.weights, &cfg, &Device::Cpu).unwrap();
    assert!(l.redundant.is_empty(), "{:?}", l.redundant);
    assert_eq!(
        l.unused_note().as_deref(),
        Some("1 tensor(s) not used: cls.predictions.decoder.weight")
    );
    // the decoder's bias alone is read under either tie
    uw.remove(bias);
    candle_core::safetensors::save(&uw, dir.join("model.safetensors")).unwrap();
    for config in [&c, &cfg] {
        let l = load_safetensors(&files.weights, config, &Device::Cpu).unwrap();
        assert_eq!(bits(&l.tensors[bias]), bits(&other));
        assert!(
            !l.ignored.iter().any(|n| n.ends_with("bias")),
            "{:?}",
            l.ignored
        );
    }

    // untied config, no decoder weight in the file: an error that names it
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let l = load_safetensors(&files.weights, &c, &Device::Cpu).unwrap();
    let e = BertForPreTraining::from_tensors(&c, &l.tensors, &l.origin)
        .unwrap_err()
        .to_string();
    assert!(e.contains(dec), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copy_top_zero_starts_the_new_layer_as_its_two_layernorms() {
    // 2 -> 3: layer 2 is layer 1 with both branch output projections zeroed, so on any input h
    // it computes LN_out(LN_attn(h + 0) + 0) with layer 1's LayerNorm parameters.
    let (cfg, w, r) = fixture();
    let x = input(&cfg, &r);
    let (c3, t3, _) = grow(
        &w,
        &cfg,
        3,
        operator("copy-top-zero").unwrap().as_ref(),
        &mut Rng::new(0),
    )
    .unwrap();
    for (k, t) in &w {
        assert_eq!(bits(t), bits(&t3[k]), "`{k}` changed");
    }
    let zeroed = [
        "attention.output.dense.weight",
        "attention.output.dense.bias",
        "output.dense.weight",
        "output.dense.bias",
    ];
    for (name, _) in
        mslt_core::model::names::layer_params(2, cfg.hidden_size, cfg.intermediate_size)
    {
        let rest = name.strip_prefix("bert.encoder.layer.2.").unwrap();
        let src = &w[&format!("bert.encoder.layer.1.{rest}")];
        if zeroed.contains(&rest) {
            assert!(
                t3[&name]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .all(|&v| v == 0.0),
                "{name}"
            );
        } else {
            assert_eq!(bits(&t3[&name]), bits(src), "{name} is not layer 1's");
        }
    }
    let grown = BertForPreTraining::from_tensors(&c3, &t3, "grown").unwrap();
    let old = BertForPreTraining::from_tensors(&cfg, &w, "fixture").unwrap();
    let h = run_layers(&old, &x, &[0, 1]); // (B, T, C)
    let got = grown
        .encode(&x, &mut Mode::Eval, false)
        .unwrap()
        .last_hidden_state;
    let ln = |p: &str, t: &Tensor| {
        mslt_core::nn::layer_norm_reference(
            t,
            &w[&format!("bert.encoder.layer.1.{p}.LayerNorm.weight")],
            &w[&format!("bert.encoder.layer.1.{p}.LayerNorm.bias")],
            cfg.layer_norm_eps,
        )
        .unwrap()
    };
    let want = ln("output", &ln("attention.output", &h));
    let e = rel_diff(&got, &want);
    assert!(e < 1e-5, "copy-top-zero layer is not LN(LN(h)): {e}");
    // and it is not the identity (post-LN has none), nor what copy-top gives
    assert!(rel_diff(&got, &h) > 0.0);
    assert!(grow(
        &w,
        &cfg,
        5,
        operator("copy-top-zero").unwrap().as_ref(),
        &mut Rng::new(0)
    )
    .unwrap_err()
    .to_string()
    .contains("copy-top-zero cannot grow 2 -> 5"));
}
