//! `mslt-cli ablate --plan FILE.toml`: run several named runs on the same data and budget, then
//! summarise them (see `mslt_core::ablate`). Finished runs are skipped, interrupted ones resumed,
//! so re-running a plan continues it.

use anyhow::{Context, Result};
use clap::Args;
use mslt_core::ablate::{compare, summarize_run, write_summary, Plan};
use mslt_core::train::{checkpoint, train, Event};
use std::path::PathBuf;

#[derive(Args)]
pub struct AblateArgs {
    /// The plan (TOML): `out`, optional `baseline`, a `[base]` table and `[[run]]` entries.
    #[arg(long)]
    plan: PathBuf,
    /// Only summarise the runs already there.
    #[arg(long)]
    summary_only: bool,
}

pub fn run(a: AblateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.plan)
        .with_context(|| format!("reading {}", a.plan.display()))?;
    let plan: Plan = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            a.plan.display(),
            e.to_string().replace('\n', " ").trim()
        )
    })?;
    let configs = plan
        .configs()
        .with_context(|| format!("plan {}", a.plan.display()))?;
    let baseline = plan.baseline_name()?;
    if !a.summary_only {
        for (name, cfg) in &configs {
            let done = checkpoint::latest(&cfg.out)
                .and_then(|d| checkpoint::load_state(&d).ok())
                .is_some_and(|s| s.step >= cfg.steps);
            if done {
                eprintln!("[{name}] already finished: {}", cfg.out.display());
                continue;
            }
            let resume = checkpoint::latest(&cfg.out).is_some();
            eprintln!(
                "[{name}] {} {:?} -> {}",
                if resume { "resuming" } else { "starting" },
                cfg.schedule,
                cfg.out.display()
            );
            train(cfg, resume, &mut |ev| match ev {
                Event::Stage(s) if s.event == "stage_start" => {
                    eprintln!(
                        "[{name}] stage {} at step {}: depth {}, {} trainable parameters",
                        s.stage, s.step, s.depth, s.trainable_params
                    )
                }
                Event::Eval(e) => eprintln!(
                    "[{name}] step {} eval mlm loss {:.4} ({:.0}s)",
                    e.step, e.eval_mlm_loss, e.elapsed_s
                ),
                Event::Skipped { step, reason } => eprintln!("[{name}] step {step}: {reason}"),
                _ => {}
            })
            .with_context(|| format!("run `{name}`"))?;
        }
    }
    if let (Some(ft), false) = (&plan.finetune, a.summary_only) {
        let task = mslt_core::finetune::load_task(&ft.task)?;
        for (name, cfg) in &configs {
            let path = ft.result_path(&cfg.out);
            if path.is_file() {
                eprintln!("[{name}] fine-tuning already done: {}", path.display());
                continue;
            }
            let mut acc = Vec::new();
            for seed in 0..ft.seeds {
                let fc = mslt_core::finetune::FinetuneConfig {
                    checkpoint: cfg.out.display().to_string(),
                    epochs: ft.epochs,
                    batch_size: ft.batch_size,
                    lr: ft.lr,
                    max_seq_len: ft.max_seq_len,
                    seed,
                    max_train: ft.max_train,
                    max_dev: ft.max_dev,
                    device: cfg.device.clone(),
                    matmul_precision: cfg.matmul_precision.clone(),
                    ..Default::default()
                };
                let t = mslt_core::finetune::finetune(&fc, &task, &mut |_, _, _, _| {})
                    .with_context(|| format!("fine-tuning run `{name}`"))?;
                eprintln!(
                    "[{name}] {} seed {seed}: dev accuracy {:.4}",
                    task.name, t.result.final_dev.accuracy
                );
                acc.push(t.result.final_dev.accuracy);
            }
            let (m, sd) = mslt_core::finetune::mean_std(&acc);
            let d = mslt_core::ablate::Downstream {
                task: task.name.clone(),
                seeds: acc.len(),
                accuracy_mean: m,
                accuracy_std: sd,
                accuracy: acc,
            };
            std::fs::write(&path, serde_json::to_string_pretty(&d)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let mut runs = configs
        .iter()
        .map(|(n, c)| summarize_run(n, c))
        .collect::<mslt_core::Result<Vec<_>>>()?;
    if let Some(ft) = &plan.finetune {
        for (r, (_, c)) in runs.iter_mut().zip(&configs) {
            r.downstream = mslt_core::ablate::read_downstream(&ft.result_path(&c.out))?;
        }
    }
    compare(&mut runs, &baseline);
    let note = format!(
        "Plan `{}`; baseline `{baseline}`. Wall time is training time (evaluation and checkpoint writing excluded), measured on this machine with {} threads.",
        a.plan.display(),
        candle_core::utils::get_num_threads()
    );
    write_summary(&plan.out, &runs, &baseline, &note)?;
    print!("{}", mslt_core::ablate::markdown(&runs, &baseline));
    eprintln!(
        "summary: {}/summary.md, summary.json, eval_loss_vs_step.svg, eval_loss_vs_time.svg",
        plan.out.display()
    );
    Ok(())
}
