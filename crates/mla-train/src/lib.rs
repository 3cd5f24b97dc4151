//! Training, evaluation and tooling for the `mla` command: run configs, the training loop,
//! checkpoints, metrics, and HuggingFace interop.

pub mod ablate;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod device;
pub mod dist;
pub mod error;
pub mod eta;
pub mod eval;
pub mod figure;
pub mod generate;
pub mod generate_batch;
pub mod hf;
pub mod lock;
pub mod metrics;
pub mod optim;
pub mod precision;
pub mod prompts;
pub mod resources;
pub mod schedule;
pub mod stop;
pub mod trainer;

pub use config::RunConfig;
pub use error::{ConfigError, TrainError};
