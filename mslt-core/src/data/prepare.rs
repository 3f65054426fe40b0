//! `mslt-cli prepare`: tokenise a corpus once (in parallel), pack it into fixed-length sequences
//! (BERT's `create_pretraining_data` recipe: sentence-pair segments with 50% random next, or
//! single segments without NSP), hold out a deterministic validation split by document, and
//! write shards + a manifest. Streaming: files are processed in chunks, so memory is bounded by
//! a chunk of files and a pool of recent documents. Same inputs + same config = byte-identical
//! output.

use super::shards::{write_atomic, Sequence, ShardWriter};
use super::text::{collect_files, documents, read_text, Skip};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::BertTokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "mslt-data-v1";

#[derive(Clone, Debug)]
pub struct PrepareConfig {
    /// Tokens per sequence, specials included.
    pub seq_len: usize,
    /// Sentence-pair segments with NSP labels (else single segments).
    pub nsp: bool,
    /// Share of documents held out for validation (document-level, deterministic).
    pub val_fraction: f64,
    pub seed: u64,
    /// BERT's short_seq_prob: share of sequences with a random shorter target length.
    pub short_seq_prob: f64,
    /// Sequences per shard file.
    pub shard_sequences: usize,
    /// Files read and tokenised per parallel chunk (bounds memory).
    pub files_per_chunk: usize,
    /// Recent documents kept to draw random-next segments from.
    pub random_next_pool: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            seq_len: 128,
            nsp: true,
            val_fraction: 0.02,
            seed: 12345,
            short_seq_prob: 0.1,
            shard_sequences: 65536,
            files_per_chunk: 64,
            random_next_pool: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialIds {
    pub pad: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    pub unk: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub shards: Vec<String>,
    pub sequences: usize,
    pub tokens: usize,
    pub documents: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    pub files: usize,
    pub skipped_not_utf8: usize,
    pub skipped_binary: usize,
    pub skipped_empty: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub seq_len: usize,
    pub nsp: bool,
    pub vocab_size: usize,
    /// FNV-1a 64 of the vocabulary (tokens in id order): equal for tokenizer.json and vocab.txt
    /// of the same vocabulary.
    pub vocab_hash: String,
    /// The tokenizer file copied into the data directory.
    pub tokenizer_file: String,
    pub special: SpecialIds,
    pub seed: u64,
    pub val_fraction: f64,
    pub train: SplitInfo,
    pub val: SplitInfo,
    pub inputs: InputInfo,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join("manifest.json");
        if !p.is_file() {
            return Err(Error::Input(format!(
                "{}: not a prepared data directory (no manifest.json; run `mslt-cli prepare`)",
                dir.display()
            )));
        }
        crate::error::read_versioned_json(&p, FORMAT, |m: &Manifest| &m.format)
    }
}

pub struct PrepareReport {
    pub manifest: Manifest,
    pub out: PathBuf,
}

/// FNV-1a 64.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hash of a tokenizer's vocabulary, and the `##` continuation flags per id.
pub fn vocab_fingerprint(tok: &BertTokenizer) -> (String, Vec<u8>) {
    let vocab = tok.inner().get_vocab(true);
    let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    let mut by_id = vec![String::new(); n];
    for (t, i) in vocab {
        by_id[i as usize] = t;
    }
    let h = fnv1a(by_id.iter().flat_map(|t| t.bytes().chain([b'\n'])));
    let sub = by_id.iter().map(|t| t.starts_with("##") as u8).collect();
    (format!("{h:016x}"), sub)
}

/// Prepares `inputs` into `out`. `progress(files_done, files_total)` is called after each chunk.
pub fn prepare(
    inputs: &[PathBuf],
    tokenizer_path: &Path,
    out: &Path,
    cfg: &PrepareConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<PrepareReport> {
    if cfg.seq_len < 8 || cfg.seq_len > 65535 {
        return Err(Error::Input(format!(
            "--seq-len {} is outside [8, 65535]",
            cfg.seq_len
        )));
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(Error::Input(format!(
            "--val-fraction {} is outside [0, 1)",
            cfg.val_fraction
        )));
    }
    let files = collect_files(inputs)?;
    if files.is_empty() {
        return Err(Error::Input(
            "no input files (directories are searched for *.txt and *.gz)".into(),
        ));
    }
    let tok = BertTokenizer::from_path(tokenizer_path)?;
    let tok_file = if tokenizer_path.is_dir() {
        let j = tokenizer_path.join("tokenizer.json");
        if j.is_file() {
            j
        } else {
            tokenizer_path.join("vocab.txt")
        }
    } else {
        tokenizer_path.to_path_buf()
    };
    let (vocab_hash, subwords) = vocab_fingerprint(&tok);
    let vocab_size = tok.vocab_size();

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if out.join("manifest.json").exists() {
        return Err(Error::Input(format!(
            "{}: already holds prepared data (manifest.json); choose another --out or delete it",
            out.display()
        )));
    }
    let tok_name = tok_file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "tokenizer.json".into());
    let tok_bytes = std::fs::read(&tok_file).map_err(|e| Error::io(&tok_file, e))?;
    write_atomic(&out.join(&tok_name), &tok_bytes)?;
    write_atomic(&out.join("subwords.bin"), &subwords)?;

    let mut writers = [
        ShardWriter::new(
            out,
            "train",
            cfg.seq_len,
            vocab_size,
            tok.pad_id,
            cfg.shard_sequences,
        ),
        ShardWriter::new(
            out,
            "val",
            cfg.seq_len,
            vocab_size,
            tok.pad_id,
            cfg.shard_sequences,
        ),
    ];
    let mut docs_per_split = [0usize; 2];
    let mut pools: [VecDeque<Vec<Vec<u32>>>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut inputs_info = InputInfo {
        files: files.len(),
        ..Default::default()
    };
    let mut doc_index = 0usize;
    let special = SpecialIds {
        pad: tok.pad_id,
        cls: tok.cls_id,
        sep: tok.sep_id,
        mask: tok.mask_id,
        unk: tok.unk_id,
    };

    for (ci, chunk) in files.chunks(cfg.files_per_chunk.max(1)).enumerate() {
        // Read and split (I/O bound, sequential), then tokenise every sentence in parallel.
        let mut docs_text: Vec<Vec<String>> = Vec::new();
        for f in chunk {
            match read_text(f)? {
                Ok(text) => docs_text.extend(documents(&text)),
                Err(Skip::NotUtf8) => inputs_info.skipped_not_utf8 += 1,
                Err(Skip::Binary) => inputs_info.skipped_binary += 1,
                Err(Skip::Empty) => inputs_info.skipped_empty += 1,
            }
        }
        let flat: Vec<&str> = docs_text.iter().flatten().map(|s| s.as_str()).collect();
        let toks: Vec<Vec<u32>> = flat
            .par_iter()
            .map(|s| tok.tokenize_ids(s))
            .collect::<Result<Vec<_>>>()?;
        let mut it = toks.into_iter();
        for d in &docs_text {
            let doc: Vec<Vec<u32>> = it
                .by_ref()
                .take(d.len())
                .filter(|s| !s.is_empty())
                .collect();
            if doc.is_empty() {
                continue;
            }
            let split = is_val(doc_index, cfg.val_fraction) as usize;
            let mut rng =
                Rng::new(cfg.seed ^ (doc_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let seqs = if cfg.nsp {
                pair_instances(&doc, &pools[split], cfg, &special, &mut rng)
            } else {
                single_instances(&doc, cfg.seq_len, &special)
            };
            for s in &seqs {
                writers[split].push(s)?;
            }
            docs_per_split[split] += 1;
            pools[split].push_back(doc);
            if pools[split].len() > cfg.random_next_pool {
                pools[split].pop_front();
            }
            doc_index += 1;
        }
        progress(
            ((ci + 1) * cfg.files_per_chunk).min(files.len()),
            files.len(),
        );
    }
    for w in &mut writers {
        w.finish()?;
    }
    let skipped = format!(
        "skipped: {} not UTF-8, {} binary, {} empty",
        inputs_info.skipped_not_utf8, inputs_info.skipped_binary, inputs_info.skipped_empty
    );
    if doc_index == 0 {
        return Err(Error::Input(format!(
            "empty corpus: no text in {} input file(s) ({skipped})",
            files.len()
        )));
    }
    if writers[0].sequences == 0 {
        return Err(Error::Input(format!(
            "corpus too small: all {doc_index} document(s) went to validation; lower --val-fraction or add text"
        )));
    }
    let info = |w: &ShardWriter, docs: usize| SplitInfo {
        shards: w.files.clone(),
        sequences: w.sequences,
        tokens: w.tokens,
        documents: docs,
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        seq_len: cfg.seq_len,
        nsp: cfg.nsp,
        vocab_size,
        vocab_hash,
        tokenizer_file: tok_name,
        special,
        seed: cfg.seed,
        val_fraction: cfg.val_fraction,
        train: info(&writers[0], docs_per_split[0]),
        val: info(&writers[1], docs_per_split[1]),
        inputs: inputs_info,
    };
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join("manifest.json"), json.as_bytes())?;
    Ok(PrepareReport {
        manifest,
        out: out.to_path_buf(),
    })
}

/// Document `i` goes to validation when the cumulative share `ceil(i * f)` steps up; the first
/// document always does (for f > 0), so a small corpus still has a validation set.
fn is_val(i: usize, f: f64) -> bool {
    f > 0.0 && (i as f64 * f).ceil() != ((i + 1) as f64 * f).ceil()
}

/// Single segments: `[CLS] tokens [SEP]`, filled across sentence boundaries of one document.
fn single_instances(doc: &[Vec<u32>], seq_len: usize, sp: &SpecialIds) -> Vec<Sequence> {
    let max = seq_len - 2;
    let flat: Vec<u32> = doc.iter().flatten().copied().collect();
    flat.chunks(max)
        .map(|c| {
            let mut ids = Vec::with_capacity(c.len() + 2);
            ids.push(sp.cls);
            ids.extend_from_slice(c);
            ids.push(sp.sep);
            let n = ids.len();
            Sequence {
                ids,
                segment_b: n,
                nsp_label: 0,
            }
        })
        .collect()
}

/// BERT's sentence-pair instances of one document (google-research/bert
/// `create_instances_from_document`), with a 50% random-next coin for every pair.
fn pair_instances(
    doc: &[Vec<u32>],
    pool: &VecDeque<Vec<Vec<u32>>>,
    cfg: &PrepareConfig,
    sp: &SpecialIds,
    rng: &mut Rng,
) -> Vec<Sequence> {
    let max_tokens = cfg.seq_len - 3;
    let pick_target = |rng: &mut Rng| {
        if rng.uniform_f64() < cfg.short_seq_prob {
            2 + rng.below((max_tokens - 1) as u64) as usize
        } else {
            max_tokens
        }
    };
    let mut target = pick_target(rng);
    let mut out = Vec::new();
    let mut chunk: Vec<&Vec<u32>> = Vec::new();
    let mut chunk_len = 0usize;
    let mut i = 0usize;
    while i < doc.len() {
        chunk.push(&doc[i]);
        chunk_len += doc[i].len();
        if i == doc.len() - 1 || chunk_len >= target {
            let a_end = if chunk.len() >= 2 {
                1 + rng.below((chunk.len() - 1) as u64) as usize
            } else {
                1
            };
            let mut a: Vec<u32> = chunk[..a_end]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let random_next = !pool.is_empty() && rng.uniform_f64() < 0.5;
            let mut b: Vec<u32>;
            if random_next {
                let target_b = target.saturating_sub(a.len()).max(1);
                let other = &pool[rng.below(pool.len() as u64) as usize];
                let start = rng.below(other.len() as u64) as usize;
                b = Vec::new();
                for s in &other[start..] {
                    b.extend_from_slice(s);
                    if b.len() >= target_b {
                        break;
                    }
                }
                // The unused sentences of this chunk go back to the document.
                i -= chunk.len() - a_end;
            } else if chunk.len() >= 2 {
                b = chunk[a_end..]
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
            } else {
                // One sentence: split it so B really follows A.
                let cut = if a.len() >= 2 {
                    1 + rng.below((a.len() - 1) as u64) as usize
                } else {
                    a.len()
                };
                b = a.split_off(cut);
            }
            truncate_pair(&mut a, &mut b, max_tokens, rng);
            if !a.is_empty() {
                let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
                ids.push(sp.cls);
                ids.extend_from_slice(&a);
                ids.push(sp.sep);
                let segment_b = ids.len();
                if !b.is_empty() {
                    ids.extend_from_slice(&b);
                    ids.push(sp.sep);
                }
                out.push(Sequence {
                    ids,
                    segment_b,
                    nsp_label: (random_next && !b.is_empty()) as u8,
                });
            }
            chunk.clear();
            chunk_len = 0;
            target = pick_target(rng);
        }
        i += 1;
    }
    out
}

/// Trims the longer segment, from the front or the back at random, until both fit.
fn truncate_pair(a: &mut Vec<u32>, b: &mut Vec<u32>, max: usize, rng: &mut Rng) {
    while a.len() + b.len() > max {
        let t = if a.len() > b.len() { &mut *a } else { &mut *b };
        if rng.uniform_f64() < 0.5 {
            t.remove(0);
        } else {
            t.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn val_split_is_document_level_and_nonempty() {
        let v: Vec<usize> = (0..233).filter(|&i| is_val(i, 0.02)).collect();
        assert_eq!(v[0], 0);
        assert!((4..=6).contains(&v.len()), "{v:?}");
        assert!(!(0..100).any(|i| is_val(i, 0.0)));
    }

    #[test]
    fn pairs_fit_and_are_well_formed() {
        let sp = SpecialIds {
            pad: 0,
            cls: 101,
            sep: 102,
            mask: 103,
            unk: 100,
        };
        let cfg = PrepareConfig {
            seq_len: 32,
            ..Default::default()
        };
        let mut rng = Rng::new(1);
        let doc: Vec<Vec<u32>> = (0..40)
            .map(|k| (0..(3 + k % 7)).map(|j| 1000 + j as u32).collect())
            .collect();
        let mut pool = VecDeque::new();
        pool.push_back(doc.clone());
        let seqs = pair_instances(&doc, &pool, &cfg, &sp, &mut rng);
        assert!(seqs.len() > 5);
        let mut random = 0;
        for s in &seqs {
            assert!(s.ids.len() <= 32);
            assert_eq!(s.ids[0], 101);
            assert_eq!(s.ids[s.segment_b - 1], 102);
            assert_eq!(*s.ids.last().unwrap(), 102);
            random += s.nsp_label as usize;
        }
        assert!(random > 0 && random < seqs.len());
    }
}
