//! Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay (WSD) or constant.
//! The LR is a pure function of the step, so resuming needs only the step.

use crate::config::{DecayKind, OptimSection, ScheduleSection};

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    peak: f64,
    min: f64,
    warmup: u64,
    total: u64,
    decay: DecayKind,
    decay_fraction: f64,
}

impl Schedule {
    pub fn new(optim: &OptimSection, s: &ScheduleSection, total_steps: u64) -> Self {
        Self {
            peak: optim.lr,
            min: s.min_lr,
            warmup: s.warmup_steps,
            total: total_steps,
            decay: s.decay,
            decay_fraction: s.decay_fraction,
        }
    }

    /// LR for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            // Ramp so that the first step already moves: (step + 1) / warmup.
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        match self.decay {
            DecayKind::Constant => self.peak,
            DecayKind::Cosine => {
                let span = (self.total - self.warmup).max(1) as f64;
                let progress = ((step - self.warmup) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.min + (self.peak - self.min) * cos
            }
            DecayKind::Wsd => {
                let decay_steps = ((self.total as f64 * self.decay_fraction).round() as u64).max(1);
                let decay_start = self.total.saturating_sub(decay_steps).max(self.warmup);
                if step < decay_start {
                    self.peak
                } else {
                    let span = (self.total - decay_start).max(1) as f64;
                    let progress = ((step - decay_start + 1) as f64 / span).min(1.0);
                    self.peak + (self.min - self.peak) * progress
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: DecayKind, warmup: u64) -> Schedule {
        let optim = OptimSection {
            lr: 1.0,
            ..Default::default()
        };
        let s = ScheduleSection {
            warmup_steps: warmup,
            decay,
            min_lr: 0.1,
            decay_fraction: 0.2,
        };
        Schedule::new(&optim, &s, 100)
    }

    #[test]
    fn warmup_is_linear_and_reaches_the_peak() {
        let s = sched(DecayKind::Cosine, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(4) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_ends_at_min_and_is_monotone() {
        let s = sched(DecayKind::Cosine, 10);
        let lrs: Vec<f64> = (10..=100).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        assert!((s.lr(55) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn wsd_is_flat_then_linear_to_min() {
        let s = sched(DecayKind::Wsd, 5);
        assert_eq!(s.lr(79), 1.0);
        assert!(s.lr(80) < 1.0);
        assert!((s.lr(99) - 0.1).abs() < 1e-12);
        assert_eq!(sched(DecayKind::Constant, 5).lr(99), 1.0);
    }
}
