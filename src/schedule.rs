//! Learning-rate schedules: pure functions of the optimiser step, so that a resumed run's
//! schedule is exactly where it would have been (its only state is the step counter, which
//! every checkpoint records).

use serde::{Deserialize, Serialize};

/// `training.schedule:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `constant`, `step` or `cosine`.
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0 to the base rate (all kinds).
    pub warmup_steps: u64,
    /// `step`: multiply the rate by `gamma` every `step_size` steps (as `torch.optim.lr_scheduler.StepLR`).
    pub step_size: u64,
    /// `step`: the factor.
    pub gamma: f64,
    /// `cosine`: the rate at the last step.
    pub min_lr: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_steps: 0, step_size: 1000, gamma: 0.1, min_lr: 0.0 }
    }
}

/// The schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base rate throughout (after warm-up).
    Constant,
    /// Multiplied by `gamma` every `step_size` steps after warm-up.
    Step,
    /// Half a cosine from the base rate down to `min_lr` over the steps after warm-up.
    Cosine,
}

impl ScheduleConfig {
    /// The learning rate for optimiser step `step` (0-based: the rate the first step uses is
    /// `lr_at(0, ..)`), given the base rate and the run's total number of steps.
    pub fn lr_at(&self, step: u64, base: f64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = step - self.warmup_steps;
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => base * self.gamma.powi((t / self.step_size.max(1)) as i32),
            ScheduleKind::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = (t as f64 / span as f64).min(1.0);
                self.min_lr + 0.5 * (base - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }

    /// The schedule and its position, as recorded in checkpoint metadata.
    pub fn state(&self, step: u64, base: f64, total_steps: u64) -> serde_json::Value {
        serde_json::json!({
            "config": self,
            "base_lr": base,
            "total_steps": total_steps,
            "step": step,
            "lr": self.lr_at(step, base, total_steps),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn constant_is_the_base_rate() {
        let s = ScheduleConfig::default();
        assert_eq!(s.lr_at(0, 0.1, 100), 0.1);
        assert_eq!(s.lr_at(99, 0.1, 100), 0.1);
    }

    #[test]
    fn warmup_rises_linearly_to_the_base_rate() {
        let s = ScheduleConfig { warmup_steps: 4, ..Default::default() };
        let lrs: Vec<f64> = (0..6).map(|t| s.lr_at(t, 1.0, 100)).collect();
        assert_eq!(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn step_decays_by_gamma_every_step_size() {
        let s = ScheduleConfig { kind: ScheduleKind::Step, step_size: 10, gamma: 0.5, ..Default::default() };
        assert_eq!(s.lr_at(9, 0.8, 100), 0.8);
        assert_eq!(s.lr_at(10, 0.8, 100), 0.4);
        assert_eq!(s.lr_at(25, 0.8, 100), 0.2);
    }

    #[test]
    fn cosine_goes_from_base_through_midpoint_to_min() {
        let s = ScheduleConfig { kind: ScheduleKind::Cosine, warmup_steps: 10, min_lr: 0.1, ..Default::default() };
        assert!(close(s.lr_at(10, 1.0, 110), 1.0));
        assert!(close(s.lr_at(60, 1.0, 110), 0.55));
        assert!(close(s.lr_at(110, 1.0, 110), 0.1));
        assert!(close(s.lr_at(500, 1.0, 110), 0.1));
        assert!(close(s.lr_at(4, 1.0, 110), 0.5));
    }
}
