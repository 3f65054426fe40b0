//! Learning-rate schedules as pure functions: linear warm-up, then linear or cosine decay to
//! `min_lr_ratio * peak`, or constant.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            "constant" => Ok(Self::Constant),
            _ => Err(format!("`{s}`: expected linear, cosine or constant")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// The learning rate of (0-based) `step`: warm-up reaches `peak` at step `warmup_steps`.
    pub fn lr(&self, step: u64) -> f64 {
        assert!(self.total_steps > 0 && step < self.total_steps.max(1) + 1);
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let min = self.peak * self.min_lr_ratio;
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => min + (self.peak - min) * (1.0 - t),
            Decay::Cosine => {
                min + (self.peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule {
            peak: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            decay: Decay::Linear,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-12);
        assert!((s.lr(109) - 1.09e-4).abs() < 1e-12);
        let c = LrSchedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!((c.lr(60) - 5.5e-4).abs() < 1e-12);
        assert!(c.lr(100) > s.lr(100) - 1e-3);
        let k = LrSchedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(k.lr(100), 1e-3);
        for st in 0..110 {
            assert!(s.lr(st) > 0.0 && s.lr(st) <= 1e-3);
        }
    }
}
