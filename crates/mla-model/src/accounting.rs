//! Model accounting as pure functions of the config: parameters, KV cache, training FLOPs.
//!
//! Tests check these against the built module and the tensors a cache actually holds, so the
//! formulas here are the single source of truth for `mla inspect`, `mla compare` and MFU.

use serde::{Deserialize, Serialize};

use crate::config::{AttentionConfig, ModelConfig};

/// Parameter counts by component. `total` is the sum of the others and equals the number of
/// scalars in the built module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Token embedding (`embed_tokens`).
    pub embedding: usize,
    /// Output head (`lm_head`); 0 when tied to the embedding.
    pub lm_head: usize,
    /// All attention weights of all layers, including MLA's `q_a_layernorm`/`kv_a_layernorm`.
    pub attention: usize,
    /// All SwiGLU MLP weights.
    pub mlp: usize,
    /// Block and final RMSNorm gains.
    pub norm: usize,
    pub total: usize,
}

impl ParamCounts {
    /// Parameters that take part in matrix multiplies (everything but the embedding lookup and
    /// norm gains; the head counts even when tied, since its matmul still runs).
    pub fn matmul(&self, cfg: &ModelConfig) -> usize {
        self.attention - self.attention_norm_params(cfg) + self.mlp + cfg.vocab_size * cfg.d_model
    }

    fn attention_norm_params(&self, cfg: &ModelConfig) -> usize {
        match cfg.attention {
            AttentionConfig::Standard(_) => 0,
            AttentionConfig::Latent(l) => {
                cfg.n_layers * (l.kv_lora_rank + l.q_lora_rank.unwrap_or(0))
            }
        }
    }
}

/// Attention parameters of one layer.
pub fn attention_params_per_layer(cfg: &ModelConfig) -> usize {
    let d = cfg.d_model;
    let h = cfg.n_heads;
    match cfg.attention {
        AttentionConfig::Standard(a) => {
            let q = d * h * a.head_dim;
            let kv = 2 * d * a.n_kv_heads * a.head_dim;
            let o = h * a.head_dim * d;
            q + kv + o
        }
        AttentionConfig::Latent(l) => {
            let q = match l.q_lora_rank {
                // q_a_proj + q_a_layernorm + q_b_proj
                Some(r) => d * r + r + r * h * l.qk_head_dim(),
                None => d * h * l.qk_head_dim(),
            };
            let kv_a = d * (l.kv_lora_rank + l.qk_rope_head_dim) + l.kv_lora_rank;
            let kv_b = l.kv_lora_rank * h * (l.qk_nope_head_dim + l.v_head_dim);
            let o = h * l.v_head_dim * d;
            q + kv_a + kv_b + o
        }
    }
}

pub fn param_counts(cfg: &ModelConfig) -> ParamCounts {
    let embedding = cfg.vocab_size * cfg.d_model;
    let lm_head = if cfg.tie_embeddings { 0 } else { embedding };
    let attention = cfg.n_layers * attention_params_per_layer(cfg);
    let mlp = cfg.n_layers * 3 * cfg.d_model * cfg.d_ff;
    let norm = (2 * cfg.n_layers + 1) * cfg.d_model;
    ParamCounts {
        embedding,
        lm_head,
        attention,
        mlp,
        norm,
        total: embedding + lm_head + attention + mlp + norm,
    }
}

/// What a generation cache stores for MLA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// MLA: the normed latent plus the shared rotary key per token, decoded with absorbed
    /// weights. For mha/gqa/mqa the only mode: full K and V.
    Latent,
    /// MLA: decompressed per-head K and V, as a plain MHA would cache (for comparison).
    Naive,
}

/// KV-cache size per token. Elements are counted at any precision; bytes at the model dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KvCacheSize {
    pub elements_per_token_per_layer: usize,
    pub bytes_per_token_per_layer: usize,
    pub elements_per_token: usize,
    pub bytes_per_token: usize,
}

impl KvCacheSize {
    fn new(cfg: &ModelConfig, per_layer: usize) -> Self {
        let b = cfg.dtype.bytes();
        Self {
            elements_per_token_per_layer: per_layer,
            bytes_per_token_per_layer: per_layer * b,
            elements_per_token: per_layer * cfg.n_layers,
            bytes_per_token: per_layer * cfg.n_layers * b,
        }
    }
}

/// DeepSeek-V2 Table 1: MHA `2 n_h d_h`, GQA `2 n_g d_h`, MQA `2 d_h`, MLA `d_c + d_h^R`
/// elements per token per layer.
pub fn kv_cache(cfg: &ModelConfig, mode: CacheMode) -> KvCacheSize {
    let per_layer = match (cfg.attention, mode) {
        (AttentionConfig::Standard(a), _) => 2 * a.n_kv_heads * a.head_dim,
        (AttentionConfig::Latent(l), CacheMode::Latent) => l.kv_lora_rank + l.qk_rope_head_dim,
        (AttentionConfig::Latent(l), CacheMode::Naive) => {
            cfg.n_heads * (l.qk_head_dim() + l.v_head_dim)
        }
    };
    KvCacheSize::new(cfg, per_layer)
}

/// The cache of an MHA model with the same layers, heads and per-head dim d_h (for MLA d_h is
/// `qk_nope_head_dim`, the paper's d_h), used for the "x of MHA" ratio.
pub fn kv_cache_mha_reference(cfg: &ModelConfig) -> KvCacheSize {
    let d_h = match cfg.attention {
        AttentionConfig::Standard(a) => a.head_dim,
        AttentionConfig::Latent(l) => l.qk_nope_head_dim,
    };
    KvCacheSize::new(cfg, 2 * cfg.n_heads * d_h)
}

/// Training FLOPs per token (forward + backward = 3 x forward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlopsPerToken {
    /// `6 N`, N = matmul parameters ([`ParamCounts::matmul`]).
    pub dense: u64,
    /// `6 l n_h T (d_qk + d_v)`: QK^T and AV over a context of T tokens (PaLM's 12 l n_h d_h T
    /// for MHA). T is the full sequence length, not halved for the causal mask, as PaLM counts.
    pub attention: u64,
    pub total: u64,
}

pub fn flops_per_token(cfg: &ModelConfig, seq_len: usize) -> FlopsPerToken {
    let n = param_counts(cfg).matmul(cfg) as u64;
    let dense = 6 * n;
    let attention = 6
        * cfg.n_layers as u64
        * cfg.n_heads as u64
        * seq_len as u64
        * (cfg.qk_head_dim() + cfg.v_head_dim()) as u64;
    FlopsPerToken {
        dense,
        attention,
        total: dense + attention,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn v2_lite_caches_576_elements_per_token_per_layer() {
        let cfg = ModelConfig::preset("deepseek-v2-lite-attn").unwrap();
        let kv = kv_cache(&cfg, CacheMode::Latent);
        assert_eq!(kv.elements_per_token_per_layer, 576);
        assert_eq!(kv.bytes_per_token_per_layer, 1152);
        assert_eq!(kv.elements_per_token, 576 * 27);
        let mha = kv_cache_mha_reference(&cfg);
        assert_eq!(mha.elements_per_token_per_layer, 4096);
        let twin = ModelConfig::preset("deepseek-v2-lite-mha").unwrap();
        assert_eq!(kv_cache(&twin, CacheMode::Latent), mha);
    }

    #[test]
    fn table_1_formulas() {
        let base = "vocab_size = 10\nd_model = 64\nn_layers = 3\nn_heads = 8\nmax_seq_len = 8\n";
        let per_layer = |extra: &str| {
            let s: crate::config::ModelSection = toml::from_str(&format!("{base}{extra}")).unwrap();
            kv_cache(&s.resolve().unwrap(), CacheMode::Latent).elements_per_token_per_layer
        };
        assert_eq!(per_layer("attention = 'mha'"), 2 * 8 * 8);
        assert_eq!(per_layer("attention = 'gqa'\nn_kv_heads = 2"), 2 * 2 * 8);
        assert_eq!(per_layer("attention = 'mqa'"), 2 * 8);
        assert_eq!(
            per_layer("attention = 'mla'\nkv_lora_rank = 32\nqk_rope_head_dim = 4"),
            32 + 4
        );
    }

    #[test]
    fn flops_reduce_to_palm_for_mha() {
        let cfg = ModelConfig::preset("gpt2-small-mha").unwrap();
        let f = flops_per_token(&cfg, 1024);
        let (l, h, d) = (12u64, 12u64, 64u64);
        assert_eq!(f.attention, 12 * l * h * d * 1024);
        let p = param_counts(&cfg);
        // Tied head: the embedding matrix is counted once in params, once in matmul FLOPs.
        assert_eq!(p.lm_head, 0);
        assert_eq!(f.dense, 6 * (p.attention + p.mlp + p.embedding) as u64);
    }
}
