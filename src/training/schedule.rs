//! Learning-rate schedules with linear warm-up, as the `transformers` schedulers of the same
//! names (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`).

use serde::{Deserialize, Serialize};

/// The shape after warm-up (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Stay at the peak.
    Constant,
    /// Fall linearly to zero at the last step (the `transformers` and TRL default).
    Linear,
    /// Follow half a cosine to zero at the last step.
    Cosine,
}

/// A schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warm-up from 0.
    pub warmup_steps: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
}

impl LrSchedule {
    /// Warm-up as a fraction of the total, rounded up as `transformers` does.
    pub fn new(kind: ScheduleKind, peak: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        Self {
            kind,
            peak,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps: total_steps.max(1),
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.peak * factor.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        let s = LrSchedule::new(ScheduleKind::Cosine, 1.0, 0.05, 100);
        assert_eq!(s.warmup_steps, 5);
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(5) - 1.0).abs() < 1e-12);
        assert!(
            (s.at(52) - 0.5 * (1.0 + (std::f64::consts::PI * 47.0 / 95.0).cos())).abs() < 1e-12
        );
        assert!(s.at(100) < 1e-12);
    }

    #[test]
    fn linear_and_constant_match_transformers() {
        // get_linear_schedule_with_warmup(opt, 2, 10): lr_lambda(s) = s/2 then (10 − s)/8.
        let s = LrSchedule::new(ScheduleKind::Linear, 2.0, 0.2, 10);
        let expected = [0.0, 0.5, 1.0, 7.0 / 8.0, 6.0 / 8.0, 5.0 / 8.0];
        for (step, e) in expected.iter().enumerate() {
            assert!((s.at(step) - 2.0 * e).abs() < 1e-12, "step {step}");
        }
        assert_eq!(s.at(10), 0.0);
        let c = LrSchedule::new(ScheduleKind::Constant, 3.0, 0.0, 10);
        assert_eq!((c.at(0), c.at(9)), (3.0, 3.0));
    }
}
