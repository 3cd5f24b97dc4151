//! Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a plain `kill`, SLURM preemption,
//! torchrun shutting its workers down) both ask the trainer to stop after the current step with
//! a checkpoint; a second signal exits at once. Under torchrun the request of any rank reaches
//! all of them with the step's gradients (see `dist`), so they stop at the same step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Which signal asked the run to stop, if any; shared with the signal handlers.
#[derive(Clone, Debug, Default)]
pub struct StopSignal {
    requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopSignal {
    /// A flag no signal sets (library callers and tests set it with [`Self::request`]).
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// A flag that SIGINT and SIGTERM set; the second of either exits at once with status
    /// 128 + signal, without a checkpoint.
    pub fn install() -> std::io::Result<StopSignal> {
        let stop = StopSignal::new();
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so that it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(
                sig,
                128 + sig,
                stop.requested.clone(),
            )?;
            signal_hook::flag::register_usize(sig, stop.signal.clone(), sig as usize)?;
            signal_hook::flag::register(sig, stop.requested.clone())?;
        }
        Ok(stop)
    }

    /// Ask for a stop as `signal` would.
    pub fn request(&self, signal: i32) {
        self.signal.store(signal as usize, Ordering::SeqCst);
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The signal's name, e.g. "SIGTERM" (None until one arrived).
    pub fn signal_name(&self) -> Option<&'static str> {
        if !self.is_requested() {
            return None;
        }
        Some(match self.signal.load(Ordering::SeqCst) as i32 {
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT (Ctrl-C)",
            _ => "a stop request",
        })
    }

    /// The exit status a run stopped this way ends with: 128 + signal, as a shell reports a
    /// process the signal killed (130 for Ctrl-C, 143 for SIGTERM); 1 for other requests.
    pub fn exit_code(&self) -> u8 {
        match self.signal.load(Ordering::SeqCst) as i32 {
            s @ (SIGINT | SIGTERM) => 128 + s as u8,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_signal_and_exit_code() {
        let stop = StopSignal::new();
        assert!(!stop.is_requested());
        assert_eq!(stop.signal_name(), None);
        stop.request(SIGTERM);
        assert!(stop.is_requested());
        assert_eq!(stop.signal_name(), Some("SIGTERM"));
        assert_eq!(stop.exit_code(), 143);
        let ctrl_c = StopSignal::new();
        ctrl_c.request(SIGINT);
        assert_eq!(ctrl_c.exit_code(), 130);
        let clone = ctrl_c.clone();
        assert!(clone.is_requested(), "clones share the flag");
    }
}
