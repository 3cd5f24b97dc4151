//! The run's expected duration, said once a few steps in, so that whoever started it knows at
//! once whether to wait for it (the progress bar's ETA is not there when stderr is not a
//! terminal, and moves about).
//!
//! The first step is left out of the timing: it allocates the optimizer state and warms the
//! kernels. Evaluations are estimated from the measured step time, one evaluation batch
//! costing a third of a training micro-batch (forward only, against forward + backward).

use std::time::{Duration, Instant};

use crate::compare::human_count;

/// Steps timed before the estimate is said, unless [`SAY_AFTER`] passes first.
const TIMED_STEPS: u64 = 5;
/// Say the estimate after this long even when fewer steps were timed (slow steps).
const SAY_AFTER: Duration = Duration::from_secs(20);

/// What is left to run, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub max_steps: u64,
    pub tokens_per_step: u64,
    /// Micro-batches each rank runs per step.
    pub micro_batches_per_step: u64,
    /// The evaluations, when there is validation data.
    pub evals: Option<Evals>,
}

/// `[eval]`: every how many steps (0: only at the end) and the batches of one evaluation each
/// rank runs.
#[derive(Clone, Copy, Debug)]
pub struct Evals {
    pub every: u64,
    pub batches: u64,
}

impl Evals {
    /// Evaluations after `step`: at multiples of `every` still ahead, and the final one unless
    /// the last step is such a multiple.
    fn after(&self, step: u64, max_steps: u64) -> u64 {
        if step >= max_steps {
            return 0;
        }
        if self.every == 0 {
            return 1;
        }
        let ahead = max_steps / self.every - step / self.every;
        ahead + u64::from(!max_steps.is_multiple_of(self.every))
    }
}

impl Plan {
    /// Seconds from the end of `step` to the end of the run, at `step_s` per training step.
    pub fn remaining_s(&self, step: u64, step_s: f64) -> f64 {
        let steps = self.max_steps.saturating_sub(step);
        let eval_batches = self
            .evals
            .map_or(0, |e| e.after(step, self.max_steps) * e.batches);
        let micro_s = step_s / self.micro_batches_per_step.max(1) as f64;
        steps as f64 * step_s + eval_batches as f64 * micro_s / 3.0
    }

    /// The line said: `expected: 8.7 min more (594 steps at 4.8K tokens/s, with evaluations)`.
    pub fn line(&self, step: u64, step_s: f64) -> String {
        let left = self.remaining_s(step, step_s);
        let rate = self.tokens_per_step as f64 / step_s.max(1e-9);
        let evals = if self.evals.is_some() {
            ", with evaluations"
        } else {
            ""
        };
        format!(
            "expected: {} more ({} steps at {} tokens/s{evals})",
            duration(left),
            self.max_steps.saturating_sub(step),
            human_count(rate)
        )
    }
}

/// Times the steps after the first and says the estimate once.
pub struct Eta {
    plan: Plan,
    /// The step after which timing began, and when.
    from: Option<(u64, Instant)>,
    said: bool,
}

impl Eta {
    pub fn new(plan: Plan) -> Self {
        Self {
            plan,
            from: None,
            said: false,
        }
    }

    /// Called after each step; returns the line to say, once.
    pub fn after_step(&mut self, step: u64) -> Option<String> {
        if self.said {
            return None;
        }
        let Some((from, since)) = self.from else {
            self.from = Some((step, Instant::now()));
            return None;
        };
        let timed = step - from;
        if step >= self.plan.max_steps {
            self.said = true;
            return None;
        }
        let elapsed = since.elapsed();
        if timed < TIMED_STEPS && elapsed < SAY_AFTER {
            return None;
        }
        self.said = true;
        let step_s = elapsed.as_secs_f64() / timed as f64;
        Some(self.plan.line(step, step_s))
    }
}

fn duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else if secs < 5400.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn main_job() -> Plan {
        // The main job's shape at 600 steps: 2 micro-batches of 8 x 256 tokens, eval every 100
        // steps over 20 batches.
        Plan {
            max_steps: 600,
            tokens_per_step: 4096,
            micro_batches_per_step: 2,
            evals: Some(Evals {
                every: 100,
                batches: 20,
            }),
        }
    }

    #[test]
    fn remaining_time_counts_steps_and_evaluations_ahead() {
        let p = main_job();
        // After step 6 at 1 s a step: 594 steps + 6 evaluations (100, ..., 600) of 20 batches,
        // each a third of a 0.5 s micro-batch.
        let expect = 594.0 + 6.0 * 20.0 * 0.5 / 3.0;
        assert!((p.remaining_s(6, 1.0) - expect).abs() < 1e-9);
        // After step 100 its evaluation is behind (it ran in that step's iteration).
        assert!((p.remaining_s(100, 1.0) - (500.0 + 5.0 * 20.0 * 0.5 / 3.0)).abs() < 1e-9);
        // A last step off the eval grid gets the final evaluation too.
        let odd = Plan {
            max_steps: 250,
            ..p
        };
        assert!((odd.remaining_s(0, 1.0) - (250.0 + 3.0 * 20.0 * 0.5 / 3.0)).abs() < 1e-9);
        let at_end = Plan {
            evals: Some(Evals {
                every: 0,
                batches: 20,
            }),
            ..p
        };
        assert!((at_end.remaining_s(590, 1.0) - (10.0 + 20.0 * 0.5 / 3.0)).abs() < 1e-9);
        assert_eq!(at_end.remaining_s(600, 1.0), 0.0);
        let none = Plan { evals: None, ..p };
        assert_eq!(none.remaining_s(590, 2.0), 20.0);
        assert_eq!(none.remaining_s(600, 2.0), 0.0);
    }

    #[test]
    fn the_line_names_time_steps_and_rate() {
        let p = main_job();
        assert_eq!(
            p.line(6, 0.85),
            "expected: 8.7 min more (594 steps at 4.8K tokens/s, with evaluations)"
        );
        let quick = Plan {
            evals: None,
            max_steps: 20,
            tokens_per_step: 512,
            ..p
        };
        assert_eq!(
            quick.line(6, 2.0),
            "expected: 28 s more (14 steps at 256 tokens/s)"
        );
        assert_eq!(duration(7200.0), "2.0 h");
    }

    #[test]
    fn said_once_after_the_timed_steps_never_for_the_last() {
        let mut eta = Eta::new(main_job());
        // Step 1 starts the clock; steps 2-5 are too few.
        for step in 1..=5 {
            assert_eq!(eta.after_step(step), None, "step {step}");
        }
        assert!(eta.after_step(6).is_some());
        assert_eq!(eta.after_step(7), None);

        // A run that ends within the timed steps says nothing.
        let mut short = Eta::new(Plan {
            max_steps: 3,
            ..main_job()
        });
        assert!((1..=3).all(|s| short.after_step(s).is_none()));
    }
}
