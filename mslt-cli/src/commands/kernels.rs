//! `mslt-cli kernels`: the fused kernels of mslt-kernels on their own: compile check (NVRTC),
//! correctness against the Candle references, and timings beside the plain Candle path.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mslt_kernels::harness::{self, BenchShapes, CheckShapes};
use std::path::PathBuf;

#[derive(Args)]
pub struct KernelsArgs {
    #[command(subcommand)]
    cmd: KernelsCmd,
}

#[derive(Subcommand)]
enum KernelsCmd {
    /// Compile every kernels-cu/ source to PTX with NVRTC (dlopen; no GPU needed).
    Ptx {
        /// Target architecture.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
    /// Compare every kernel (f32, bf16) with its Candle reference on fresh random inputs.
    Check {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Add BERT-base-sized shapes (for a GPU).
        #[arg(long)]
        large: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time every kernel beside the plain Candle path (median of 7, after warm-up).
    Bench {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The small CPU-sized shapes instead of the GPU ones.
        #[arg(long)]
        tiny: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_json(p: &Option<PathBuf>, v: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = p {
        std::fs::write(p, serde_json::to_string_pretty(v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn run(a: KernelsArgs) -> Result<()> {
    match a.cmd {
        KernelsCmd::Ptx { arch } => {
            let nv = mslt_kernels::nvrtc::Nvrtc::load()?;
            let v = nv.version()?;
            for (file, entries, bytes) in mslt_kernels::nvrtc::check_all(&nv, &arch)? {
                println!("ok  {file}: {entries} entry points, {bytes} bytes of PTX ({arch}, NVRTC {}.{})", v.0, v.1);
            }
            Ok(())
        }
        KernelsCmd::Check {
            device,
            large,
            json,
        } => {
            let dev = mslt_core::device(&device)?;
            let shapes = if large {
                CheckShapes::large()
            } else {
                CheckShapes::small()
            };
            let rows = harness::check(&dev, &shapes)?;
            print!("{}", harness::check_table(&rows));
            write_json(&json, &rows)?;
            let failed = rows.iter().filter(|r| !r.pass).count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} kernel checks failed",
                rows.len()
            );
            println!("all {} kernel checks passed", rows.len());
            Ok(())
        }
        KernelsCmd::Bench { device, tiny, json } => {
            let dev = mslt_core::device(&device)?;
            let shapes = if tiny {
                BenchShapes::tiny()
            } else {
                BenchShapes::gpu()
            };
            let rows = harness::bench(&dev, &shapes)?;
            print!("{}", harness::bench_table(&rows));
            write_json(&json, &rows)
        }
    }
}
