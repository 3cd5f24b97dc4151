//! Data pipeline for training small language models: tokenizers (HuggingFace `tokenizers`),
//! llm.c-compatible token shards, corpus preparation, and resumable batch sampling that plugs
//! into burn's `Dataset` / `Batcher`.
//!
//! ```text
//! corpus files ──prepare──▶ DIR/train_*.bin, DIR/val_*.bin ──ShardSet──▶ TrainSampler / ValWindows
//!                                                                       ──TokenBatcher──▶ TokenBatch
//! ```

pub mod batcher;
pub mod corpus;
pub mod error;
pub mod prepare;
pub mod sampler;
pub mod shard;
pub mod tokenizer;

pub use batcher::{TokenBatch, TokenBatcher};
pub use error::{DataError, Result};
pub use prepare::{PrepareOptions, PrepareSummary, prepare};
pub use sampler::{SamplerState, TrainSampler, ValWindows};
pub use shard::{Shard, ShardSet, ShardWriter, TokenDtype, write_shard};
pub use tokenizer::{EOT, Tokenizer, TrainOptions};
