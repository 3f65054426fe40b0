//! Reading a prepared split in a seeded, resumable order: the global sample counter alone
//! decides which sequences form the next batch (epoch = counter / N, a fresh permutation per
//! epoch), so the data position is one integer in a checkpoint.

use super::masking::{mask_batch, HostBatch, MaskingConfig};
use super::prepare::Manifest;
use super::shards::{Sequence, ShardReader};
use crate::error::{Error, Result};
use crate::rng::Rng;
use std::path::{Path, PathBuf};

pub type Batch = HostBatch;

pub struct DataSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub split: String,
    shards: Vec<ShardReader>,
    /// cumulative sequence counts: shard i holds [cum[i], cum[i+1])
    cum: Vec<usize>,
    pub subwords: Vec<u8>,
    perm_cache: Option<(u64, Vec<u32>)>,
}

impl DataSet {
    /// Opens split `train` or `val` of a prepared data directory.
    pub fn open(dir: &Path, split: &str) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let info = match split {
            "train" => &manifest.train,
            "val" => &manifest.val,
            _ => {
                return Err(Error::Input(format!(
                    "unknown split `{split}` (train or val)"
                )))
            }
        };
        let mut shards = Vec::new();
        let mut cum = vec![0];
        for f in &info.shards {
            let r = ShardReader::open(&dir.join(f))?;
            if r.seq_len() != manifest.seq_len {
                return Err(Error::Input(format!(
                    "{}: seq len {} disagrees with the manifest's {}",
                    r.path().display(),
                    r.seq_len(),
                    manifest.seq_len
                )));
            }
            cum.push(cum.last().expect("non-empty") + r.len());
            shards.push(r);
        }
        if *cum.last().expect("non-empty") != info.sequences {
            return Err(Error::Input(format!(
                "{}: the {split} shards hold {} sequences, the manifest says {}",
                dir.display(),
                cum.last().expect("non-empty"),
                info.sequences
            )));
        }
        let sp = dir.join("subwords.bin");
        let subwords = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            split: split.into(),
            manifest,
            shards,
            cum,
            subwords,
            perm_cache: None,
        })
    }

    pub fn len(&self) -> usize {
        *self.cum.last().expect("non-empty")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Sequence {
        let s = self.cum.partition_point(|&c| c <= i) - 1;
        self.shards[s].get(i - self.cum[s])
    }

    fn perm(&mut self, epoch: u64, seed: u64) -> &[u32] {
        if self.perm_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let n = self.len();
            let mut p: Vec<u32> = (0..n as u32).collect();
            let mut rng = Rng::new(seed ^ 0x5EED_DA7A ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..n).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                p.swap(i, j);
            }
            self.perm_cache = Some((epoch, p));
        }
        &self.perm_cache.as_ref().expect("just set").1
    }

    /// The `b` sequences starting at global sample `counter` of a shuffled, epoch-by-epoch order.
    pub fn shuffled(&mut self, counter: u64, b: usize, seed: u64) -> Vec<Sequence> {
        let n = self.len() as u64;
        (0..b as u64)
            .map(|k| {
                let g = counter + k;
                let idx = self.perm(g / n, seed)[(g % n) as usize] as usize;
                self.get(idx)
            })
            .collect()
    }

    /// Sequences `[start, start + b)` in file order (for evaluation), clipped to the split.
    pub fn ordered(&self, start: usize, b: usize) -> Vec<Sequence> {
        (start..(start + b).min(self.len()))
            .map(|i| self.get(i))
            .collect()
    }

    /// Pads and masks `seqs`.
    pub fn mask(&self, seqs: &[Sequence], cfg: &MaskingConfig, rng: &mut Rng) -> Batch {
        let m = &self.manifest;
        mask_batch(
            seqs,
            m.seq_len,
            &m.special,
            m.vocab_size,
            &self.subwords,
            cfg,
            rng,
        )
    }
}
