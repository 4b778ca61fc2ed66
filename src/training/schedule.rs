//! Cosine learning-rate schedule with linear warm-up (the `transformers` scheduler
//! `get_cosine_schedule_with_warmup`).

use serde::{Deserialize, Serialize};

/// Warm up linearly over `warmup_steps`, then follow half a cosine to zero at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
}

impl CosineSchedule {
    /// Warm-up as a fraction of the total, rounded up as `transformers` does.
    pub fn with_warmup_ratio(peak: f64, ratio: f64, total_steps: usize) -> Self {
        Self {
            peak,
            warmup_steps: (ratio * total_steps as f64).ceil() as usize,
            total_steps: total_steps.max(1),
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = (self.total_steps - self.warmup_steps.min(self.total_steps)).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = CosineSchedule::with_warmup_ratio(1.0, 0.05, 100);
        assert_eq!(s.warmup_steps, 5);
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(5) - 1.0).abs() < 1e-12);
        assert!(
            (s.at(52) - 0.5 * (1.0 + (std::f64::consts::PI * 47.0 / 95.0).cos())).abs() < 1e-12
        );
        assert!(s.at(100) < 1e-12);
    }
}
