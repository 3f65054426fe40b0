//! `mslt-cli kernels`: the fused kernels of mslt-kernels on their own: compile check (NVRTC),
//! correctness against the Candle references, and timings beside the plain Candle path.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mslt_kernels::harness::{self, BenchShapes, CheckShapes, Part, Select};
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
        /// Also assemble the PTX with this `ptxas` (as the driver's JIT does) and print
        /// registers, spills and shared memory per kernel.
        #[arg(long)]
        ptxas: Option<PathBuf>,
    },
    /// Compare every kernel (f32, bf16) with its Candle reference on fresh random inputs.
    Check {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Add BERT-base-sized shapes (for a GPU).
        #[arg(long)]
        large: bool,
        #[command(flatten)]
        sel: SelectArgs,
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
        #[command(flatten)]
        sel: SelectArgs,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args)]
struct SelectArgs {
    /// Parts to run, comma-separated: copy (bench), ln, gelu, attention (the default kernel
    /// choice and the Candle path), named (the kernels of --attention-kernels), model (check:
    /// the whole frozen encoder), dropout (attention-probability dropout inside the kernels),
    /// optim (check: the fused AdamW update), or all.
    #[arg(long, default_value = "all")]
    only: String,
    /// Attention kernels checked / timed by name on CUDA (part `named`), comma-separated:
    /// simt, tc, fa2, fa2v2, fa2q128, fa2w8, fa2v3, fa2w8v3, fa2w8v4, fa2w8v5, fa2wg, fa2wg2,
    /// fa2wg3, fa2wg3e, fa2wg4, fa2wg4e, fa2wg3s, tf32x3, all or none. Each runs where it fits the dtype, head dim and
    /// sequence length (fa2v3, fa2w8v3, fa2w8v4, fa2w8v5 and fa2wg*: T <= 512; fa2wg* on sm_90
    /// GPUs only). Default: all for `check`; for `bench` fa2v2, fa2w8, fa2v3 and fa2w8v3 (the
    /// `fused` rows take the default: fa2v3 below T = 256, fa2w8v3 to 512, fa2w8 beyond; tc,
    /// fa2, fa2q128, fa2wg and fa2wg2 are slower than these at every shape measured).
    #[arg(long)]
    attention_kernels: Option<String>,
}

impl SelectArgs {
    fn select(&self, default_kernels: &str) -> Result<Select> {
        let all = Select::all();
        let parts =
            Select::parse_list("--only", &self.only, &all.parts).map_err(anyhow::Error::msg)?;
        let attention_kernels = Select::parse_list(
            "--attention-kernels",
            self.attention_kernels.as_deref().unwrap_or(default_kernels),
            &all.attention_kernels,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Select {
            parts,
            attention_kernels,
        })
    }
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
        KernelsCmd::Ptx { arch, ptxas } => {
            let nv = mslt_kernels::nvrtc::Nvrtc::load()?;
            let v = nv.version()?;
            for (file, entries, bytes) in mslt_kernels::nvrtc::check_all(&nv, &arch)? {
                println!("ok  {file}: {entries} entry points, {bytes} bytes of PTX ({arch}, NVRTC {}.{})", v.0, v.1);
            }
            if let Some(ptxas) = ptxas {
                for src in mslt_kernels::SOURCES {
                    let ptx = nv.compile_ptx(src, &arch)?;
                    for u in mslt_kernels::nvrtc::assemble(&ptxas, src.file, &ptx, &arch)? {
                        println!(
                            "ptxas {arch} {:<32} {:>3} registers, {:>5} B smem, spills {} B stored / {} B loaded{}",
                            u.entry,
                            u.registers,
                            u.shared_bytes,
                            u.spill_stores,
                            u.spill_loads,
                            if u.wgmma_serialized { ", wgmma SERIALISED" } else { "" }
                        );
                    }
                }
            }
            Ok(())
        }
        KernelsCmd::Check {
            device,
            large,
            sel,
            json,
        } => {
            let sel = sel.select("all")?;
            let dev = mslt_core::device(&device)?;
            let shapes = if large {
                CheckShapes::large()
            } else {
                CheckShapes::small()
            };
            // rows are printed as they come: a run that dies keeps what it checked before
            println!("{}", harness::check_header());
            let mut print = |r: &harness::CheckRow| {
                println!("{}", harness::check_line(r));
                if let Some(s) = &r.spread {
                    println!("    wrong elements: {s}");
                }
            };
            let mut rows = harness::check(&dev, &shapes, &sel, &mut print)?;
            if sel.has(Part::Model) || sel.has(Part::Dropout) {
                let preset = if large { "base" } else { "mini" };
                let model =
                    model_check(&dev, preset, sel.has(Part::Model), sel.has(Part::Dropout))?;
                model.iter().for_each(&mut print);
                rows.extend(model);
            }
            write_json(&json, &rows)?;
            anyhow::ensure!(
                !rows.is_empty(),
                "no check ran: --only {:?} with --attention-kernels {:?} selects nothing on {device} (named kernels run on CUDA only)",
                sel.parts,
                sel.attention_kernels
            );
            let failed = rows.iter().filter(|r| !r.pass).count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} kernel checks failed",
                rows.len()
            );
            println!("all {} kernel checks passed", rows.len());
            Ok(())
        }
        KernelsCmd::Bench {
            device,
            tiny,
            sel,
            json,
        } => {
            let sel = sel.select("fa2v2,fa2w8,fa2v3,fa2w8v3")?;
            let dev = mslt_core::device(&device)?;
            let shapes = if tiny {
                BenchShapes::tiny()
            } else {
                BenchShapes::gpu()
            };
            println!("{}", harness::bench_header());
            let mut print = |r: &harness::TimeRow| println!("{}", harness::bench_line(r));
            let rows = harness::bench(&dev, &shapes, &sel, &mut print)?;
            write_json(&json, &rows)
        }
    }
}

/// The whole frozen encoder through the fused kernels vs the plain Candle path on the same
/// device: a randomly initialised preset, padded batch, eval mode, every hidden state compared,
/// and train mode with frozen dropout on (part `model`); the attention dropout inside the
/// kernels against its Philox reference (part `dropout`). On CPU the fused side runs the ops'
/// CPU references (`allow_cpu`).
fn model_check(
    dev: &candle_core::Device,
    preset: &str,
    model: bool,
    dropout: bool,
) -> Result<Vec<harness::CheckRow>> {
    use candle_core::DType;
    use mslt_core::model::FusedOptions;
    use mslt_core::{BertForPreTraining, BertInput, Mode, Rng};
    let mut cfg = mslt_core::train::resolve_model_config(preset)?;
    if dev.is_cpu() {
        cfg.num_hidden_layers = 2;
    }
    let w = mslt_core::weights::init_all(&cfg, &mut Rng::new(11), dev)?;
    let plain = BertForPreTraining::from_tensors(&cfg, &w, "init")?;
    let (b, t) = (8, 128);
    let mut rng = Rng::new(12);
    let ids: Vec<i64> = (0..b * t)
        .map(|_| 1000 + rng.below(cfg.vocab_size as u64 - 1000) as i64)
        .collect();
    let mask: Vec<i64> = (0..b * t)
        .map(|k| ((k % t) < t - 13 * (k / t)) as i64)
        .collect();
    let input = BertInput::from_host(&cfg, (b, t), &ids, Some(&mask), None, dev)?;
    let mut rows = Vec::new();
    // `m` with every layer prepared for the fused kernels in `dtype`
    let fused = |m: &BertForPreTraining, dtype| -> Result<BertForPreTraining> {
        let mut m = m.clone();
        let n = m.use_fused_kernels(FusedOptions {
            dtype,
            allow_cpu: dev.is_cpu(),
        })?;
        anyhow::ensure!(
            n == cfg.num_hidden_layers,
            "{n} of {} layers fused",
            cfg.num_hidden_layers
        );
        Ok(m)
    };
    let want = if model {
        Some(plain.encode(&input, &mut Mode::Eval, true)?)
    } else {
        None
    };
    for (dtype, want) in [DType::F32, DType::BF16]
        .into_iter()
        .filter_map(|d| want.as_ref().map(|w| (d, w)))
    {
        let m = fused(&plain, dtype)?;
        let got = m.encode(&input, &mut Mode::Eval, true)?;
        for (i, (g, r)) in got
            .hidden_states
            .iter()
            .zip(&want.hidden_states)
            .enumerate()
            .skip(1)
        {
            let mut row = harness::compare(
                "encoder layer",
                dtype,
                format!("{preset} layer {i}/{}", cfg.num_hidden_layers),
                "candle model",
                g,
                r,
            )?;
            // bf16 errors compound through the layers (each re-rounds its activations).
            if dtype == DType::BF16 {
                row.tol = 5e-2;
            } else {
                row.tol = 1e-4;
            }
            row.pass = row.nonfinite == 0 && row.rel_err <= row.tol;
            rows.push(row);
        }
    }
    // Train mode with frozen dropout on (f32): the fused layers' dropout path against the Candle
    // layers, both drawing the same masks (same RNG, and on a GPU the same device seed, in the
    // same order), so they agree to rounding.
    let run = |m: &BertForPreTraining| -> Result<mslt_core::model::EncoderOutput> {
        if !dev.is_cpu() {
            dev.set_seed(21)?;
        }
        let mut rng = Rng::new(21);
        Ok(m.encode(&input, &mut Mode::Train(&mut rng), true)?)
    };
    let mut plain_d = plain.clone();
    plain_d.frozen_dropout = true;
    let last = cfg.num_hidden_layers;
    if model {
        // attention dropout on Candle ops, so that the fused layers draw what the Candle model
        // draws (on a GPU the default is the kernel's Philox draw, checked below)
        let mut fused_d = fused(&plain_d, DType::F32)?;
        fused_d.set_attention_dropout(mslt_core::model::AttentionDropout::Candle);
        let (want, got) = (run(&plain_d)?, run(&fused_d)?);
        let mut row = harness::compare(
            "layers + dropout",
            DType::F32,
            format!("{preset} layer {last}/{last} train"),
            "candle model",
            &got.hidden_states[last],
            &want.hidden_states[last],
        )?;
        row.tol = 1e-4;
        row.pass = row.nonfinite == 0 && row.rel_err <= row.tol;
        rows.push(row);
    }
    // Attention dropout inside the fused kernel (MSLT_ATTENTION_DROPOUT=kernel: the `_dropout`
    // entry points on a GPU, the CPU op here) against the same Philox draws through Candle ops,
    // the other dropouts drawn alike; f32 (tf32x3) and bf16 (the default, fa2v3 at T = 128).
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 5e-2)]
        .into_iter()
        .filter(|_| dropout)
    {
        let with = |a| -> Result<BertForPreTraining> {
            let mut m = fused(&plain_d, dtype)?;
            m.set_attention_dropout(a);
            Ok(m)
        };
        use mslt_core::model::AttentionDropout;
        let want = run(&with(AttentionDropout::Reference)?)?;
        let got = run(&with(AttentionDropout::Kernel)?)?;
        let mut row = harness::compare(
            "layers + kernel dropout",
            dtype,
            format!("{preset} layer {last}/{last} train"),
            "philox reference",
            &got.hidden_states[last],
            &want.hidden_states[last],
        )?;
        row.tol = tol;
        row.pass = row.nonfinite == 0 && row.rel_err <= row.tol;
        rows.push(row);
    }
    Ok(rows)
}
