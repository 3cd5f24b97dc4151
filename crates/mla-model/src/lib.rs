//! A decoder-only transformer LM whose attention is DeepSeek-V2's multi-head latent attention
//! (MLA) or one of the MHA / GQA / MQA baselines, with decoupled RoPE, latent KV caches and
//! weight absorption for decoding.

pub mod accounting;
pub mod attention;
pub mod block;
pub mod cache;
pub mod config;
pub mod convert;
pub mod cpu;
// The libtorch route of the fused ops names burn-tch, deprecated in burn 0.22 but our libtorch
// path (see mla-train's device.rs); the dispatch code the extension macro generates cannot carry
// a narrower allow.
#[allow(deprecated)]
pub mod fused;
pub mod hf;
pub mod init;
pub mod linear;
pub mod mlp;
pub mod rope;
pub mod transformer;

pub use accounting::{CacheMode, FlopsPerToken, KvCacheSize, ParamCounts};
pub use cache::KvCache;
pub use config::{
    AttentionConfig, AttentionKind, CONTEXT_FIELDS, ConfigError, DType, InitScheme,
    LatentAttention, ModelConfig, ModelSection, PartialRope, RopeStyle, StandardAttention,
    YarnConfig,
};
pub use transformer::{Lm, cross_entropy};
