//! Typed errors of the trainer library. The CLI adds context with anyhow at the edge.

use std::path::PathBuf;

// The errors below carry their cause in their own message rather than as a `source()`, as
// mla-data's do, so that the CLI's `{:#}` (message, then every source) says it once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("--set {assignment}: {message}")]
    Override { assignment: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] mla_data::DataError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error(
        "loss became {loss} at step {step}; stopped. {}",
        match .last_good {
            Some(p) => format!("The last good checkpoint is {} (resume with --resume, e.g. with a lower optim.lr)", p.display()),
            None => "No checkpoint was written before it; lower optim.lr or raise schedule.warmup_steps".to_string(),
        }
    )]
    NonFinite {
        step: u64,
        loss: f32,
        last_good: Option<PathBuf>,
    },
    #[error("{0}")]
    Other(String),
}

pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrainError {
    let context = context.into();
    move |cause| TrainError::Io { context, cause }
}
