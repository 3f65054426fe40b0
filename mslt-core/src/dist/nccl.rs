//! The NCCL process group (feature `nccl`): one [`NcclComm`] per process and GPU, created on
//! Candle's own CUDA stream so that collectives and compute are ordered on one stream.
//! The collectives are Candle custom ops (no backward) over the tensors' device buffers.

use super::{rendezvous, Collective, WorldSpec};
use crate::error::{Error, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::time::Duration;

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Dist(format!("nccl: {what}: {e:?}"))
}

pub struct NcclComm {
    comm: Comm,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// Joins the world of `spec` on `device` (a CUDA device): rank 0 creates the NCCL unique
    /// id and hands it out through the TCP rendezvous; then every rank initialises its
    /// communicator. `token` must be the same on every rank (a digest of the run config).
    pub fn init(spec: &WorldSpec, device: &Device, token: &str, timeout: Duration) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::Dist(format!(
                "nccl: rank {} runs on {device:?}; NCCL needs a CUDA device",
                spec.rank
            )));
        };
        let payload = if spec.rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            Some(id.internal().iter().map(|&c| c as u8).collect())
        } else {
            None
        };
        let bytes = rendezvous::share(spec, payload, token, timeout)?;
        if bytes.len() != 128 {
            return Err(Error::Dist(format!(
                "nccl: the unique id from rank 0 has {} bytes, expected 128",
                bytes.len()
            )));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            spec.rank,
            spec.world_size,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_err(&format!("ncclCommInitRank (rank {})", spec.rank), e))?;
        Ok(Self {
            comm,
            rank: spec.rank,
            world: spec.world_size,
        })
    }
}

/// The collective as a Candle op: reads the f32 input buffer, writes a fresh output buffer.
struct NcclOp<'a> {
    comm: &'a Comm,
    /// None: all-reduce (sum); Some(root): broadcast from root
    root: Option<usize>,
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "mslt-nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("mslt-nccl: the NCCL collectives take CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("mslt-nccl: input not contiguous".into()))?;
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = &s.device;
        let mut dst = unsafe { dev.alloc::<f32>(b - a)? };
        match self.root {
            None => self
                .comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?,
            Some(r) => self
                .comm
                .broadcast(Some(&src), &mut dst, r as i32)
                .map_err(|e| candle_core::Error::Msg(format!("ncclBroadcast: {e:?}")))?,
        };
        Ok((
            CudaStorage::wrap_cuda_slice(dst, dev.clone()),
            l.shape().clone(),
        ))
    }
}

impl NcclComm {
    fn run(&self, t: &Tensor, root: Option<usize>, what: &str) -> Result<Tensor> {
        if t.dtype() != DType::F32 {
            return Err(Error::Dist(format!(
                "nccl {what}: dtype {:?}, the collectives take f32",
                t.dtype()
            )));
        }
        let t = t.contiguous()?;
        Ok(t.apply_op1_no_bwd(&NcclOp {
            comm: &self.comm,
            root,
        })?)
    }
}

impl Collective for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, None, "all_reduce")
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            return Err(Error::Dist(format!("broadcast: root {root} is not a rank")));
        }
        self.run(t, Some(root), "broadcast")
    }
}
