//! Ablation plans: several named runs (schedules and knobs) on the same data and budget, then a
//! summary (final eval loss, wall time, tokens/s, speedup vs the baseline at equal steps, loss
//! at the baseline's end time, time to reach the baseline's final loss and the speedup that
//! gives) and SVG plots of eval loss vs step and vs wall-clock.
//!
//! Plan file (TOML):
//! ```toml
//! out = "runs/ablation"        # one sub-directory per run
//! baseline = "full"             # the run others are compared with (default: the first)
//! [base]                        # TrainConfig keys shared by every run
//! data = "data/sotu-128"
//! model_config = "mini"
//! steps = 600
//! [[run]]
//! name = "full"
//! schedule = "full"
//! [[run]]
//! name = "mslt"
//! schedule = "mslt"
//! stages = [1, 2, 3, 4]
//! ```

use crate::error::{Error, Result};
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub out: PathBuf,
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default)]
    pub base: serde_json::Map<String, Value>,
    #[serde(rename = "run")]
    pub runs: Vec<serde_json::Map<String, Value>>,
    /// Optional downstream step: every run's final checkpoint fine-tuned on a task.
    #[serde(default)]
    pub finetune: Option<FinetunePlan>,
}

/// `[finetune]` of a plan: the task and recipe every run's final checkpoint is fine-tuned with.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinetunePlan {
    pub task: PathBuf,
    #[serde(default = "default_seeds")]
    pub seeds: u64,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_ft_batch")]
    pub batch_size: usize,
    #[serde(default = "default_ft_lr")]
    pub lr: f64,
    #[serde(default = "default_ft_len")]
    pub max_seq_len: usize,
    #[serde(default)]
    pub max_train: usize,
    #[serde(default)]
    pub max_dev: usize,
}

fn default_seeds() -> u64 {
    3
}
fn default_epochs() -> usize {
    2
}
fn default_ft_batch() -> usize {
    32
}
fn default_ft_lr() -> f64 {
    1e-4
}
fn default_ft_len() -> usize {
    128
}

impl FinetunePlan {
    /// Where a run's downstream result is written.
    pub fn result_path(&self, run_out: &Path) -> PathBuf {
        let task = self
            .task
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "task".into());
        run_out.join(format!("finetune-{task}.json"))
    }
}

/// Downstream accuracy of a run over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Downstream {
    pub task: String,
    pub seeds: usize,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub accuracy: Vec<f64>,
}

impl Plan {
    /// The named run configs: `base` overridden by each run's keys, `out` = plan.out/name.
    pub fn configs(&self) -> Result<Vec<(String, TrainConfig)>> {
        if self.runs.is_empty() {
            return Err(Error::Input("the plan has no [[run]]".into()));
        }
        let mut names = std::collections::HashSet::new();
        self.runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = r
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| Error::Input(format!("run {i}: needs a `name`")))?
                    .to_string();
                if !names.insert(name.clone()) || name.contains('/') || name.is_empty() {
                    return Err(Error::Input(format!(
                        "run `{name}`: names must be unique, non-empty, without `/`"
                    )));
                }
                let mut m = self.base.clone();
                for (k, v) in r {
                    if k != "name" {
                        m.insert(k.clone(), v.clone());
                    }
                }
                m.insert(
                    "out".into(),
                    Value::String(self.out.join(&name).display().to_string()),
                );
                let cfg: TrainConfig =
                    serde_json::from_value(Value::Object(m)).map_err(|e| Error::Config {
                        origin: format!("plan run `{name}`"),
                        field: "<run>".into(),
                        msg: e.to_string(),
                    })?;
                cfg.validate()?;
                Ok((name, cfg))
            })
            .collect()
    }

    pub fn baseline_name(&self) -> Result<String> {
        let cfgs = self.configs()?;
        match &self.baseline {
            Some(b) if cfgs.iter().any(|(n, _)| n == b) => Ok(b.clone()),
            Some(b) => Err(Error::Input(format!(
                "baseline `{b}` is not a run of the plan"
            ))),
            None => Ok(cfgs[0].0.clone()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub schedule: String,
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub final_eval_mlm_loss: Option<f64>,
    pub final_eval_mlm_acc: Option<f64>,
    /// training wall-clock (evaluation and checkpoint writing excluded)
    pub wall_s: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// baseline wall time / this run's wall time; only where both ran the same steps and tokens,
    /// `None` otherwise
    pub speedup: Option<f64>,
    /// this run's final eval MLM loss minus the baseline's
    pub mlm_loss_gap: Option<f64>,
    /// training wall-clock at which this run's eval MLM loss first reaches the baseline's final
    /// one, linearly interpolated between the two evaluations around the crossing
    pub time_to_baseline_loss_s: Option<f64>,
    /// the baseline's own `time_to_baseline_loss_s` / this run's (1 for the baseline): the
    /// wall-clock speedup to the baseline's final quality
    pub speedup_at_baseline_loss: Option<f64>,
    /// this run's eval MLM loss at the baseline's final-evaluation wall-clock, linearly
    /// interpolated between evaluations; `None` where this run's evaluations do not reach that time
    pub loss_at_baseline_time: Option<f64>,
    /// (step, elapsed_s, eval_mlm_loss) of every evaluation
    pub evals: Vec<(u64, f64, f64)>,
    /// (step, eval MLM loss right after a growth minus at the end of the stage before) for each
    /// growth evaluated (`eval_after_growth`)
    pub growth_jumps: Vec<(u64, f64)>,
    /// Fine-tuning result of the final checkpoint (plans with `[finetune]`).
    pub downstream: Option<Downstream>,
}

/// Reads a run's metrics.jsonl.
pub fn summarize_run(name: &str, cfg: &TrainConfig) -> Result<RunSummary> {
    let p = cfg.out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let mut last_step: Option<Value> = None;
    let mut evals: Vec<(u64, f64, f64)> = Vec::new();
    let mut growth_jumps = Vec::new();
    let mut last_eval: Option<Value> = None;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v.get("eval_loss").is_some() {
            let (step, loss) = (
                v["step"].as_u64().unwrap_or(0),
                v["eval_mlm_loss"].as_f64().unwrap_or(f64::NAN),
            );
            if v.get("after_growth").and_then(|a| a.as_bool()) == Some(true) {
                if let Some(&(s, _, before)) = evals.last() {
                    if s == step {
                        growth_jumps.push((step, loss - before));
                    }
                }
            }
            evals.push((
                v["step"].as_u64().unwrap_or(0),
                v["elapsed_s"].as_f64().unwrap_or(0.0),
                v["eval_mlm_loss"].as_f64().unwrap_or(f64::NAN),
            ));
            last_eval = Some(v);
        } else if v.get("loss").is_some() {
            last_step = Some(v);
        }
    }
    let ls = last_step
        .ok_or_else(|| Error::Input(format!("{}: no training step logged", p.display())))?;
    let f = |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v[k].as_f64());
    let wall = ls["elapsed_s"].as_f64().unwrap_or(0.0);
    let tokens = ls["tokens"].as_u64().unwrap_or(0);
    Ok(RunSummary {
        name: name.into(),
        schedule: format!("{:?}", cfg.schedule).to_lowercase(),
        steps: ls["step"].as_u64().unwrap_or(0),
        final_eval_loss: f(&last_eval, "eval_loss"),
        final_eval_mlm_loss: f(&last_eval, "eval_mlm_loss"),
        final_eval_mlm_acc: f(&last_eval, "eval_mlm_acc"),
        wall_s: wall,
        tokens,
        tokens_per_s: tokens as f64 / wall.max(1e-9),
        speedup: None,
        mlm_loss_gap: None,
        time_to_baseline_loss_s: None,
        speedup_at_baseline_loss: None,
        loss_at_baseline_time: None,
        evals,
        growth_jumps,
        downstream: None,
    })
}

/// Reads a run's downstream result (written by the ablate command) when there is one.
pub fn read_downstream(path: &Path) -> Result<Option<Downstream>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Config {
            origin: path.display().to_string(),
            field: "<document>".into(),
            msg: e.to_string(),
        })
}

/// Fills the comparisons with the baseline.
pub fn compare(runs: &mut [RunSummary], baseline: &str) {
    let Some(b) = runs.iter().find(|r| r.name == baseline).cloned() else {
        return;
    };
    let b_time = b.evals.last().map(|e| e.1);
    // when the baseline reaches its final loss (earlier than its end if its curve dips below it)
    let b_time_to_loss = b
        .final_eval_mlm_loss
        .and_then(|y| time_to_loss(&b.evals, y));
    for r in runs.iter_mut() {
        r.speedup =
            (r.steps == b.steps && r.tokens == b.tokens).then(|| b.wall_s / r.wall_s.max(1e-9));
        if let (Some(x), Some(y)) = (r.final_eval_mlm_loss, b.final_eval_mlm_loss) {
            r.mlm_loss_gap = Some(x - y);
            r.time_to_baseline_loss_s = time_to_loss(&r.evals, y);
            r.speedup_at_baseline_loss = match (b_time_to_loss, r.time_to_baseline_loss_s) {
                (Some(bt), Some(t)) if t > 0.0 => Some(bt / t),
                _ => None,
            };
        }
        r.loss_at_baseline_time = b_time.and_then(|t| loss_at_time(&r.evals, t));
    }
}

/// The wall-clock at which an eval curve `(step, elapsed_s, loss)` first reaches `target`:
/// linear interpolation between the last evaluation above it and the first at or below it (the
/// first evaluation's time when that one is already at or below).
pub fn time_to_loss(evals: &[(u64, f64, f64)], target: f64) -> Option<f64> {
    let i = evals.iter().position(|e| e.2 <= target)?;
    if i == 0 {
        return Some(evals[0].1);
    }
    let ((_, t0, l0), (_, t1, l1)) = (evals[i - 1], evals[i]);
    Some(if l0 > l1 {
        t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    } else {
        t1
    })
}

/// An eval curve's loss at wall-clock `t`, linearly interpolated between the evaluations around
/// it; `None` outside the curve's time span.
pub fn loss_at_time(evals: &[(u64, f64, f64)], t: f64) -> Option<f64> {
    let i = evals.iter().position(|e| e.1 >= t)?;
    let (_, t1, l1) = evals[i];
    if t1 == t {
        return Some(l1);
    }
    let (_, t0, l0) = *evals.get(i.checked_sub(1)?)?;
    Some(if t1 > t0 {
        l0 + (l1 - l0) * (t - t0) / (t1 - t0)
    } else {
        l1
    })
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// The summary as a Markdown table.
pub fn markdown(runs: &[RunSummary], baseline: &str) -> String {
    let mut s = format!(
        "| run | schedule | steps | final eval MLM loss | gap vs {baseline} | MLM acc | wall s | tokens/s | speedup vs {baseline} (equal steps) | eval MLM loss at {baseline}'s end time | time to {baseline}'s final loss (s) | speedup to {baseline}'s final loss |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let down = runs
        .iter()
        .find_map(|r| r.downstream.as_ref())
        .map(|d| d.task.clone());
    if let Some(task) = &down {
        s = s.replacen(
            " |\n|---|",
            &format!(" | {task} dev accuracy (mean ± std over seeds) |\n|---|---|"),
            1,
        );
    }
    for r in runs {
        let tail = match (&down, &r.downstream) {
            (Some(_), Some(d)) => format!(
                " {:.4} ± {:.4} ({} seeds) |",
                d.accuracy_mean, d.accuracy_std, d.seeds
            ),
            (Some(_), None) => " - |".into(),
            _ => String::new(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |{tail}\n",
            r.name,
            r.schedule,
            r.steps,
            opt(r.final_eval_mlm_loss, 3),
            opt(r.mlm_loss_gap, 3),
            opt(r.final_eval_mlm_acc, 3),
            r.wall_s,
            r.tokens_per_s,
            opt(r.speedup, 2),
            opt(r.loss_at_baseline_time, 3),
            opt(r.time_to_baseline_loss_s, 0),
            opt(r.speedup_at_baseline_loss, 2)
        ));
    }
    if runs.iter().any(|r| !r.growth_jumps.is_empty()) {
        s.push_str("\nEval MLM loss right after each growth minus at the end of the stage before (step: jump):\n\n");
        for r in runs.iter().filter(|r| !r.growth_jumps.is_empty()) {
            let j: Vec<String> = r
                .growth_jumps
                .iter()
                .map(|(step, d)| format!("{step}: {d:+.3}"))
                .collect();
            s.push_str(&format!("- {}: {}\n", r.name, j.join(", ")));
        }
    }
    s
}

/// A line chart as SVG: one polyline per series, axes with ticks, a legend.
pub fn svg_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 440.0, 70.0, 150.0, 40.0, 50.0);
    let pts = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| mt + (1.0 - (y - y0) / (y1 - y0)) * (h - mt - mb);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        (ml + w - mr) / 2.0
    );
    s.push_str(&format!(
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - mb, w - mr, h - mb, h - mb
    ));
    for k in 0..=5 {
        let xv = x0 + (x1 - x0) * k as f64 / 5.0;
        let yv = y0 + (y1 - y0) * k as f64 / 5.0;
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/><text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
            px(xv), h - mb, h - mb + 5.0, h - mb + 18.0, trim(xv)
        ));
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{3}\" y=\"{4}\" text-anchor=\"end\">{5:.2}</text>\n",
            ml, py(yv), w - mr, ml - 6.0, py(yv) + 4.0, yv
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\n<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{ylabel}</text>\n",
        (ml + w - mr) / 2.0, h - 12.0, (mt + h - mb) / 2.0, (mt + h - mb) / 2.0
    ));
    for (i, (name, p)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let line: Vec<String> = p
            .iter()
            .filter(|q| q.0.is_finite() && q.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        ));
        let ly = mt + 10.0 + 20.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{3}\" y=\"{4}\">{name}</text>\n",
            w - mr + 10.0, ly, w - mr + 34.0, w - mr + 40.0, ly + 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn trim(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.round() {
        format!("{:.0}", x)
    } else {
        format!("{:.2}", x)
    }
}

/// Writes summary.md, summary.json, eval_loss_vs_step.svg and eval_loss_vs_time.svg to `out`.
pub fn write_summary(out: &Path, runs: &[RunSummary], baseline: &str, note: &str) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let md = format!("# Ablation summary\n\n{note}\n\n{}\n![eval loss vs step](eval_loss_vs_step.svg)\n![eval loss vs wall-clock](eval_loss_vs_time.svg)\n", markdown(runs, baseline));
    let w = |f: &str, s: &str| crate::data::shards::write_atomic(&out.join(f), s.as_bytes());
    w("summary.md", &md)?;
    w(
        "summary.json",
        &serde_json::to_string_pretty(runs).expect("json"),
    )?;
    let by_step: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.evals.iter().map(|e| (e.0 as f64, e.2)).collect(),
            )
        })
        .collect();
    let by_time: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| (r.name.clone(), r.evals.iter().map(|e| (e.1, e.2)).collect()))
        .collect();
    w(
        "eval_loss_vs_step.svg",
        &svg_plot("eval MLM loss vs step", "step", "eval MLM loss", &by_step),
    )?;
    w(
        "eval_loss_vs_time.svg",
        &svg_plot(
            "eval MLM loss vs training wall-clock",
            "seconds",
            "eval MLM loss",
            &by_time,
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, steps: u64, wall_s: f64, evals: Vec<(u64, f64, f64)>) -> RunSummary {
        RunSummary {
            name: name.into(),
            schedule: "full".into(),
            steps,
            final_eval_loss: evals.last().map(|e| e.2),
            final_eval_mlm_loss: evals.last().map(|e| e.2),
            final_eval_mlm_acc: None,
            wall_s,
            tokens: steps,
            tokens_per_s: 1.0,
            speedup: None,
            mlm_loss_gap: None,
            time_to_baseline_loss_s: None,
            speedup_at_baseline_loss: None,
            loss_at_baseline_time: None,
            evals,
            growth_jumps: vec![],
            downstream: None,
        }
    }

    #[test]
    fn equal_time_and_equal_loss_comparisons_interpolate() {
        let curve = vec![(100, 10.0, 7.0), (200, 20.0, 6.0), (300, 30.0, 5.0)];
        assert_eq!(time_to_loss(&curve, 6.5), Some(15.0));
        assert_eq!(time_to_loss(&curve, 6.0), Some(20.0));
        assert_eq!(
            time_to_loss(&curve, 8.0),
            Some(10.0),
            "already below at the first eval"
        );
        assert_eq!(time_to_loss(&curve, 4.9), None, "never reached");
        assert_eq!(loss_at_time(&curve, 25.0), Some(5.5));
        assert_eq!(loss_at_time(&curve, 30.0), Some(5.0));
        assert_eq!(loss_at_time(&curve, 31.0), None, "the run ended before");
        assert_eq!(loss_at_time(&curve, 5.0), None, "before the first eval");

        // baseline: 200 steps, final loss 6.0 measured at 40 s; a run with twice the steps
        // reaches 6.0 at 25 s and is at 5.5 at 40 s
        let mut runs = vec![
            summary("full", 200, 41.0, vec![(100, 20.0, 6.5), (200, 40.0, 6.0)]),
            summary(
                "mslt",
                400,
                44.0,
                vec![
                    (100, 10.0, 6.8),
                    (200, 20.0, 6.2),
                    (300, 30.0, 5.8),
                    (400, 44.0, 5.4),
                ],
            ),
        ];
        compare(&mut runs, "full");
        assert_eq!(runs[0].speedup, Some(1.0));
        assert_eq!(runs[0].time_to_baseline_loss_s, Some(40.0));
        assert_eq!(runs[0].speedup_at_baseline_loss, Some(1.0));
        assert_eq!(runs[0].loss_at_baseline_time, Some(6.0));
        assert_eq!(
            runs[1].speedup, None,
            "unequal steps: no equal-steps speedup"
        );
        assert!((runs[1].time_to_baseline_loss_s.unwrap() - 25.0).abs() < 1e-12);
        assert!((runs[1].speedup_at_baseline_loss.unwrap() - 1.6).abs() < 1e-12);
        let l = runs[1].loss_at_baseline_time.unwrap();
        assert!((l - (5.8 - 0.4 * 10.0 / 14.0)).abs() < 1e-12, "{l}");
        let md = markdown(&runs, "full");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0].matches('|').count(), lines[3].matches('|').count());
        assert!(
            lines[3].starts_with("| mslt | full | 400 | 5.400 | -0.600 |"),
            "{md}"
        );
        assert!(lines[3].ends_with("| - | 5.514 | 25 | 1.60 |"), "{md}");

        // a stage-end eval and an after-growth eval at the same time: the curve is read at the
        // first of them at that time, and after it from the after-growth one
        let grown = vec![(100, 10.0, 6.0), (100, 10.0, 6.4), (200, 20.0, 5.6)];
        assert_eq!(loss_at_time(&grown, 10.0), Some(6.0));
        assert!((loss_at_time(&grown, 15.0).unwrap() - 6.0).abs() < 1e-12);
        assert_eq!(time_to_loss(&grown, 6.0), Some(10.0));
        assert!((time_to_loss(&grown, 5.8).unwrap() - 17.5).abs() < 1e-12);
        // a curve that dips below the target, rises and falls again: the first crossing counts
        let bumpy = vec![
            (100, 10.0, 6.4),
            (200, 20.0, 5.9),
            (300, 30.0, 6.1),
            (400, 40.0, 5.7),
        ];
        assert!((time_to_loss(&bumpy, 6.0).unwrap() - 18.0).abs() < 1e-12);
        // a baseline whose curve dips below its own final loss (5.9) before its end: it first
        // reaches it at 15 s, its own speedup to it is 1, and a run's is 15 s / the run's time
        let dips = vec![
            (100, 10.0, 6.4),
            (200, 20.0, 5.4),
            (300, 30.0, 6.1),
            (400, 40.0, 5.9),
        ];
        let mut runs = vec![
            summary("full", 400, 41.0, dips),
            summary(
                "mslt",
                800,
                30.0,
                vec![(100, 10.0, 6.3), (200, 20.0, 5.8), (300, 30.0, 5.6)],
            ),
            summary("short", 100, 5.0, vec![(100, 5.0, 6.5)]),
        ];
        compare(&mut runs, "full");
        assert_eq!(runs[0].speedup_at_baseline_loss, Some(1.0));
        assert!((runs[0].time_to_baseline_loss_s.unwrap() - 15.0).abs() < 1e-12);
        let t = runs[1].time_to_baseline_loss_s.unwrap();
        assert!((t - 18.0).abs() < 1e-12, "{t}");
        assert!((runs[1].speedup_at_baseline_loss.unwrap() - 15.0 / 18.0).abs() < 1e-12);
        assert_eq!(
            runs[1].loss_at_baseline_time, None,
            "ended at 30 s, before full's 40 s"
        );
        assert_eq!(runs[2].time_to_baseline_loss_s, None, "never reached 5.7");
        assert_eq!(runs[2].speedup_at_baseline_loss, None);
        // equal steps but other tokens (batch or length): no equal-steps speedup
        let mut runs = vec![
            summary("full", 100, 2.0, vec![]),
            summary("b", 100, 1.0, vec![]),
        ];
        runs[1].tokens = 200;
        compare(&mut runs, "full");
        assert_eq!((runs[0].speedup, runs[1].speedup), (Some(1.0), None));
    }

    #[test]
    fn finetune_table_parses_and_adds_a_column() {
        // (the CLI reads TOML into the same serde structs)
        let plan: Plan = serde_json::from_str(
            r#"{"out": "runs/x", "base": {"data": "d"}, "run": [{"name": "full"}],
                "finetune": {"task": ".assets/tasks/rotten-tomatoes", "seeds": 2}}"#,
        )
        .unwrap();
        let ft = plan.finetune.clone().unwrap();
        assert_eq!(
            (ft.seeds, ft.epochs, ft.batch_size, ft.max_seq_len),
            (2, 2, 32, 128)
        );
        assert_eq!(
            ft.result_path(Path::new("runs/x/full")),
            PathBuf::from("runs/x/full/finetune-rotten-tomatoes.json")
        );
        let typo = r#"{"out": "o", "run": [{"name": "a"}], "finetune": {"task": "t", "epoch": 1}}"#;
        assert!(serde_json::from_str::<Plan>(typo).is_err());
        let run = RunSummary {
            final_eval_loss: Some(6.0),
            final_eval_mlm_loss: Some(6.0),
            final_eval_mlm_acc: Some(0.1),
            tokens_per_s: 10.0,
            downstream: Some(Downstream {
                task: "rotten-tomatoes".into(),
                seeds: 2,
                accuracy_mean: 0.75,
                accuracy_std: 0.01,
                accuracy: vec![0.74, 0.76],
            }),
            ..summary("full", 10, 1.0, vec![])
        };
        let md = markdown(&[run], "full");
        let lines: Vec<&str> = md.lines().collect();
        assert!(
            lines[0].ends_with("| rotten-tomatoes dev accuracy (mean ± std over seeds) |"),
            "{md}"
        );
        assert_eq!(lines[0].matches('|').count(), lines[1].matches('|').count());
        assert!(lines[2].ends_with("0.7500 ± 0.0100 (2 seeds) |"), "{md}");
    }
}
