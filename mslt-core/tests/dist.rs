//! Data-parallel training on CPU through the in-process stand-in of the collective
//! (`dist::LocalGroup`, one thread per rank): N ranks on shards of the global batch end where one
//! process on the whole batch ends; only trainable gradients are reduced; the bucket plan follows
//! the stages; rank 0 alone writes; resume at the same and at another world size.

use candle_core::{Device, Tensor};
use mslt_core::data::prepare::{prepare, PrepareConfig};
use mslt_core::dist::{Collective, LocalComm, LocalGroup, Single};
use mslt_core::train::stages::ScheduleKind;
use mslt_core::train::{train_on, Event, Summary, TrainConfig};
use mslt_core::BertConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WORDS: &[&str] = &[
    "the", "a", "state", "union", "congress", "people", "nation", "law", "year", "war", "peace",
    "trade", "tax", "we", "must", "will", "have", "is", "of", "and", "to", "in", "for", "our",
    "new", "great", "land", "work", "free", "men", "power", "public", "good",
];

/// A small corpus, its vocab.txt, prepared data (seq len 32, NSP) and a dropout-free 4 x 64 BERT
/// config (dropout off: the ranks draw their own dropout masks, so runs are comparable only
/// without it).
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    let mut x: u64 = 11;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for d in 0..30 {
        let mut text = String::new();
        for _ in 0..(6 + next() % 8) {
            let n = 4 + next() % 10;
            let words: Vec<&str> = (0..n)
                .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                .collect();
            text += &words.join(" ");
            text += " .\n";
        }
        std::fs::write(dir.join(format!("corpus/doc{d:02}.txt")), text).unwrap();
    }
    let data = dir.join("data");
    let cfg = PrepareConfig {
        seq_len: 32,
        nsp: true,
        val_fraction: 0.1,
        ..Default::default()
    };
    prepare(
        &[dir.join("corpus")],
        &dir.join("vocab.txt"),
        &data,
        &cfg,
        &|_, _| {},
    )
    .unwrap();
    let mut mc = BertConfig::with_size(4, 64);
    mc.vocab_size = vocab.len();
    mc.max_position_embeddings = 64;
    mc.hidden_dropout_prob = 0.0;
    mc.attention_probs_dropout_prob = 0.0;
    let model = dir.join("config.json");
    std::fs::write(&model, mc.to_hf_json().to_string()).unwrap();
    (data, model)
}

fn config(data: &Path, model: &Path, out: PathBuf) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out,
        model_config: model.to_str().unwrap().into(),
        steps: 6,
        batch_size: 8,
        grad_accum: 2,
        lr: 2e-3,
        warmup_steps: Some(1),
        schedule: ScheduleKind::Mslt,
        stages: vec![2, 4],
        final_joint_frac: 0.0,
        eval_batches: 2,
        log_every: 1,
        keep_last: 0,
        ..Default::default()
    }
}

/// Runs `cfgs[r]` as rank r of a local world of `cfgs.len()` ranks; returns each rank's summary
/// and start notes.
fn run_world(cfgs: Vec<TrainConfig>, resume: bool) -> Vec<(Summary, Vec<String>)> {
    let comms = LocalGroup::new(cfgs.len(), Duration::from_secs(300));
    let handles: Vec<_> = comms
        .into_iter()
        .zip(cfgs)
        .map(|(c, cfg): (LocalComm, TrainConfig)| {
            std::thread::spawn(move || {
                let mut notes = Vec::new();
                let s = train_on(&cfg, resume, &Device::Cpu, &c, &mut |e| {
                    if let Event::Started { notes: n, .. } = e {
                        notes.extend(n.iter().cloned());
                    }
                })
                .unwrap_or_else(|e| panic!("rank {}: {e}", c.rank()));
                (s, notes)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

fn run_single(cfg: &TrainConfig, resume: bool) -> (Summary, Vec<String>) {
    let mut notes = Vec::new();
    let s = train_on(cfg, resume, &Device::Cpu, &Single, &mut |e| {
        if let Event::Started { notes: n, .. } = e {
            notes.extend(n.iter().cloned());
        }
    })
    .unwrap();
    (s, notes)
}

/// Largest |a - b| over every parameter.
fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| {
            (t - &b[k])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max)
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(out: &Path) -> Vec<f64> {
    metrics(out)
        .iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn sharded_ranks_end_where_one_process_ends_and_only_rank_0_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = fixture(tmp.path());
    let single = config(&data, &model, tmp.path().join("single"));
    let (one, _) = run_single(&single, false);
    assert_eq!(one.steps, 6);
    assert_eq!((one.world_size, one.allreduce_bytes), (1, 0));

    // Negative control: one process on half the batch (what a rank sees) ends elsewhere, so
    // the tolerance below can tell a correct reduction from a missing one.
    let mut half = single.clone();
    half.batch_size = 4;
    half.out = tmp.path().join("half");
    let (h, _) = run_single(&half, false);
    let control = max_diff(&one.params, &h.params);

    for world in [2usize, 4] {
        let cfgs: Vec<TrainConfig> = (0..world)
            .map(|r| {
                let mut c = single.clone();
                // each rank its own out dir, so what non-zero ranks write is visible
                c.out = tmp.path().join(format!("w{world}-rank{r}"));
                c
            })
            .collect();
        let ranks = run_world(cfgs, false);
        for (r, (s, notes)) in ranks.iter().enumerate() {
            assert_eq!((s.steps, s.world_size), (6, world));
            // every rank holds bit-identical parameters
            assert_eq!(max_diff(&s.params, &ranks[0].0.params), 0.0, "rank {r}");
            assert!(
                notes
                    .iter()
                    .any(|n| n.contains(&format!("rank {r} of {world}"))),
                "{notes:?}"
            );
        }
        let d = max_diff(&one.params, &ranks[0].0.params);
        eprintln!("world {world}: max |param diff| vs one process {d:.3e} (half-batch control {control:.3e})");
        assert!(d < 2e-5, "world {world}: parameters differ by {d}");
        assert!(control > 100.0 * 2e-5, "control {control}");
        // same losses step by step (rank 0's metrics vs the single process's)
        let l1 = step_losses(&single.out);
        let lw = step_losses(&tmp.path().join(format!("w{world}-rank0")));
        assert_eq!(l1.len(), lw.len());
        for (a, b) in l1.iter().zip(&lw) {
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "loss {a} vs {b}");
        }
        // rank 0 wrote checkpoints and metrics; the other ranks nothing at all
        assert!(ranks[0].0.last_checkpoint.is_some());
        let r0 = tmp.path().join(format!("w{world}-rank0"));
        assert!(r0.join("metrics.jsonl").is_file() && r0.join("config.json").is_file());
        assert!(mslt_core::train::checkpoint::latest(&r0).is_some());
        for (r, (s, _)) in ranks.iter().enumerate().skip(1) {
            let dir = tmp.path().join(format!("w{world}-rank{r}"));
            assert!(s.last_checkpoint.is_none());
            assert!(!dir.exists(), "rank {r} wrote {}", dir.display());
        }
        let state = mslt_core::train::checkpoint::load_state(
            &mslt_core::train::checkpoint::latest(&r0).unwrap(),
        )
        .unwrap();
        assert_eq!(state.world_size, world);
    }
}

#[test]
fn only_trainable_gradients_are_reduced_and_buckets_follow_the_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = fixture(tmp.path());
    let cfg = config(&data, &model, tmp.path().join("run"));
    let comms = LocalGroup::new(2, Duration::from_secs(300));
    let log_view = comms[0].log_handle();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let mut cfg = cfg.clone();
            if c.rank() == 1 {
                cfg.out = tmp.path().join("rank1");
            }
            std::thread::spawn(move || {
                train_on(&cfg, false, &Device::Cpu, &c, &mut |_| {}).unwrap()
            })
        })
        .collect();
    let summaries: Vec<Summary> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let total_params: usize = summaries[0].params.values().map(|t| t.elem_count()).sum();

    let m = metrics(&cfg.out);
    let starts: Vec<&serde_json::Value> = m
        .iter()
        .filter(|v| v.get("event").and_then(|e| e.as_str()) == Some("stage_start"))
        .collect();
    assert_eq!(starts.len(), 2);
    let mut stage_bytes = Vec::new();
    for s in &starts {
        let ar = &s["allreduce"];
        let trainable = s["trainable_params"].as_u64().unwrap();
        assert_eq!(ar["world_size"], 2);
        assert_eq!(ar["backend"], "local");
        // exactly the trainable gradients, in f32
        assert_eq!(ar["bytes"].as_u64().unwrap(), 4 * trainable);
        stage_bytes.push(ar["bytes"].as_u64().unwrap());
    }
    // stage 1 (layers 2..4 train, 0..2 and the embeddings frozen) reduces less than the whole
    // model; the plan changed at the boundary
    assert!(
        stage_bytes[1] < 4 * total_params as u64,
        "{stage_bytes:?} vs {total_params}"
    );
    assert_ne!(starts[0]["allreduce"], starts[1]["allreduce"]);
    // every step reports the bytes of its stage
    for v in m.iter().filter(|v| v.get("loss").is_some()) {
        let stage = v["stage"].as_u64().unwrap() as usize;
        assert_eq!(v["allreduce_bytes"].as_u64().unwrap(), stage_bytes[stage]);
        assert!(v["comm_s"].as_f64().unwrap() >= 0.0);
    }
    // the collective saw exactly that: per step, the gradient buckets plus the 3 loss scalars
    let log = log_view();
    let rank0: Vec<usize> = log
        .iter()
        .filter(|(r, op, _)| *r == 0 && *op == "all_reduce")
        .map(|&(_, _, n)| n)
        .collect();
    let reduced: usize = rank0.iter().filter(|&&n| n != 3).sum();
    let steps_per_stage = 3;
    assert_eq!(
        reduced as u64 * 4,
        steps_per_stage * (stage_bytes[0] + stage_bytes[1])
    );
    assert_eq!(rank0.iter().filter(|&&n| n == 3).count(), 6);
    // the initial broadcast covered every parameter once
    let bcast: usize = log
        .iter()
        .filter(|(r, op, _)| *r == 0 && *op == "broadcast")
        .map(|&(_, _, n)| n)
        .sum();
    let first_depth_params: usize = {
        // the broadcast happens at the starting depth (2 of 4 layers)
        let layer: usize = summaries[0]
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("bert.encoder.layer.3."))
            .map(|(_, t)| t.elem_count())
            .sum();
        total_params - 2 * layer
    };
    assert_eq!(bcast, first_depth_params);
}

#[test]
fn a_data_parallel_run_resumes_at_the_same_and_at_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = fixture(tmp.path());
    let mut base = config(&data, &model, tmp.path().join("full"));
    base.save_every = 2;
    let world = |out: PathBuf| -> Vec<TrainConfig> {
        // both ranks name the same run directory, as on a shared file system (resume reads it
        // on every rank)
        (0..2)
            .map(|_| {
                let mut c = base.clone();
                c.out = out.clone();
                c
            })
            .collect()
    };
    let full = run_world(world(tmp.path().join("full")), false);

    // The same run, "crashed" after step 2: its later checkpoints are gone.
    let crashed = tmp.path().join("crashed");
    run_world(world(crashed.clone()), false);
    let cut = |dir: &Path| {
        for (step, p) in mslt_core::train::checkpoint::list(dir) {
            if step > 2 {
                std::fs::remove_dir_all(p).unwrap();
            }
        }
    };
    let again = tmp.path().join("again");
    copy_dir(&crashed, &again);
    cut(&crashed);
    cut(&again);
    let resumed = run_world(world(crashed.clone()), true);
    assert!(
        resumed[0].1.iter().any(|n| n.contains("resumed from")),
        "{:?}",
        resumed[0].1
    );
    // same world size: bit for bit the uninterrupted run
    assert_eq!(max_diff(&full[0].0.params, &resumed[0].0.params), 0.0);

    // another world size: said clearly, and the same global batch semantics hold
    let mut one = base.clone();
    one.out = again.clone();
    let (s, notes) = run_single(&one, true);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("trained with 2 data-parallel rank(s), this run has 1")),
        "{notes:?}"
    );
    let d = max_diff(&full[0].0.params, &s.params);
    assert!(d < 2e-5, "{d}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
