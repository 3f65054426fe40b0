//! `mslt-cli bench`: step time of every stage of a schedule and of the full model.

use anyhow::{Context, Result};
use clap::Args;
use mslt_core::bench::{run, table, BenchConfig};
use mslt_core::train::resolve_model_config;
use mslt_core::train::stages::{plan, ScheduleSpec};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Preset (tiny, mini, small, medium, base, large) or config.json.
    #[arg(long, default_value = "mini")]
    model_config: String,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Schedule whose stages are measured: mslt or stack (full is always measured).
    #[arg(long, default_value = "mslt")]
    schedule: String,
    /// Model depth after each stage (default: the schedule's).
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<usize>>,
    /// Steps per stage, to weight the schedule's speedup (default: equal shares of --steps).
    #[arg(long, value_delimiter = ',')]
    stage_steps: Option<Vec<u64>>,
    /// Fraction of the stages' steps for each stage (instead of --stage-steps).
    #[arg(long, value_delimiter = ',')]
    stage_fracs: Option<Vec<f64>>,
    /// mslt: the top J layers of the previous stage keep training with the new ones.
    #[arg(long, value_name = "J", default_value_t = 0)]
    train_old_layers: usize,
    /// The MLM decoder has its own weight (it trains in every stage).
    #[arg(long)]
    untie_decoder: bool,
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    #[arg(long, default_value_t = 0.1)]
    final_joint_frac: f64,
    #[arg(long)]
    train_embeddings: bool,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (median and min-max reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dropout in the frozen layers: on (default, as training) or off (every frozen op fused).
    #[arg(long, default_value = "on")]
    frozen_dropout: String,
    /// Frozen layers on a GPU: fused (mslt-kernels) or candle.
    #[arg(long, default_value = "fused")]
    kernels: String,
    /// dtype of the fused frozen layers: f32 or bf16.
    #[arg(long, default_value = "f32")]
    frozen_dtype: String,
    /// f32 matrix products on CUDA: f32 (full precision) or tf32 (tensor cores, 10-bit
    /// mantissa inputs, f32 accumulation; PyTorch's allow_tf32). No effect on the CPU.
    #[arg(long, default_value = "f32")]
    matmul_precision: String,
    /// The optimizer the step rows time: adamw or lamb.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Data-parallel projection at these GPU counts (e.g. 8,64,512): see --link-gbps.
    #[arg(long, value_delimiter = ',')]
    project_gpus: Option<Vec<usize>>,
    /// Link bandwidths of the projection, Gbit/s (default 100,400).
    #[arg(long, value_delimiter = ',', default_value = "100,400")]
    link_gbps: Vec<f64>,
    /// JSON of tools/torch_baseline.py (same config, same machine): prints both side by side.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Instead of the stages: where one frozen layer's time goes, op by op, on the path the
    /// frozen layers take (fused kernels in --frozen-dtype on a GPU with --kernels fused, plain
    /// Candle f32 otherwise), with --frozen-dropout; the device synchronised around each op.
    /// Beside it, the whole layer timed with one synchronisation.
    #[arg(long)]
    layer_ops: bool,
}

pub fn run_cmd(a: BenchArgs) -> Result<()> {
    mslt_core::matmul_tf32(&a.matmul_precision).context("--matmul-precision")?;
    let device = mslt_core::device(&a.device)?;
    let mut model = resolve_model_config(&a.model_config)?;
    if a.untie_decoder {
        model.tie_word_embeddings = false;
    }
    anyhow::ensure!(
        a.seq_len <= model.max_position_embeddings,
        "--seq-len {} is beyond the model's max_position_embeddings {}",
        a.seq_len,
        model.max_position_embeddings
    );
    anyhow::ensure!(
        a.batch_size > 0 && a.seq_len >= 2,
        "--batch-size must be >= 1 and --seq-len >= 2"
    );
    let frozen_dropout = super::on_off("--frozen-dropout", &a.frozen_dropout)?;
    let kernels = a
        .kernels
        .parse()
        .map_err(|e| anyhow::anyhow!("--kernels {e}"))?;
    let frozen_dtype = mslt_core::train::frozen_dtype(&a.frozen_dtype).map_err(|_| {
        anyhow::anyhow!("--frozen-dtype {:?}: expected f32 or bf16", a.frozen_dtype)
    })?;
    let bc = BenchConfig {
        heap: None,
        model: &model,
        stages: &[],
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        warmup: a.warmup,
        repeats: a.repeats,
        device: &device,
        frozen_dropout,
        kernels,
        frozen_dtype,
        matmul_precision: &a.matmul_precision,
        optimizer: a
            .optimizer
            .parse()
            .map_err(|e| anyhow::anyhow!("--optimizer {e}"))?,
    };
    anyhow::ensure!(
        a.compare.is_none() || bc.optimizer == mslt_core::optim::Algorithm::AdamW,
        "--compare: tools/torch_baseline.py times torch.optim.AdamW; bench with --optimizer adamw to compare"
    );
    anyhow::ensure!(
        a.compare.is_none() || model.tie_word_embeddings,
        "--compare: tools/torch_baseline.py builds a tied MLM decoder; bench a tied model (no --untie-decoder, tie_word_embeddings true) to compare"
    );
    if a.layer_ops {
        let path = mslt_core::bench::LayerPath::of(&bc);
        let r = mslt_core::bench::layer_ops(&bc, path).context("--layer-ops")?;
        println!("bench --layer-ops: {}", a.model_config);
        print!("{}", mslt_core::bench::layer_ops_table(&r));
        if let Some(p) = &a.json {
            std::fs::write(p, serde_json::to_string_pretty(&r)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let kind = a
        .schedule
        .parse()
        .map_err(|e| anyhow::anyhow!("--schedule {e}"))?;
    let stages = plan(&ScheduleSpec {
        kind,
        target_depth: model.num_hidden_layers,
        steps: a.steps,
        stages: a.stages.as_deref().unwrap_or(&[]),
        stage_steps: a.stage_steps.as_deref().unwrap_or(&[]),
        stage_fracs: a.stage_fracs.as_deref().unwrap_or(&[]),
        final_joint_frac: a.final_joint_frac,
        train_embeddings: a.train_embeddings,
        train_old_layers: a.train_old_layers,
    })?;
    let report = run(&BenchConfig {
        heap: Some(&crate::heap::Probe),
        stages: &stages,
        ..bc
    })?;
    println!(
        "bench: {} ({} layers x {}), schedule {} {:?}",
        a.model_config,
        model.num_hidden_layers,
        model.hidden_size,
        a.schedule,
        stages.iter().map(|s| s.depth).collect::<Vec<_>>()
    );
    print!("{}", table(&report));
    if let Some(g) = &a.project_gpus {
        print!(
            "{}",
            mslt_core::bench::projection_table(&report, g, &a.link_gbps)
        );
    }
    if let Some(p) = &a.compare {
        print!("{}", compare_table(&report, p)?);
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Our rows beside PyTorch's (tools/torch_baseline.py): full step, the MSLT stage with the same
/// number of frozen layers, inference forward; ratio = ours / torch (< 1: we are faster); MFU
/// against the faster of the two measured fp32 matmul rates.
fn compare_table(r: &mslt_core::bench::BenchReport, path: &std::path::Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not JSON (expected tools/torch_baseline.py output)",
            path.display()
        )
    })?;
    let field = |v: &serde_json::Value, k: &str| -> Result<f64> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("{}: missing number `{k}`", path.display()))
    };
    let layers = t["config"]["layers"].as_u64().context("config.layers")? as usize;
    let frozen = t["rows"]["stage"]["frozen"]
        .as_u64()
        .context("rows.stage.frozen")? as usize;
    let batch = t["config"]["batch_size"]
        .as_u64()
        .context("config.batch_size")? as usize;
    let seq = t["config"]["seq_len"].as_u64().context("config.seq_len")? as usize;
    anyhow::ensure!(
        batch == r.batch_size && seq == r.seq_len,
        "{}: torch measured batch {batch} x seq {seq}, this bench {} x {}",
        path.display(),
        r.batch_size,
        r.seq_len
    );
    if let Some(m) = t["masked_rows"].as_u64() {
        anyhow::ensure!(
            m as usize == r.masked_rows,
            "{}: torch predicted {m} masked rows, this bench {} (unequal MLM-head work; rerun tools/torch_baseline.py)",
            path.display(),
            r.masked_rows
        );
    }
    let rate = r.matmul_gflops.max(field(&t, "matmul_gflops")?);
    let stage_name = format!("stage ({frozen} of {layers} frozen)");
    let pairs: Vec<(
        String,
        Option<&mslt_core::bench::BenchRow>,
        &serde_json::Value,
    )> = vec![
        (
            "full".into(),
            r.rows.iter().find(|x| x.name == "full"),
            &t["rows"]["full"]["step"],
        ),
        (
            stage_name,
            r.rows.iter().find(|x| {
                x.name.starts_with("stage")
                    && x.depth == layers
                    && x.depth - x.trainable_layers == frozen
            }),
            &t["rows"]["stage"]["step"],
        ),
        (
            "forward-only".into(),
            r.rows.iter().find(|x| x.name == "forward-only"),
            &t["rows"]["forward"]["step"],
        ),
    ];
    let mut s = format!(
        "\nvs PyTorch {} (transformers {}, {} threads; {}): MFU against {:.1} GFLOP/s (mslt {:.1}, torch {:.1})\n",
        t["torch"].as_str().unwrap_or("?"),
        t["transformers"].as_str().unwrap_or("?"),
        t["threads"],
        path.display(),
        rate,
        r.matmul_gflops,
        field(&t, "matmul_gflops")?
    );
    s.push_str(&format!(
        "{:<26} {:>22} {:>22} {:>12} {:>9} {:>9}\n",
        "row", "mslt ms (min-max)", "torch ms (min-max)", "mslt/torch", "MFU mslt", "MFU torch"
    ));
    for (name, ours, theirs) in pairs {
        let Some(o) = ours else {
            s.push_str(&format!(
                "{name:<26} (no such row in this bench: give --stages so that one stage matches)\n"
            ));
            continue;
        };
        let tm = field(theirs, "median_ms")?;
        s.push_str(&format!(
            "{:<26} {:>22} {:>22} {:>12.2} {:>9.3} {:>9.3}\n",
            name,
            format!(
                "{:.1} ({:.0}-{:.0})",
                o.step.median_ms, o.step.min_ms, o.step.max_ms
            ),
            format!(
                "{:.1} ({:.0}-{:.0})",
                tm,
                field(theirs, "min_ms")?,
                field(theirs, "max_ms")?
            ),
            o.step.median_ms / tm,
            o.flops / (o.step.median_ms / 1e3) / (rate * 1e9),
            o.flops / (tm / 1e3) / (rate * 1e9),
        ));
    }
    Ok(s)
}
