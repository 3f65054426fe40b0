//! Packed sequence shards, stored as safetensors files (inspectable with `mslt-cli inspect`):
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `input_ids` | U16 (vocab <= 65536) or U32 | (N, T) | `[CLS] A [SEP] B [SEP]`, padded with `[PAD]` |
//! | `lengths` | U16 | (N,) | tokens before padding |
//! | `segment_b` | U16 | (N,) | first position of segment B (= length when there is none) |
//! | `nsp_labels` | U8 | (N,) | 0 = B follows A, 1 = B is a random segment (HF convention) |
//!
//! Files are written atomically (temp + rename) and read through a memory map, so a corpus
//! larger than RAM works.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// One packed sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// first position of segment B (= ids.len() when there is none)
    pub segment_b: usize,
    /// 0 = is next, 1 = random next
    pub nsp_label: u8,
}

struct RawView {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes sequences of one split into numbered shards.
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    seq_len: usize,
    wide: bool,
    pad_id: u32,
    per_shard: usize,
    ids: Vec<u32>,
    lengths: Vec<u16>,
    seg_b: Vec<u16>,
    nsp: Vec<u8>,
    pub files: Vec<String>,
    pub sequences: usize,
    pub tokens: usize,
}

impl ShardWriter {
    pub fn new(
        dir: &Path,
        split: &str,
        seq_len: usize,
        vocab_size: usize,
        pad_id: u32,
        per_shard: usize,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            split: split.into(),
            seq_len,
            wide: vocab_size > 65536,
            pad_id,
            per_shard: per_shard.max(1),
            ids: Vec::new(),
            lengths: Vec::new(),
            seg_b: Vec::new(),
            nsp: Vec::new(),
            files: Vec::new(),
            sequences: 0,
            tokens: 0,
        }
    }

    pub fn push(&mut self, s: &Sequence) -> Result<()> {
        assert!(s.ids.len() <= self.seq_len && s.segment_b <= s.ids.len());
        self.ids.extend(&s.ids);
        self.ids
            .extend(std::iter::repeat_n(self.pad_id, self.seq_len - s.ids.len()));
        self.lengths.push(s.ids.len() as u16);
        self.seg_b.push(s.segment_b as u16);
        self.nsp.push(s.nsp_label);
        self.sequences += 1;
        self.tokens += s.ids.len();
        if self.lengths.len() >= self.per_shard {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = self.lengths.len();
        if n == 0 {
            return Ok(());
        }
        let ids = if self.wide {
            RawView {
                dtype: Dtype::U32,
                shape: vec![n, self.seq_len],
                data: self.ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }
        } else {
            RawView {
                dtype: Dtype::U16,
                shape: vec![n, self.seq_len],
                data: self
                    .ids
                    .iter()
                    .flat_map(|&x| (x as u16).to_le_bytes())
                    .collect(),
            }
        };
        let u16s = |v: &[u16]| RawView {
            dtype: Dtype::U16,
            shape: vec![n],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let lengths = u16s(&self.lengths);
        let seg_b = u16s(&self.seg_b);
        let nsp = RawView {
            dtype: Dtype::U8,
            shape: vec![n],
            data: self.nsp.clone(),
        };
        let name = format!("{}-{:05}.safetensors", self.split, self.files.len());
        let path = self.dir.join(&name);
        let bytes = safetensors::tensor::serialize(
            [
                ("input_ids", &ids),
                ("lengths", &lengths),
                ("segment_b", &seg_b),
                ("nsp_labels", &nsp),
            ],
            None,
        )
        .map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        write_atomic(&path, &bytes)?;
        self.files.push(name);
        self.ids.clear();
        self.lengths.clear();
        self.seg_b.clear();
        self.nsp.clear();
        Ok(())
    }

    pub fn finish(&mut self) -> Result<()> {
        self.flush()
    }
}

/// Writes `bytes` to `path` through a temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A memory-mapped shard.
pub struct ShardReader {
    path: PathBuf,
    mmap: memmap2::Mmap,
    n: usize,
    seq_len: usize,
    wide: bool,
    ids: (usize, usize),
    lengths: (usize, usize),
    seg_b: (usize, usize),
    nsp: (usize, usize),
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: shards are written once (atomically) and never modified in place.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Safetensors {
            path: path.to_path_buf(),
            msg,
        };
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
        let base = 8 + header_len;
        let get = |name: &str,
                   dtypes: &[Dtype],
                   rank: usize|
         -> Result<(Dtype, Vec<usize>, (usize, usize))> {
            let info = meta
                .info(name)
                .ok_or_else(|| bad(format!("shard has no `{name}` tensor")))?;
            if !dtypes.contains(&info.dtype) || info.shape.len() != rank {
                return Err(bad(format!(
                    "`{name}` has dtype {:?} shape {:?}",
                    info.dtype, info.shape
                )));
            }
            let (a, b) = info.data_offsets;
            Ok((info.dtype, info.shape.clone(), (base + a, base + b)))
        };
        let (idt, ishape, ids) = get("input_ids", &[Dtype::U16, Dtype::U32], 2)?;
        let (_, lshape, lengths) = get("lengths", &[Dtype::U16], 1)?;
        let (_, _, seg_b) = get("segment_b", &[Dtype::U16], 1)?;
        let (_, _, nsp) = get("nsp_labels", &[Dtype::U8], 1)?;
        if lshape[0] != ishape[0] {
            return Err(bad("`lengths` and `input_ids` disagree on N".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            n: ishape[0],
            seq_len: ishape[1],
            wide: idt == Dtype::U32,
            mmap,
            ids,
            lengths,
            seg_b,
            nsp,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn u16_at(&self, range: (usize, usize), i: usize) -> u16 {
        let o = range.0 + 2 * i;
        u16::from_le_bytes([self.mmap[o], self.mmap[o + 1]])
    }

    /// Sequence `i` (without padding).
    pub fn get(&self, i: usize) -> Sequence {
        assert!(i < self.n);
        let len = self.u16_at(self.lengths, i) as usize;
        let ids: Vec<u32> = if self.wide {
            let o = self.ids.0 + 4 * i * self.seq_len;
            self.mmap[o..o + 4 * len]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            let o = self.ids.0 + 2 * i * self.seq_len;
            self.mmap[o..o + 2 * len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect()
        };
        Sequence {
            ids,
            segment_b: self.u16_at(self.seg_b, i) as usize,
            nsp_label: self.mmap[self.nsp.0 + i],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_narrow_and_wide() {
        for vocab in [30522, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = ShardWriter::new(dir.path(), "train", 8, vocab, 0, 2);
            let seqs = vec![
                Sequence {
                    ids: vec![2, 70000 % vocab as u32, 3],
                    segment_b: 3,
                    nsp_label: 0,
                },
                Sequence {
                    ids: vec![2, 5, 3, 6, 3],
                    segment_b: 3,
                    nsp_label: 1,
                },
                Sequence {
                    ids: vec![2, 9, 9, 9, 9, 9, 9, 3],
                    segment_b: 8,
                    nsp_label: 0,
                },
            ];
            for s in &seqs {
                w.push(s).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(
                w.files,
                vec!["train-00000.safetensors", "train-00001.safetensors"]
            );
            let r0 = ShardReader::open(&dir.path().join(&w.files[0])).unwrap();
            let r1 = ShardReader::open(&dir.path().join(&w.files[1])).unwrap();
            assert_eq!((r0.len(), r1.len(), r0.seq_len()), (2, 1, 8));
            assert_eq!(vec![r0.get(0), r0.get(1), r1.get(0)], seqs);
        }
    }
}
