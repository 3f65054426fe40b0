//! How often the online softmax of the fa2wg3 / fa2wg4 attention kernels rescales O on a trained
//! model's attention. Those kernels keep a row's reference maximum until a key tile's maximum
//! exceeds it by more than 8 (log2 units) and skip a warp's rescaling when none of its 16 rows
//! moved; FlashAttention-2 moves the reference whenever the maximum grows. This counts both, on
//! the real attention scores of a pretrained BERT over real text, tile by tile as the kernels
//! walk the keys (64-key tiles, the first tile of each row excluded: it sets the reference).
//!
//! ```text
//! cargo run --release -p mslt-cli --example rescale_stats -- [MODEL_DIR] [CORPUS_DIR] [T] [SEQS]
//! ```
//! Defaults: .assets/all-MiniLM-L6-v2, .assets/sotu, T = 512, 8 sequences (every file of the
//! corpus, sorted, tokenised line by line, the ids concatenated and cut into sequences of T with
//! [CLS] and [SEP]).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use mslt_core::tokenizer::BertTokenizer;
use mslt_core::weights::{load_safetensors, ModelFiles};
use mslt_core::{BertForPreTraining, BertInput, Mode};

const TILE: usize = 64;
const WARP_ROWS: usize = 16;
const THRESHOLD: f32 = 8.0; // log2 units, as softmax_wgp

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir = args
        .first()
        .map_or(".assets/all-MiniLM-L6-v2", |s| s.as_str());
    let corpus = args.get(1).map_or(".assets/sotu", |s| s.as_str());
    let t: usize = args.get(2).map_or(Ok(512), |s| s.parse()).context("T")?;
    let seqs: usize = args.get(3).map_or(Ok(8), |s| s.parse()).context("SEQS")?;
    let files = ModelFiles::resolve(model_dir)?;
    let cfg = files.load_config()?;
    anyhow::ensure!(t >= 2 * TILE && t <= cfg.max_position_embeddings, "T = {t}");
    let tok = BertTokenizer::from_model(&files)?;
    let (cls, sep) = {
        let e = tok.encode("")?;
        (e.ids[0], *e.ids.last().context("[SEP]")?)
    };
    // the corpus' ids, without the per-line [CLS] / [SEP]
    let mut paths: Vec<_> = std::fs::read_dir(corpus)
        .with_context(|| format!("reading {corpus}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    let mut ids: Vec<u32> = Vec::new();
    'files: for p in &paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let e = tok.encode(line)?;
            ids.extend(&e.ids[1..e.ids.len() - 1]);
            if ids.len() >= seqs * (t - 2) {
                break 'files;
            }
        }
    }
    anyhow::ensure!(
        ids.len() >= seqs * (t - 2),
        "{corpus}: too little text for {seqs} x {t}"
    );
    let mut batch = Vec::with_capacity(seqs * t);
    for s in 0..seqs {
        batch.push(cls as i64);
        batch.extend(
            ids[s * (t - 2)..(s + 1) * (t - 2)]
                .iter()
                .map(|&i| i as i64),
        );
        batch.push(sep as i64);
    }
    let dev = Device::Cpu;
    let w = load_safetensors(&files.weights, &cfg, &dev)?;
    let model = BertForPreTraining::from_tensors(&cfg, &w.tensors, &w.origin)?;
    let input = BertInput::from_host(&cfg, (seqs, t), &batch, None, None, &dev)?;
    let out = model.encode(&input, &mut Mode::Eval, true)?;
    let (nh, c) = (cfg.num_attention_heads, cfg.hidden_size);
    let hd = c / nh;
    let sl2 = (1.0 / (hd as f64).sqrt()) * std::f64::consts::LOG2_E;
    println!(
        "{} ({} layers x {c}, {nh} heads), {seqs} sequences of {t} tokens from {corpus}; key tiles of {TILE}, warps of {WARP_ROWS} rows",
        model_dir, cfg.num_hidden_layers
    );
    println!(
        "{:<6} {:>14} {:>14} {:>14} {:>16}",
        "layer", "row-tiles", "FA2 rescales", "> 8: rows", "> 8: warp-tiles"
    );
    let (mut tot, mut fa2, mut thr, mut wt, mut wthr) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (l, layer) in model.layers.iter().enumerate() {
        let x = &out.hidden_states[l]; // (B, T, C): the layer's input
        let a = &layer.attention;
        let heads = |lin: &mslt_core::nn::Linear| -> Result<Tensor> {
            // (B, T, C) -> (B, NH, T, HD)
            Ok(lin
                .forward(x)?
                .reshape((seqs, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k) = (heads(&a.query)?, heads(&a.key)?);
        let s = (q.matmul(&k.t()?)? * sl2)?; // (B, NH, T, T), log2 units (no padding)
        let s = s.to_dtype(DType::F32)?.flatten_to(2)?; // (B NH T, T)
        let maxima = s
            .reshape((seqs * nh * t, t / TILE, TILE))?
            .max(D::Minus1)?
            .to_vec2::<f32>()?; // per row and key tile
        let (mut lt, mut lf, mut lthr, mut lwt, mut lwthr) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for warp in maxima.chunks(WARP_ROWS) {
            let mut refs: Vec<f32> = warp.iter().map(|r| r[0]).collect(); // the reference maxima
            let mut runs: Vec<f32> = refs.clone(); // FlashAttention-2's running maxima
            for j in 1..t / TILE {
                let mut any = false;
                for (i, row) in warp.iter().enumerate() {
                    lt += 1;
                    if row[j] > runs[i] {
                        lf += 1;
                        runs[i] = row[j];
                    }
                    if row[j] > refs[i] + THRESHOLD {
                        lthr += 1;
                        refs[i] = row[j];
                        any = true;
                    }
                }
                lwt += 1;
                lwthr += any as u64;
            }
        }
        println!(
            "{l:<6} {lt:>14} {:>13.2}% {:>13.3}% {:>15.3}%",
            100.0 * lf as f64 / lt as f64,
            100.0 * lthr as f64 / lt as f64,
            100.0 * lwthr as f64 / lwt as f64
        );
        (tot, fa2, thr, wt, wthr) = (tot + lt, fa2 + lf, thr + lthr, wt + lwt, wthr + lwthr);
    }
    println!(
        "{:<6} {tot:>14} {:>13.2}% {:>13.3}% {:>15.3}%",
        "all",
        100.0 * fa2 as f64 / tot as f64,
        100.0 * thr as f64 / tot as f64,
        100.0 * wthr as f64 / wt as f64
    );
    Ok(())
}
