//! Dynamic MLM masking, drawn per batch from a seeded RNG: `prob` (15%) of the non-special tokens
//! of each sequence are predicted; of those 80% become `[MASK]`, 10% a random token, 10% stay.
//! Optional whole-word masking picks whole words (a word = a piece and its `##` continuations).

use super::prepare::SpecialIds;
use super::shards::Sequence;
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskingConfig {
    /// Share of non-special tokens predicted.
    pub prob: f64,
    /// Of the predicted tokens: share replaced by [MASK] ...
    pub mask_frac: f64,
    /// ... and share replaced by a random token (the rest keep their id).
    pub random_frac: f64,
    pub whole_word: bool,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            prob: 0.15,
            mask_frac: 0.8,
            random_frac: 0.1,
            whole_word: false,
        }
    }
}

/// A masked batch on the host, row-major (B, T).
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    pub b: usize,
    pub t: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    /// original id at predicted positions, -100 elsewhere
    pub mlm_labels: Vec<i64>,
    /// (B,): 0 = is next, 1 = random next
    pub nsp_labels: Vec<i64>,
    /// non-padding tokens in the batch
    pub tokens: usize,
}

impl HostBatch {
    /// Rows `r` of the batch (a data-parallel rank's share of a global batch).
    pub fn rows(&self, r: std::ops::Range<usize>) -> HostBatch {
        let t = self.t;
        let cut = |v: &[i64]| v[r.start * t..r.end * t].to_vec();
        let attention_mask = cut(&self.attention_mask);
        HostBatch {
            b: r.len(),
            t,
            input_ids: cut(&self.input_ids),
            tokens: attention_mask.iter().filter(|&&m| m != 0).count(),
            attention_mask,
            token_type_ids: cut(&self.token_type_ids),
            mlm_labels: cut(&self.mlm_labels),
            nsp_labels: self.nsp_labels[r].to_vec(),
        }
    }

    /// Predicted (masked) positions in the batch.
    pub fn predicted(&self) -> usize {
        self.mlm_labels.iter().filter(|&&l| l != -100).count()
    }
}

fn is_special(id: u32, sp: &SpecialIds) -> bool {
    id == sp.pad || id == sp.cls || id == sp.sep || id == sp.mask
}

/// Pads `seqs` to `t` and masks them.
pub fn mask_batch(
    seqs: &[Sequence],
    t: usize,
    sp: &SpecialIds,
    vocab_size: usize,
    subwords: &[u8],
    cfg: &MaskingConfig,
    rng: &mut Rng,
) -> HostBatch {
    let b = seqs.len();
    let mut out = HostBatch {
        b,
        t,
        input_ids: vec![sp.pad as i64; b * t],
        attention_mask: vec![0; b * t],
        token_type_ids: vec![0; b * t],
        mlm_labels: vec![-100; b * t],
        nsp_labels: Vec::with_capacity(b),
        tokens: 0,
    };
    for (r, s) in seqs.iter().enumerate() {
        let row = r * t;
        let n = s.ids.len().min(t);
        out.tokens += n;
        out.nsp_labels.push(s.nsp_label as i64);
        for (k, &id) in s.ids[..n].iter().enumerate() {
            out.input_ids[row + k] = id as i64;
            out.attention_mask[row + k] = 1;
            out.token_type_ids[row + k] = (k >= s.segment_b) as i64;
        }
        // Candidate units: single positions, or whole words.
        let mut units: Vec<Vec<usize>> = Vec::new();
        for (k, &id) in s.ids[..n].iter().enumerate() {
            if is_special(id, sp) {
                continue;
            }
            let cont = cfg.whole_word && subwords.get(id as usize).copied().unwrap_or(0) == 1;
            match units.last_mut() {
                Some(u) if cont && *u.last().expect("non-empty") + 1 == k => u.push(k),
                _ => units.push(vec![k]),
            }
        }
        let candidates: usize = units.iter().map(|u| u.len()).sum();
        if candidates == 0 {
            continue;
        }
        let target = ((candidates as f64 * cfg.prob).round() as usize).max(1);
        // Fisher-Yates over units, then take until the target is reached (never exceeding it
        // with a whole word, as BERT's create_masked_lm_predictions).
        for i in (1..units.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            units.swap(i, j);
        }
        let mut picked = 0usize;
        for u in &units {
            if picked >= target {
                break;
            }
            if picked + u.len() > target && picked > 0 {
                continue;
            }
            for &k in u {
                let orig = s.ids[k];
                out.mlm_labels[row + k] = orig as i64;
                let x = rng.uniform_f64();
                let new = if x < cfg.mask_frac {
                    sp.mask
                } else if x < cfg.mask_frac + cfg.random_frac {
                    loop {
                        let c = rng.below(vocab_size as u64) as u32;
                        if !is_special(c, sp) && c != sp.unk {
                            break c;
                        }
                    }
                } else {
                    orig
                };
                out.input_ids[row + k] = new as i64;
            }
            picked += u.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: SpecialIds = SpecialIds {
        pad: 0,
        cls: 101,
        sep: 102,
        mask: 103,
        unk: 100,
    };

    fn seqs(n: usize, rng: &mut Rng) -> Vec<Sequence> {
        (0..n)
            .map(|_| {
                let len = 20 + rng.below(100) as usize;
                let mut ids = vec![101];
                ids.extend((0..len).map(|_| 1000 + rng.below(29000) as u32));
                ids.push(102);
                let b = ids.len() / 2;
                ids.insert(b, 102);
                Sequence {
                    ids,
                    segment_b: b + 1,
                    nsp_label: (n % 2) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn masking_statistics() {
        let mut rng = Rng::new(42);
        let s = seqs(2000, &mut rng);
        let hb = mask_batch(
            &s,
            128,
            &SP,
            30522,
            &[],
            &MaskingConfig::default(),
            &mut rng,
        );
        let (mut cand, mut pred, mut masked, mut random, mut kept) =
            (0usize, 0usize, 0usize, 0usize, 0usize);
        for (r, seq) in s.iter().enumerate() {
            for (k, &id) in seq.ids.iter().enumerate() {
                let i = r * 128 + k;
                let special = id == 101 || id == 102;
                if !special {
                    cand += 1;
                }
                if hb.mlm_labels[i] != -100 {
                    assert!(!special, "special token selected");
                    assert_eq!(hb.mlm_labels[i], id as i64);
                    pred += 1;
                    match hb.input_ids[i] {
                        103 => masked += 1,
                        x if x == id as i64 => kept += 1,
                        _ => random += 1,
                    }
                } else {
                    assert_eq!(
                        hb.input_ids[i], id as i64,
                        "unpredicted tokens are untouched"
                    );
                }
            }
            for k in seq.ids.len()..128 {
                assert_eq!(
                    (hb.attention_mask[r * 128 + k], hb.mlm_labels[r * 128 + k]),
                    (0, -100)
                );
            }
        }
        let share = pred as f64 / cand as f64;
        assert!((share - 0.15).abs() < 0.005, "predicted share {share}");
        let p = pred as f64;
        // A random replacement can draw the original id (1 in ~29k): counted as kept.
        assert!(
            (masked as f64 / p - 0.8).abs() < 0.01,
            "mask {}",
            masked as f64 / p
        );
        assert!(
            (random as f64 / p - 0.1).abs() < 0.01,
            "random {}",
            random as f64 / p
        );
        assert!(
            (kept as f64 / p - 0.1).abs() < 0.01,
            "kept {}",
            kept as f64 / p
        );
        // Segment ids: 0 up to and including the first [SEP], 1 after.
        let s0 = &s[0];
        assert_eq!(hb.token_type_ids[s0.segment_b - 1], 0);
        assert_eq!(hb.token_type_ids[s0.segment_b], 1);
    }

    #[test]
    fn masking_is_seeded() {
        let mut r = Rng::new(1);
        let s = seqs(8, &mut r);
        let mask = |seed| {
            mask_batch(
                &s,
                128,
                &SP,
                30522,
                &[],
                &MaskingConfig::default(),
                &mut Rng::new(seed),
            )
        };
        let (a, b, c) = (mask(9), mask(9), mask(10));
        assert_eq!(a, b);
        assert_ne!(a.mlm_labels, c.mlm_labels);
    }

    #[test]
    fn whole_word_masking_takes_whole_words() {
        // ids 2000.. are continuations ("##x").
        let mut subwords = vec![0u8; 3000];
        subwords[2000..].iter_mut().for_each(|x| *x = 1);
        let mut ids = vec![101];
        for w in 0..40 {
            ids.push(1000 + w);
            ids.push(2000 + w);
            ids.push(2100 + w);
        }
        ids.push(102);
        let s = vec![Sequence {
            segment_b: ids.len(),
            ids,
            nsp_label: 0,
        }];
        let cfg = MaskingConfig {
            whole_word: true,
            ..Default::default()
        };
        for seed in 0..20 {
            let hb = mask_batch(&s, 128, &SP, 3000, &subwords, &cfg, &mut Rng::new(seed));
            for w in 0..40 {
                let k = 1 + 3 * w;
                let sel: Vec<bool> = (k..k + 3).map(|i| hb.mlm_labels[i] != -100).collect();
                assert!(
                    sel.iter().all(|&x| x == sel[0]),
                    "word {w} partly masked: {sel:?}"
                );
            }
        }
    }
}
