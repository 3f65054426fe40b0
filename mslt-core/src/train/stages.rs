//! Training schedules as a list of stages over one `--steps` budget:
//!
//! - `full`: one stage, the target depth from scratch, everything trains.
//! - `stack` (Progressive Stacking 1.0, Gong et al. 2019): depth grows through `stages` by copying
//!   the stack (`copy-stack`), every layer keeps training.
//! - `mslt` (Progressively Stacking 2.0, Yang et al. 2020): depth grows through `stages` (new
//!   layers initialised by `init`, default `copy-top`); in every stage after the first only the
//!   new top layers and the heads train (plus the embeddings with `train_embeddings`), the lower
//!   layers are frozen and run forward only; an optional final joint stage
//!   (`final_joint_frac`) trains everything at full depth. `train_old_layers` = j also keeps the
//!   top j layers of the previous stage training (the method's "also the top j old layers"
//!   reading; 0, the default, trains only the new ones).
//!
//! Steps per stage: equal shares of the budget left after the joint stage, an explicit list
//! (`stage_steps`) or a list of fractions of that budget (`stage_fracs`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Full,
    Stack,
    Mslt,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "stack" => Ok(Self::Stack),
            "mslt" => Ok(Self::Mslt),
            _ => Err(format!("`{s}`: expected full, stack or mslt")),
        }
    }
}

/// One stage of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    pub index: usize,
    /// Model depth during the stage.
    pub depth: usize,
    /// First (0-based) global step of the stage.
    pub start: u64,
    pub steps: u64,
    /// Encoder layers `>= train_from_layer` train; lower ones are frozen (forward only).
    pub train_from_layer: usize,
    pub train_embeddings: bool,
    /// The final joint stage of `mslt` (everything trains at full depth).
    pub joint: bool,
}

impl Stage {
    pub fn end(&self) -> u64 {
        self.start + self.steps
    }

    /// Does parameter `name` (HF name) train in this stage? The heads (pooler, MLM, NSP) always do.
    pub fn trains(&self, name: &str) -> bool {
        if name.starts_with("bert.embeddings.") {
            return self.train_embeddings;
        }
        if let Some(rest) = name.strip_prefix("bert.encoder.layer.") {
            let i: usize = rest
                .split('.')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(usize::MAX);
            return i >= self.train_from_layer;
        }
        true
    }
}

/// What a schedule needs from the run config.
#[derive(Clone, Debug, Default)]
pub struct ScheduleSpec<'a> {
    pub kind: ScheduleKind,
    pub target_depth: usize,
    pub steps: u64,
    /// Depth after each stage (empty: the default for the kind).
    pub stages: &'a [usize],
    /// Steps of each depth stage (empty: equal shares).
    pub stage_steps: &'a [u64],
    /// Fraction of the depth stages' budget for each stage (empty: see `stage_steps`); they
    /// must add up to 1. Exclusive with `stage_steps`.
    pub stage_fracs: &'a [f64],
    pub final_joint_frac: f64,
    pub train_embeddings: bool,
    /// mslt: the top `train_old_layers` layers of the previous stage keep training in each
    /// stage after the first (0: only the new layers train).
    pub train_old_layers: usize,
}

/// Splits `budget` steps by `fracs` (each > 0, adding up to 1 within 1e-6): floor of each share,
/// then the steps left over go one each to the largest remainders (ties: the earlier stage), so
/// the result adds up to `budget` exactly.
pub fn split_by_fractions(budget: u64, fracs: &[f64]) -> Result<Vec<u64>> {
    if let Some(f) = fracs.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
        return Err(err(
            "stage_fracs",
            format!("{f} is not a positive fraction"),
        ));
    }
    let sum: f64 = fracs.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(err(
            "stage_fracs",
            format!("{fracs:?} add up to {sum}, expected 1"),
        ));
    }
    // Shares in units of 1e-9 step, rounded: float noise (0.1 x 14 = 1.4000000000000001) must
    // neither move a floor nor break a tie between equal remainders.
    const UNIT: f64 = 1e9;
    let exact: Vec<u128> = fracs
        .iter()
        .map(|f| (f / sum * budget as f64 * UNIT).round() as u128)
        .collect();
    let unit = UNIT as u128;
    let mut steps: Vec<u64> = exact.iter().map(|x| (x / unit) as u64).collect();
    let left = budget.saturating_sub(steps.iter().sum());
    let mut order: Vec<usize> = (0..fracs.len()).collect();
    order.sort_by(|&a, &b| (exact[b] % unit).cmp(&(exact[a] % unit)).then(a.cmp(&b)));
    for &i in order.iter().cycle().take(left as usize) {
        steps[i] += 1;
    }
    Ok(steps)
}

fn err(field: &str, msg: String) -> Error {
    Error::Config {
        origin: "schedule".into(),
        field: field.into(),
        msg,
    }
}

/// Default stage depths: 4 equal growth steps for mslt (3, 6, 9, 12 for 12 layers), doubling
/// for stack (3, 6, 12).
fn default_depths(kind: ScheduleKind, l: usize) -> Result<Vec<usize>> {
    match kind {
        ScheduleKind::Full => Ok(vec![l]),
        ScheduleKind::Mslt if l.is_multiple_of(4) => Ok(vec![l / 4, l / 2, 3 * l / 4, l]),
        ScheduleKind::Stack if l.is_multiple_of(4) => Ok(vec![l / 4, l / 2, l]),
        _ => Err(err(
            "stages",
            format!(
                "no default stages for {l} layers: give --stages (increasing depths ending at {l})"
            ),
        )),
    }
}

/// Builds the stage list and checks it.
pub fn plan(spec: &ScheduleSpec) -> Result<Vec<Stage>> {
    let l = spec.target_depth;
    let depths = if spec.kind == ScheduleKind::Full {
        if !spec.stages.is_empty() && spec.stages != [l] {
            return Err(err(
                "stages",
                "the full schedule has one stage at the model depth; drop --stages".into(),
            ));
        }
        vec![l]
    } else if spec.stages.is_empty() {
        default_depths(spec.kind, l)?
    } else {
        spec.stages.to_vec()
    };
    if depths.first() == Some(&0) {
        return Err(err(
            "stages",
            "the first stage needs at least one layer".into(),
        ));
    }
    if depths.windows(2).any(|w| w[1] <= w[0]) {
        return Err(err(
            "stages",
            format!("{depths:?} is not strictly increasing"),
        ));
    }
    if depths.last() != Some(&l) {
        return Err(err(
            "stages",
            format!(
                "the last stage has {} layers but the model has {l}",
                depths.last().copied().unwrap_or(0)
            ),
        ));
    }
    let joint_frac = if spec.kind == ScheduleKind::Mslt {
        spec.final_joint_frac
    } else {
        0.0
    };
    if !(0.0..1.0).contains(&joint_frac) {
        return Err(err(
            "final_joint_frac",
            format!("{joint_frac} is outside [0, 1)"),
        ));
    }
    let joint = (joint_frac * spec.steps as f64).round() as u64;
    let budget = spec.steps - joint;
    if spec.train_old_layers > 0 && spec.kind != ScheduleKind::Mslt {
        return Err(err(
            "train_old_layers",
            format!(
                "is an mslt knob (the {} schedule trains every layer)",
                format!("{:?}", spec.kind).to_lowercase()
            ),
        ));
    }
    if !spec.stage_fracs.is_empty() && !spec.stage_steps.is_empty() {
        return Err(err(
            "stage_fracs",
            "give stage_steps or stage_fracs, not both".into(),
        ));
    }
    let steps: Vec<u64> = if !spec.stage_fracs.is_empty() {
        if spec.stage_fracs.len() != depths.len() {
            return Err(err(
                "stage_fracs",
                format!(
                    "{} values for {} stages",
                    spec.stage_fracs.len(),
                    depths.len()
                ),
            ));
        }
        split_by_fractions(budget, spec.stage_fracs)?
    } else if spec.stage_steps.is_empty() {
        let n = depths.len() as u64;
        (0..n)
            .map(|i| budget / n + u64::from(i < budget % n))
            .collect()
    } else {
        if spec.stage_steps.len() != depths.len() {
            return Err(err(
                "stage_steps",
                format!(
                    "{} values for {} stages",
                    spec.stage_steps.len(),
                    depths.len()
                ),
            ));
        }
        let sum: u64 = spec.stage_steps.iter().sum();
        if sum != budget {
            return Err(err(
                "stage_steps",
                format!("they add up to {sum}, but the stages have {budget} steps (--steps {} minus {joint} joint)", spec.steps),
            ));
        }
        spec.stage_steps.to_vec()
    };
    if let Some(i) = steps.iter().position(|&s| s == 0) {
        let fix = if spec.stage_fracs.is_empty() {
            "raise --steps or give --stage-steps"
        } else {
            "raise --steps or its fraction"
        };
        return Err(err("steps", format!("stage {i} would get 0 steps; {fix}")));
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, (&depth, &n)) in depths.iter().zip(&steps).enumerate() {
        let frozen_below = match spec.kind {
            ScheduleKind::Mslt if i > 0 => depths[i - 1].saturating_sub(spec.train_old_layers),
            _ => 0,
        };
        out.push(Stage {
            index: i,
            depth,
            start,
            steps: n,
            train_from_layer: frozen_below,
            // the first stage (and full / stack) trains the embeddings; later mslt stages only
            // with `train_embeddings`, even when `train_old_layers` unfreezes every old layer
            train_embeddings: i == 0 || spec.kind != ScheduleKind::Mslt || spec.train_embeddings,
            joint: false,
        });
        start += n;
    }
    if joint > 0 {
        out.push(Stage {
            index: out.len(),
            depth: l,
            start,
            steps: joint,
            train_from_layer: 0,
            train_embeddings: true,
            joint: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ScheduleKind, stages: &'static [usize], steps: u64) -> ScheduleSpec<'static> {
        ScheduleSpec {
            kind,
            target_depth: 12,
            steps,
            stages,
            final_joint_frac: 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn mslt_default_plan() {
        let p = plan(&spec(ScheduleKind::Mslt, &[], 1000)).unwrap();
        let d: Vec<(usize, u64, u64, usize, bool)> = p
            .iter()
            .map(|s| (s.depth, s.start, s.steps, s.train_from_layer, s.joint))
            .collect();
        assert_eq!(
            d,
            vec![
                (3, 0, 225, 0, false),
                (6, 225, 225, 3, false),
                (9, 450, 225, 6, false),
                (12, 675, 225, 9, false),
                (12, 900, 100, 0, true)
            ]
        );
        assert!(p[0].train_embeddings && !p[1].train_embeddings && p[4].train_embeddings);
        assert!(p[1].trains("cls.predictions.bias") && p[1].trains("bert.pooler.dense.weight"));
        assert!(p[1].trains("bert.encoder.layer.3.output.dense.weight"));
        assert!(!p[1].trains("bert.encoder.layer.2.output.dense.weight"));
        assert!(!p[1].trains("bert.embeddings.word_embeddings.weight"));
    }

    #[test]
    fn stack_and_full() {
        let p = plan(&spec(ScheduleKind::Stack, &[], 90)).unwrap();
        assert_eq!(
            p.iter()
                .map(|s| (s.depth, s.steps, s.train_from_layer))
                .collect::<Vec<_>>(),
            vec![(3, 30, 0), (6, 30, 0), (12, 30, 0)]
        );
        let f = plan(&spec(ScheduleKind::Full, &[], 90)).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (
                f[0].depth,
                f[0].steps,
                f[0].train_from_layer,
                f[0].train_embeddings
            ),
            (12, 90, 0, true)
        );
    }

    #[test]
    fn bad_plans_are_rejected_by_field() {
        let e = |s: ScheduleSpec| plan(&s).unwrap_err().to_string();
        assert!(e(spec(ScheduleKind::Mslt, &[6, 3, 12], 100)).contains("not strictly increasing"));
        assert!(e(spec(ScheduleKind::Mslt, &[3, 6, 9], 100))
            .contains("last stage has 9 layers but the model has 12"));
        let s = ScheduleSpec {
            stage_steps: &[10, 10],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        assert!(e(s).contains("add up to 20, but the stages have 90 steps"));
        let s = ScheduleSpec {
            stage_steps: &[10],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        assert!(e(s).contains("1 values for 2 stages"));
        assert!(e(spec(ScheduleKind::Mslt, &[], 3)).contains("0 steps"));
        let s = ScheduleSpec {
            target_depth: 6,
            ..spec(ScheduleKind::Mslt, &[], 100)
        };
        assert!(e(s).contains("no default stages for 6 layers"));
    }

    #[test]
    fn train_old_layers_keeps_the_top_old_layers_training() {
        let s = ScheduleSpec {
            train_old_layers: 2,
            ..spec(ScheduleKind::Mslt, &[], 1000)
        };
        let p = plan(&s).unwrap();
        let d: Vec<(usize, usize, bool)> = p
            .iter()
            .map(|s| (s.depth, s.train_from_layer, s.train_embeddings))
            .collect();
        // 3 -> 6 -> 9 -> 12: each later stage trains its 3 new layers and the 2 below them
        assert_eq!(
            d,
            vec![
                (3, 0, true),
                (6, 1, false),
                (9, 4, false),
                (12, 7, false),
                (12, 0, true)
            ]
        );
        assert!(p[2].trains("bert.encoder.layer.4.attention.self.query.weight"));
        assert!(!p[2].trains("bert.encoder.layer.3.attention.self.query.weight"));
        // more old layers than there are: every layer trains, the embeddings stay frozen
        let s = ScheduleSpec {
            train_old_layers: 5,
            ..spec(ScheduleKind::Mslt, &[], 1000)
        };
        let p = plan(&s).unwrap();
        assert_eq!((p[1].train_from_layer, p[1].train_embeddings), (0, false));
        assert!(!p[1].trains("bert.embeddings.word_embeddings.weight"));
        assert!(p[1].trains("bert.encoder.layer.0.output.dense.weight"));
        // only mslt freezes layers, so only mslt takes the knob
        let s = ScheduleSpec {
            train_old_layers: 1,
            ..spec(ScheduleKind::Stack, &[], 90)
        };
        assert!(plan(&s)
            .unwrap_err()
            .to_string()
            .contains("train_old_layers"));
    }

    #[test]
    fn stage_fractions_split_the_budget_exactly() {
        assert_eq!(
            split_by_fractions(900, &[0.2, 0.3, 0.5]).unwrap(),
            vec![180, 270, 450]
        );
        // 100 / 3 each: 33 + 33 + 33, the one left goes to the first of the equal remainders
        let third = 1.0 / 3.0;
        assert_eq!(
            split_by_fractions(100, &[third; 3]).unwrap(),
            vec![34, 33, 33]
        );
        // 0.15 x 7 = 1.05, 0.35 x 7 = 2.45, 0.5 x 7 = 3.5: floors 1 + 2 + 3, the largest
        // remainder (0.5) gets the step left
        assert_eq!(
            split_by_fractions(7, &[0.15, 0.35, 0.5]).unwrap(),
            vec![1, 2, 4]
        );
        let s = ScheduleSpec {
            stage_fracs: &[0.1, 0.2, 0.3, 0.4],
            ..spec(ScheduleKind::Mslt, &[], 1000)
        };
        let p = plan(&s).unwrap();
        assert_eq!(
            p.iter().map(|s| s.steps).collect::<Vec<_>>(),
            vec![90, 180, 270, 360, 100]
        );
        let e = |s: ScheduleSpec| plan(&s).unwrap_err().to_string();
        let s = ScheduleSpec {
            stage_fracs: &[0.5, 0.6],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        let m = e(s);
        assert!(m.contains("add up to 1.1"), "{m}");
        let s = ScheduleSpec {
            stage_fracs: &[1.0, 0.0],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        assert!(e(s).contains("0 is not a positive fraction"));
        let s = ScheduleSpec {
            stage_fracs: &[1.0],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        assert!(e(s).contains("1 values for 2 stages"));
        let s = ScheduleSpec {
            stage_fracs: &[0.5, 0.5],
            stage_steps: &[45, 45],
            ..spec(ScheduleKind::Mslt, &[6, 12], 100)
        };
        assert!(e(s).contains("not both"));
    }
}
