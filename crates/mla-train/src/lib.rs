//! Training, evaluation and tooling for the `mla` command: run configs, the training loop,
//! checkpoints, metrics, and HuggingFace interop.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod eval;
pub mod hf;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::RunConfig;
pub use error::{ConfigError, TrainError};
