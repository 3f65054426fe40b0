//! Training schedules as a list of stages over one `--steps` budget:
//!
//! - `full`: one stage, the target depth from scratch, everything trains.
//! - `stack` (Progressive Stacking 1.0, Gong et al. 2019): depth grows through `stages` by copying
//!   the stack (`copy-stack`), every layer keeps training.
//! - `mslt` (Progressively Stacking 2.0, Yang et al. 2020): depth grows through `stages` (new
//!   layers initialised by `init`, default `copy-top`); in every stage after the first only the
//!   new top layers and the heads train (plus the embeddings with `train_embeddings`), the lower
//!   layers are frozen and run forward only; an optional final joint stage
//!   (`final_joint_frac`) trains everything at full depth.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
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
#[derive(Clone, Debug)]
pub struct ScheduleSpec<'a> {
    pub kind: ScheduleKind,
    pub target_depth: usize,
    pub steps: u64,
    /// Depth after each stage (empty: the default for the kind).
    pub stages: &'a [usize],
    /// Steps of each depth stage (empty: equal shares).
    pub stage_steps: &'a [u64],
    pub final_joint_frac: f64,
    pub train_embeddings: bool,
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
    let steps: Vec<u64> = if spec.stage_steps.is_empty() {
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
        return Err(err(
            "steps",
            format!("stage {i} would get 0 steps; raise --steps or give --stage-steps"),
        ));
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, (&depth, &n)) in depths.iter().zip(&steps).enumerate() {
        let frozen_below = match spec.kind {
            ScheduleKind::Mslt if i > 0 => depths[i - 1],
            _ => 0,
        };
        out.push(Stage {
            index: i,
            depth,
            start,
            steps: n,
            train_from_layer: frozen_below,
            train_embeddings: frozen_below == 0 || spec.train_embeddings,
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
            stage_steps: &[],
            final_joint_frac: 0.1,
            train_embeddings: false,
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
}
