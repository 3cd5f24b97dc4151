//! A decoder-only transformer LM whose attention is DeepSeek-V2's multi-head latent attention
//! (MLA) or one of the MHA / GQA / MQA baselines, with decoupled RoPE, latent KV caches and
//! weight absorption for decoding.

pub mod accounting;
pub mod config;

pub use accounting::{CacheMode, FlopsPerToken, KvCacheSize, ParamCounts};
pub use config::{
    AttentionConfig, AttentionKind, ConfigError, DType, LatentAttention, ModelConfig,
    ModelSection, RopeStyle, StandardAttention, YarnConfig,
};
