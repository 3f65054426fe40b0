//! Data-parallel training: the collective every rank calls, the bucket plan of the trainable
//! gradients, and where a rank's world comes from.
//!
//! One process per GPU (NCCL through cudarc, `nccl` feature); every rank holds the whole model,
//! reads the same global batch, and keeps its own `1/N` share of the sequences (see
//! [`shard_range`]). After backward the **trainable** gradients only are flattened into a few
//! large buckets and summed over the ranks (losses are normalised by the *global* counts of
//! predicted tokens and sequences, so the sum is exactly the single-process gradient of the
//! global batch); every rank then takes the same optimizer step. Frozen layers of an MSLT stage
//! are never reduced: that is where MSLT saves the most at scale.
//!
//! Without a GPU the same code runs against [`LocalGroup`], an in-process stand-in of the
//! collective (threads + shared memory) that the tests use; `--nproc` > 1 needs NCCL.

pub mod rendezvous;

#[cfg(feature = "nccl")]
pub mod nccl;

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the training loop needs from a process group. Every rank must make the same calls in
/// the same order with tensors of the same shape (as with NCCL).
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// `single`, `local` (in-process stand-in) or `nccl`.
    fn backend(&self) -> &'static str;
    /// The element-wise sum of `t` over all ranks, on every rank. `t`: f32, any shape.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank (same shape and dtype everywhere).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
}

/// World size 1: every collective is the identity (plain single-process training).
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// The sequences of a global micro-batch of `global` that `rank` of `world` processes: a
/// contiguous block, `global / world` long (`global` must be a multiple of `world`).
pub fn shard_range(global: usize, rank: usize, world: usize) -> Result<std::ops::Range<usize>> {
    if world == 0 || rank >= world {
        return Err(Error::Dist(format!(
            "rank {rank} is outside world size {world}"
        )));
    }
    if (global / world) * world != global {
        return Err(Error::Dist(format!(
            "batch_size {global} (the global micro-batch) is not a multiple of the world size {world}; each rank takes batch_size / world_size sequences"
        )));
    }
    let per = global / world;
    Ok(rank * per..(rank + 1) * per)
}

/// One bucket: a run of consecutive trainable parameters reduced as one flat f32 buffer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    /// indices into the trainable list, in the order they are packed
    pub params: Vec<usize>,
    /// f32 elements in the bucket
    pub elems: usize,
}

/// How the trainable gradients of a stage are packed for the all-reduce. Buckets take the
/// parameters from the top of the model down (the order backward produces them, as PyTorch DDP
/// does) and close when they reach `cap_bytes`; a parameter larger than the cap gets its own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BucketPlan {
    pub buckets: Vec<Bucket>,
    pub cap_bytes: usize,
}

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

impl BucketPlan {
    /// `sizes[i]`: element count of trainable parameter `i` (in the model's parameter order).
    pub fn new(sizes: &[usize], cap_bytes: usize) -> Self {
        let cap = cap_bytes.max(4);
        let mut buckets = Vec::new();
        let mut cur = Bucket {
            params: Vec::new(),
            elems: 0,
        };
        for i in (0..sizes.len()).rev() {
            if !cur.params.is_empty() && (cur.elems + sizes[i]) * 4 > cap {
                buckets.push(std::mem::replace(
                    &mut cur,
                    Bucket {
                        params: Vec::new(),
                        elems: 0,
                    },
                ));
            }
            cur.params.push(i);
            cur.elems += sizes[i];
        }
        if !cur.params.is_empty() {
            buckets.push(cur);
        }
        Self {
            buckets,
            cap_bytes: cap,
        }
    }

    /// Bytes all-reduced per step (f32 gradients).
    pub fn bytes(&self) -> usize {
        self.buckets.iter().map(|b| b.elems * 4).sum()
    }

    /// Sums `grads` (one slot per trainable parameter; `None` = no gradient on this rank, taken
    /// as zeros of `shapes[i]`) over the ranks, bucket by bucket, in place.
    pub fn all_reduce(
        &self,
        comm: &dyn Collective,
        grads: &mut [Option<Tensor>],
        shapes: &[candle_core::Shape],
        device: &candle_core::Device,
    ) -> Result<()> {
        if comm.world_size() == 1 {
            return Ok(());
        }
        for b in &self.buckets {
            let flat: Vec<Tensor> = b
                .params
                .iter()
                .map(|&i| match &grads[i] {
                    Some(g) => g.to_dtype(DType::F32)?.flatten_all(),
                    None => Tensor::zeros(shapes[i].elem_count(), DType::F32, device),
                })
                .collect::<candle_core::Result<_>>()?;
            let buf = Tensor::cat(&flat, 0)?; // (elems,)
            let sum = comm.all_reduce_sum(&buf)?;
            let mut off = 0;
            for &i in &b.params {
                let n = shapes[i].elem_count();
                grads[i] = Some(sum.narrow(0, off, n)?.reshape(shapes[i].clone())?);
                off += n;
            }
        }
        Ok(())
    }
}

/// This process's place in the world, from the command line or torchrun's variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldSpec {
    pub rank: usize,
    pub world_size: usize,
    /// rank within the machine: the GPU index this rank uses
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl WorldSpec {
    /// From `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (as torchrun sets
    /// them); `None` when `WORLD_SIZE` is unset. `get` reads a variable (the environment).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(ws) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |name: &str, v: Option<String>, default: Option<usize>| -> Result<usize> {
            match (v, default) {
                (Some(s), _) => s.trim().parse::<usize>().map_err(|_| {
                    Error::Dist(format!("environment variable {name}={s:?}: expected a number"))
                }),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(Error::Dist(format!(
                    "WORLD_SIZE is set but {name} is not (set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, as torchrun does)"
                ))),
            }
        };
        let world_size = num("WORLD_SIZE", Some(ws), None)?;
        let rank = num("RANK", get("RANK"), None)?;
        let local_rank = num("LOCAL_RANK", get("LOCAL_RANK"), Some(rank))?;
        let master_port = num("MASTER_PORT", get("MASTER_PORT"), Some(29500))?;
        let spec = Self {
            rank,
            world_size,
            local_rank,
            master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port: u16::try_from(master_port)
                .map_err(|_| Error::Dist(format!("MASTER_PORT={master_port}: not a TCP port")))?,
        };
        spec.validate()?;
        Ok(Some(spec))
    }

    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(Error::Dist("world size 0: expected at least 1".into()));
        }
        if self.rank >= self.world_size {
            return Err(Error::Dist(format!(
                "rank {} is outside world size {} (ranks are 0..{})",
                self.rank,
                self.world_size,
                self.world_size - 1
            )));
        }
        Ok(())
    }
}

/// An in-process process group for tests and CPU runs: `LocalGroup::new(n)` gives one
/// [`LocalComm`] per rank, to be moved into one thread each. Sums are taken in rank order, so
/// every rank gets bit-identical results. A rank that stops calling (an error on one thread)
/// makes the others fail after `timeout` instead of hanging.
pub struct LocalGroup;

struct Shared {
    state: Mutex<LocalState>,
    cv: Condvar,
    world: usize,
    timeout: Duration,
}

struct LocalState {
    /// contributions of the current collective, by rank
    slots: Vec<Option<Vec<f32>>>,
    arrived: usize,
    /// ranks that have read the result of the current collective
    departed: usize,
    generation: u64,
    result: Option<Arc<std::result::Result<Vec<f32>, String>>>,
    /// (rank, op, elements) of every call, in order (what the tests inspect)
    log: Vec<(usize, &'static str, usize)>,
}

pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize, timeout: Duration) -> Vec<LocalComm> {
        let shared = Arc::new(Shared {
            state: Mutex::new(LocalState {
                slots: vec![None; world],
                arrived: 0,
                departed: 0,
                generation: 0,
                result: None,
                log: Vec::new(),
            }),
            cv: Condvar::new(),
            world,
            timeout,
        });
        (0..world)
            .map(|rank| LocalComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl LocalComm {
    /// Every collective call made so far by any rank: (rank, op, elements).
    pub fn log(&self) -> Vec<(usize, &'static str, usize)> {
        (self.log_handle())()
    }

    /// A reader of the call log that outlives the communicators (they move into threads).
    pub fn log_handle(&self) -> impl Fn() -> Vec<(usize, &'static str, usize)> + Send + 'static {
        let shared = self.shared.clone();
        move || {
            shared
                .state
                .lock()
                .map(|s| s.log.clone())
                .unwrap_or_default()
        }
    }

    /// Deposits `data`, waits for every rank, and returns `combine(slots)`.
    fn exchange(
        &self,
        op: &'static str,
        data: Vec<f32>,
        combine: impl Fn(&[Option<Vec<f32>>]) -> std::result::Result<Vec<f32>, String>,
    ) -> Result<Vec<f32>> {
        let sh = &*self.shared;
        let lost = || {
            Error::Dist(format!(
                "rank {}: the local process group failed",
                self.rank
            ))
        };
        let mut st = sh.state.lock().map_err(|_| lost())?;
        // Wait until the previous collective has been read by every rank.
        while st.result.is_some() {
            let (s, to) = sh.cv.wait_timeout(st, sh.timeout).map_err(|_| lost())?;
            st = s;
            if to.timed_out() {
                return Err(self.timeout_err(op));
            }
        }
        st.log.push((self.rank, op, data.len()));
        st.slots[self.rank] = Some(data);
        st.arrived += 1;
        let gen = st.generation;
        if st.arrived == sh.world {
            let r = combine(&st.slots);
            st.result = Some(Arc::new(r));
            st.slots.iter_mut().for_each(|s| *s = None);
            st.arrived = 0;
            st.departed = 0;
            st.generation += 1;
            sh.cv.notify_all();
        } else {
            while st.generation == gen {
                let (s, to) = sh.cv.wait_timeout(st, sh.timeout).map_err(|_| lost())?;
                st = s;
                if to.timed_out() && st.generation == gen {
                    return Err(self.timeout_err(op));
                }
            }
        }
        let r = st.result.clone().ok_or_else(lost)?;
        st.departed += 1;
        if st.departed == sh.world {
            st.result = None;
            sh.cv.notify_all();
        }
        drop(st);
        (*r).clone()
            .map_err(|e| Error::Dist(format!("rank {}: {op}: {e}", self.rank)))
    }

    fn timeout_err(&self, op: &str) -> Error {
        Error::Dist(format!(
            "rank {}: {op}: timed out after {:?} waiting for the other ranks (did one of them fail?)",
            self.rank, self.shared.timeout
        ))
    }
}

fn host_f32(t: &Tensor, op: &str) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        return Err(Error::Dist(format!(
            "{op}: dtype {:?}, the collectives take f32",
            t.dtype()
        )));
    }
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn same_lengths(slots: &[Option<Vec<f32>>]) -> std::result::Result<usize, String> {
    let n = slots[0].as_ref().map(|v| v.len()).unwrap_or(0);
    for (r, s) in slots.iter().enumerate() {
        let m = s.as_ref().map(|v| v.len()).unwrap_or(0);
        if m != n {
            return Err(format!(
                "rank {r} contributed {m} elements, rank 0 {n}: the ranks disagree on the buffer"
            ));
        }
    }
    Ok(n)
}

impl Collective for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn backend(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let v = host_f32(t, "all_reduce")?;
        let out = self.exchange("all_reduce", v, |slots| {
            let n = same_lengths(slots)?;
            let mut acc = vec![0f32; n];
            for s in slots.iter().flatten() {
                acc.iter_mut().zip(s).for_each(|(a, x)| *a += x);
            }
            Ok(acc)
        })?;
        Ok(Tensor::from_vec(out, t.shape(), t.device())?)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.shared.world {
            return Err(Error::Dist(format!("broadcast: root {root} is not a rank")));
        }
        let v = host_f32(t, "broadcast")?;
        let out = self.exchange("broadcast", v, |slots| {
            same_lengths(slots)?;
            Ok(slots[root].clone().unwrap_or_default())
        })?;
        Ok(Tensor::from_vec(out, t.shape(), t.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shards_cover_the_global_batch_once() -> Result<()> {
        let mut seen = Vec::new();
        for r in 0..4 {
            seen.extend(shard_range(32, r, 4)?);
        }
        assert_eq!(seen, (0..32).collect::<Vec<_>>());
        let e = shard_range(30, 0, 4).unwrap_err().to_string();
        assert!(e.contains("not a multiple of the world size 4"), "{e}");
        assert!(shard_range(32, 4, 4).is_err());
        Ok(())
    }

    #[test]
    fn buckets_go_top_down_and_respect_the_cap() {
        // sizes in elements; cap 40 bytes = 10 elements
        let p = BucketPlan::new(&[4, 4, 12, 3, 3], 40);
        let order: Vec<Vec<usize>> = p.buckets.iter().map(|b| b.params.clone()).collect();
        assert_eq!(order, vec![vec![4, 3], vec![2], vec![1, 0]]);
        assert_eq!(p.bytes(), 26 * 4);
        // every parameter exactly once
        let mut all: Vec<usize> = order.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(BucketPlan::new(&[], 40).buckets.is_empty());
    }

    #[test]
    fn local_group_sums_and_broadcasts_on_every_rank() -> Result<()> {
        let comms = LocalGroup::new(3, Duration::from_secs(20));
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || -> Result<(Vec<f32>, Vec<f32>, usize)> {
                    let r = c.rank() as f32;
                    let t = Tensor::new(&[r, 10.0 * r, 1.0], &Device::Cpu)?;
                    let mut last = Vec::new();
                    for _ in 0..5 {
                        last = c.all_reduce_sum(&t)?.to_vec1::<f32>()?;
                    }
                    let b = c.broadcast(&t, 2)?.to_vec1::<f32>()?;
                    Ok((last, b, c.log().len()))
                })
            })
            .collect();
        for h in handles {
            let (s, b, _) = h.join().expect("thread")?;
            assert_eq!(s, vec![3.0, 30.0, 3.0]);
            assert_eq!(b, vec![2.0, 20.0, 1.0]);
        }
        Ok(())
    }

    #[test]
    fn mismatched_buffers_and_missing_ranks_are_errors() {
        let comms = LocalGroup::new(2, Duration::from_millis(300));
        let mut it = comms.into_iter();
        let (a, b) = (it.next().expect("rank 0"), it.next().expect("rank 1"));
        let h = std::thread::spawn(move || {
            let t = Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t");
            a.all_reduce_sum(&t).map(|_| ())
        });
        let t = Tensor::zeros(4, DType::F32, &Device::Cpu).expect("t");
        let e = b.all_reduce_sum(&t).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
        assert!(h.join().expect("thread").is_err());
        // rank 1 never calls: rank 0 times out with a clear error
        let comms = LocalGroup::new(2, Duration::from_millis(200));
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).expect("t");
        let e = comms[0].all_reduce_sum(&t).unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn bucketed_reduce_fills_missing_gradients_with_zeros() -> Result<()> {
        let comms = LocalGroup::new(2, Duration::from_secs(20));
        let shapes: Vec<candle_core::Shape> = vec![(2, 3).into(), (4,).into(), (1,).into()];
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let shapes = shapes.clone();
                std::thread::spawn(move || -> Result<Vec<Vec<f32>>> {
                    let dev = Device::Cpu;
                    let r = c.rank() as f32 + 1.0;
                    let mut g = vec![
                        Some((Tensor::ones((2, 3), DType::F32, &dev)? * r as f64)?),
                        // rank 1 has no gradient for parameter 1 (e.g. no predicted token)
                        (c.rank() == 0)
                            .then(|| Tensor::ones(4, DType::F32, &dev))
                            .transpose()?,
                        Some(Tensor::new(&[r], &dev)?),
                    ];
                    let plan = BucketPlan::new(&[6, 4, 1], 24);
                    plan.all_reduce(&c, &mut g, &shapes, &dev)?;
                    g.into_iter()
                        .map(|t| Ok(t.expect("filled").flatten_all()?.to_vec1::<f32>()?))
                        .collect()
                })
            })
            .collect();
        for h in handles {
            let g = h.join().expect("thread")?;
            assert_eq!(g[0], vec![3.0; 6]);
            assert_eq!(g[1], vec![1.0; 4]);
            assert_eq!(g[2], vec![3.0]);
        }
        Ok(())
    }

    #[test]
    fn world_from_torchrun_variables() -> Result<()> {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(WorldSpec::from_env(env(&[]))?, None);
        let w = WorldSpec::from_env(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29511"),
        ]))?
        .expect("set");
        assert_eq!((w.rank, w.world_size, w.local_rank), (3, 4, 1));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("10.0.0.1", 29511));
        let e = WorldSpec::from_env(env(&[("WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.to_string().contains("RANK is not"), "{e}");
        let e = WorldSpec::from_env(env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert!(e.to_string().contains("outside world size 2"), "{e}");
        let e = WorldSpec::from_env(env(&[("WORLD_SIZE", "x"), ("RANK", "0")])).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE=\"x\""), "{e}");
        Ok(())
    }
}
