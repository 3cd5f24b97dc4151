//! The `[model]` section of a run config, validated into a resolved [`ModelConfig`].
//!
//! [`ModelSection`] is the plain serde struct read from TOML: every key optional, so that a
//! named preset can supply the rest. [`ModelSection::resolve`] fills defaults, checks every
//! constraint and returns a [`ModelConfig`] in which each attention family carries only the
//! dimensions it uses. [`ModelConfig::to_section`] writes it back out fully explicit, which is
//! what a run directory and a checkpoint store.

use serde::{Deserialize, Serialize};

/// Which attention a model uses. `mha`, `gqa` and `mqa` share one module and differ only in the
/// number of key/value heads; `mla` is DeepSeek-V2's multi-head latent attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    Mha,
    Gqa,
    Mqa,
    Mla,
}

impl AttentionKind {
    pub const ALL: [AttentionKind; 4] = [Self::Mla, Self::Mha, Self::Gqa, Self::Mqa];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mha => "mha",
            Self::Gqa => "gqa",
            Self::Mqa => "mqa",
            Self::Mla => "mla",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How RoPE pairs the dimensions it rotates.
///
/// - `interleaved` (default): pairs `(x[2i], x[2i+1])`, as DeepSeek-V2 checkpoints and the
///   original RoFormer do. HF's `DeepseekV2` uses this.
/// - `half`: pairs `(x[i], x[i + d/2])` ("rotate-half", GPT-NeoX / HF Llama).
///
/// Both give the same model family; they differ by a fixed permutation of the q/k projection
/// rows, which export applies where the target format expects the other convention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    #[default]
    Interleaved,
    Half,
}

/// Storage precision of weights and of the KV cache at inference. Training compute precision is
/// the trainer's `[train] dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Bf16,
}

impl DType {
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// YaRN context extension, with the keys DeepSeek-V2's `rope_scaling` uses.
///
/// The rotary frequencies are interpolated between the original and the `factor`-stretched
/// ones by a linear ramp over `[beta_slow, beta_fast]` rotations; the cos/sin tables are scaled
/// by `mscale(factor, mscale) / mscale(factor, mscale_all_dim)`, and when `mscale_all_dim` is
/// set the softmax scale is multiplied by `mscale(factor, mscale_all_dim)^2`, where
/// `mscale(s, m) = 0.1 * m * ln(s) + 1` for `s > 1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YarnConfig {
    /// Must be `"yarn"`; kept so the table reads like HF's `rope_scaling`.
    #[serde(rename = "type", default = "yarn_type")]
    pub kind: String,
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "default_one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
}

fn yarn_type() -> String {
    "yarn".into()
}
fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}
fn default_one() -> f64 {
    1.0
}

impl YarnConfig {
    /// `yarn_get_mscale` of the DeepSeek-V2 reference.
    pub fn get_mscale(scale: f64, mscale: f64) -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * mscale * scale.ln() + 1.0
        }
    }

    /// Factor on the cos/sin tables.
    pub fn attention_factor(&self) -> f64 {
        Self::get_mscale(self.factor, self.mscale)
            / Self::get_mscale(self.factor, self.mscale_all_dim)
    }

    /// Factor on the softmax scale (`mscale^2`, or 1 without `mscale_all_dim`).
    pub fn softmax_factor(&self) -> f64 {
        if self.mscale_all_dim != 0.0 {
            let m = Self::get_mscale(self.factor, self.mscale_all_dim);
            m * m
        } else {
            1.0
        }
    }
}

/// How weights are initialised (`[model] init`); see [`crate::init`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// GPT-2 / torchtitan: N(0, init_std^2) (default std 0.02), the residual-facing output
    /// projections (`o_proj`, `down_proj`) scaled down by sqrt(2 * n_layers).
    #[default]
    Gpt2,
    /// DeepSeek-V2 (arXiv:2405.04434, section 3.1.2): every weight N(0, init_std^2) with
    /// default std 0.006, no depth scaling.
    Deepseek,
}

impl InitScheme {
    pub fn default_std(self) -> f64 {
        match self {
            Self::Gpt2 => 0.02,
            Self::Deepseek => 0.006,
        }
    }
}

/// Partial RoPE as MHA2MLA (arXiv:2502.14837) defines it: rotary position on some frequency
/// pairs only, the other dims carrying none. Written by `mla convert`.
///
/// The frequencies are those of a `dim`-wide RoPE (`rope_theta`, and YaRN where configured,
/// computed at that width): entry `p` of `pairs` stands for frequency `theta^(-2p/dim)`.
/// - mha/gqa/mqa (`dim` = `head_dim`): `pairs` holds `k` pairs for each key/value head,
///   head-major; head `g` rotates its pairs `pairs[g*k..(g+1)*k]` and leaves the rest of its
///   dims unrotated (query heads follow their key/value head).
/// - mla: pair `i` of the rope slice (`qk_rope_head_dim / 2` of them) turns at the frequency
///   of `pairs[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialRope {
    pub dim: usize,
    pub pairs: Vec<usize>,
}

/// The `[model]` TOML section as written by a user: every key optional so that `preset` can
/// supply the rest. See [`ModelSection::resolve`] for defaults and checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Start from a named preset ([`PRESETS`]); keys given here override it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionKind>,
    /// Left out: the trainer takes it from the tokenizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_model: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_heads: Option<usize>,
    /// mha/gqa/mqa: key/value heads (mha: = n_heads, mqa: 1, gqa: required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// mha/gqa/mqa: per-head dimension (default d_model / n_heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// mla: rank of the query compression; 0 or absent = plain `q_proj` (as V2-Lite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_lora_rank: Option<usize>,
    /// mla: latent width d_c (default 4 * d_h, d_h = d_model / n_heads, as the paper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_lora_rank: Option<usize>,
    /// mla: per-head query/key width without position (default d_h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qk_nope_head_dim: Option<usize>,
    /// mla: width of the decoupled rotary query/key (default d_h / 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qk_rope_head_dim: Option<usize>,
    /// mla: per-head value width (default d_h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v_head_dim: Option<usize>,
    /// SwiGLU hidden width (default 8/3 * d_model rounded up to a multiple of 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_style: Option<RopeStyle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<YarnConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_embeddings: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// Std of the normal init (default: the scheme's, 0.02 for gpt2, 0.006 for deepseek).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f64>,
    /// Init scheme: `gpt2` (default) or `deepseek` (see [`InitScheme`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<InitScheme>,
    /// Partial RoPE (see [`PartialRope`]); absent = every pair of the rotated dims turns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rope: Option<PartialRope>,
}

/// A `[model]` key that failed validation, and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model.{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

/// Dimensions of the standard attention family (mha, gqa, mqa).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandardAttention {
    pub kind: AttentionKind,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Dimensions of DeepSeek-V2 multi-head latent attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatentAttention {
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

impl LatentAttention {
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionConfig {
    Standard(StandardAttention),
    Latent(LatentAttention),
}

/// A validated model configuration: every value concrete and consistent.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub attention: AttentionConfig,
    pub d_ff: usize,
    pub max_seq_len: usize,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub rope_scaling: Option<YarnConfig>,
    pub tie_embeddings: bool,
    pub dtype: DType,
    pub rms_norm_eps: f64,
    pub init_std: f64,
    pub init: InitScheme,
    pub partial_rope: Option<PartialRope>,
}

/// The `[model]` fields a context extension changes: a fine-tune (or an evaluation) may load
/// weights into a model that differs from theirs in these only.
pub const CONTEXT_FIELDS: [&str; 3] = ["max_seq_len", "rope_scaling", "rope_theta"];

impl ModelConfig {
    pub fn kind(&self) -> AttentionKind {
        match self.attention {
            AttentionConfig::Standard(s) => s.kind,
            AttentionConfig::Latent(_) => AttentionKind::Mla,
        }
    }

    /// Width of the rotated query/key slice.
    pub fn rope_dim(&self) -> usize {
        match self.attention {
            AttentionConfig::Standard(s) => s.head_dim,
            AttentionConfig::Latent(l) => l.qk_rope_head_dim,
        }
    }

    /// Width of one query/key head (the softmax is scaled by its inverse square root).
    pub fn qk_head_dim(&self) -> usize {
        match self.attention {
            AttentionConfig::Standard(s) => s.head_dim,
            AttentionConfig::Latent(l) => l.qk_head_dim(),
        }
    }

    /// Width of one value head.
    pub fn v_head_dim(&self) -> usize {
        match self.attention {
            AttentionConfig::Standard(s) => s.head_dim,
            AttentionConfig::Latent(l) => l.v_head_dim,
        }
    }

    /// Softmax scale: 1/sqrt(qk head dim), times YaRN's mscale^2 where configured.
    pub fn softmax_scale(&self) -> f64 {
        let base = 1.0 / (self.qk_head_dim() as f64).sqrt();
        base * self
            .rope_scaling
            .as_ref()
            .map_or(1.0, YarnConfig::softmax_factor)
    }

    /// The fully explicit `[model]` section for this config (no preset), which resolves back
    /// to an equal config.
    pub fn to_section(&self) -> ModelSection {
        let mut s = ModelSection {
            preset: None,
            attention: Some(self.kind()),
            vocab_size: Some(self.vocab_size),
            d_model: Some(self.d_model),
            n_layers: Some(self.n_layers),
            n_heads: Some(self.n_heads),
            d_ff: Some(self.d_ff),
            max_seq_len: Some(self.max_seq_len),
            rope_theta: Some(self.rope_theta),
            rope_style: Some(self.rope_style),
            rope_scaling: self.rope_scaling.clone(),
            tie_embeddings: Some(self.tie_embeddings),
            dtype: Some(self.dtype),
            rms_norm_eps: Some(self.rms_norm_eps),
            init_std: Some(self.init_std),
            init: Some(self.init),
            partial_rope: self.partial_rope.clone(),
            ..Default::default()
        };
        match self.attention {
            AttentionConfig::Standard(a) => {
                s.n_kv_heads = Some(a.n_kv_heads);
                s.head_dim = Some(a.head_dim);
            }
            AttentionConfig::Latent(l) => {
                s.q_lora_rank = Some(l.q_lora_rank.unwrap_or(0));
                s.kv_lora_rank = Some(l.kv_lora_rank);
                s.qk_nope_head_dim = Some(l.qk_nope_head_dim);
                s.qk_rope_head_dim = Some(l.qk_rope_head_dim);
                s.v_head_dim = Some(l.v_head_dim);
            }
        }
        s
    }

    /// Named preset, resolved.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        ModelSection {
            preset: Some(name.to_string()),
            ..Default::default()
        }
        .resolve()
    }

    /// Names of the fields that differ between two configs (for architecture-mismatch errors).
    pub fn differing_fields(&self, other: &ModelConfig) -> Vec<String> {
        let a = self.to_section();
        let b = other.to_section();
        let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
            (toml::Value::try_from(&a), toml::Value::try_from(&b))
        else {
            return vec!["<unserialisable>".into()];
        };
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show =
                    |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
                format!("{k}: {} vs {}", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }

    /// The fields in which `self` differs from `source`, split into those a context extension
    /// may change ([`CONTEXT_FIELDS`]) and all others, each as `field: source vs self`.
    pub fn context_extension_of(&self, source: &ModelConfig) -> (Vec<String>, Vec<String>) {
        source.differing_fields(self).into_iter().partition(|f| {
            CONTEXT_FIELDS
                .iter()
                .any(|k| f.starts_with(&format!("{k}: ")))
        })
    }
}

/// Named starting points for `[model] preset = "..."`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "deepseek-v2-lite-attn",
        "DeepSeek-V2-Lite's attention and dense MLP dims (MLA, no query compression, YaRN x40)",
    ),
    (
        "deepseek-v2-lite-mha",
        "the MHA twin of deepseek-v2-lite-attn: 16 heads of 128 dims, same everything else",
    ),
    ("tiny-mla", "a 2-layer, d_model 64 MLA model for tests"),
    ("tiny-mha", "a 2-layer, d_model 64 MHA model for tests"),
    ("gpt2-small-mla", "~125M parameters, GPT-2 small shape, MLA"),
    ("gpt2-small-mha", "~125M parameters, GPT-2 small shape, MHA"),
];

fn preset_section(name: &str) -> Option<ModelSection> {
    let v2_lite = ModelSection {
        vocab_size: Some(102400),
        d_model: Some(2048),
        n_layers: Some(27),
        n_heads: Some(16),
        d_ff: Some(10944),
        max_seq_len: Some(163840),
        rope_theta: Some(10000.0),
        rope_style: Some(RopeStyle::Interleaved),
        rope_scaling: Some(YarnConfig {
            kind: "yarn".into(),
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 0.707,
            mscale_all_dim: 0.707,
        }),
        tie_embeddings: Some(false),
        dtype: Some(DType::Bf16),
        ..Default::default()
    };
    let tiny = ModelSection {
        vocab_size: Some(256),
        d_model: Some(64),
        n_layers: Some(2),
        n_heads: Some(4),
        d_ff: Some(192),
        max_seq_len: Some(64),
        ..Default::default()
    };
    let gpt2 = ModelSection {
        vocab_size: Some(50304),
        d_model: Some(768),
        n_layers: Some(12),
        n_heads: Some(12),
        d_ff: Some(2048),
        max_seq_len: Some(1024),
        tie_embeddings: Some(true),
        ..Default::default()
    };
    let s = match name {
        "deepseek-v2-lite-attn" => ModelSection {
            attention: Some(AttentionKind::Mla),
            q_lora_rank: Some(0),
            kv_lora_rank: Some(512),
            qk_nope_head_dim: Some(128),
            qk_rope_head_dim: Some(64),
            v_head_dim: Some(128),
            ..v2_lite
        },
        "deepseek-v2-lite-mha" => ModelSection {
            attention: Some(AttentionKind::Mha),
            head_dim: Some(128),
            ..v2_lite
        },
        "tiny-mla" => ModelSection {
            attention: Some(AttentionKind::Mla),
            q_lora_rank: Some(32),
            kv_lora_rank: Some(32),
            qk_nope_head_dim: Some(16),
            qk_rope_head_dim: Some(8),
            v_head_dim: Some(16),
            ..tiny
        },
        "tiny-mha" => ModelSection {
            attention: Some(AttentionKind::Mha),
            ..tiny
        },
        "gpt2-small-mla" => ModelSection {
            attention: Some(AttentionKind::Mla),
            q_lora_rank: Some(0),
            kv_lora_rank: Some(256),
            qk_nope_head_dim: Some(64),
            qk_rope_head_dim: Some(32),
            v_head_dim: Some(64),
            ..gpt2
        },
        "gpt2-small-mha" => ModelSection {
            attention: Some(AttentionKind::Mha),
            ..gpt2
        },
        _ => return None,
    };
    Some(s)
}

macro_rules! overlay {
    ($base:ident, $over:ident: $($field:ident),*) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field.clone(); } )*
    };
}

impl ModelSection {
    /// This section with its preset (if any) filled in underneath the keys given here.
    pub fn with_preset(&self) -> Result<ModelSection, ConfigError> {
        let Some(name) = &self.preset else {
            return Ok(self.clone());
        };
        let mut base = preset_section(name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            err(
                "preset",
                format!(
                    "unknown preset {name:?}; choose one of {}",
                    names.join(", ")
                ),
            )
        })?;
        let over = self;
        overlay!(base, over: attention, vocab_size, d_model, n_layers, n_heads, n_kv_heads,
            head_dim, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim,
            d_ff, max_seq_len, rope_theta, rope_style, rope_scaling, tie_embeddings, dtype,
            rms_norm_eps, init_std, init, partial_rope);
        // A switch of attention family drops the preset's keys of the other family.
        if over.attention.is_some() {
            let mla = over.attention == Some(AttentionKind::Mla);
            if mla {
                base.n_kv_heads = over.n_kv_heads;
                base.head_dim = over.head_dim;
            } else {
                base.q_lora_rank = over.q_lora_rank;
                base.kv_lora_rank = over.kv_lora_rank;
                base.qk_nope_head_dim = over.qk_nope_head_dim;
                base.qk_rope_head_dim = over.qk_rope_head_dim;
                base.v_head_dim = over.v_head_dim;
            }
        }
        base.preset = None;
        Ok(base)
    }

    /// Remove the keys that belong to the other attention family than this section's
    /// `attention` (its preset's, when it sets none) and return their names. A run config
    /// whose `attention` is switched from the command line (`--set model.attention=mha` on an
    /// MLA recipe) still holds the MLA keys, which [`resolve`](Self::resolve) refuses, and
    /// `--set` cannot remove a key: the trainer sets them aside this way and says which.
    /// Unknown keys never get here (the section denies them), so a typo stays an error.
    pub fn set_aside_other_family(&mut self) -> Vec<&'static str> {
        let kind = match self.with_preset() {
            Ok(full) => full.attention,
            Err(_) => None, // `resolve` reports the bad preset
        };
        let Some(kind) = kind else {
            return vec![];
        };
        let mut dropped = vec![];
        let mut take = |name: &'static str, v: &mut Option<usize>| {
            if v.take().is_some() {
                dropped.push(name);
            }
        };
        if kind == AttentionKind::Mla {
            take("n_kv_heads", &mut self.n_kv_heads);
            take("head_dim", &mut self.head_dim);
        } else {
            take("q_lora_rank", &mut self.q_lora_rank);
            take("kv_lora_rank", &mut self.kv_lora_rank);
            take("qk_nope_head_dim", &mut self.qk_nope_head_dim);
            take("qk_rope_head_dim", &mut self.qk_rope_head_dim);
            take("v_head_dim", &mut self.v_head_dim);
        }
        dropped
    }

    /// Fill defaults and validate. Every error names the offending key and says how to fix it.
    pub fn resolve(&self) -> Result<ModelConfig, ConfigError> {
        let s = self.with_preset()?;
        let attention = s.attention.ok_or_else(|| {
            err(
                "attention",
                "missing; set attention = \"mla\", \"mha\", \"gqa\" or \"mqa\"",
            )
        })?;
        let positive = |key: &'static str, v: Option<usize>| -> Result<usize, ConfigError> {
            match v {
                None => Err(err(key, "missing; give a positive integer")),
                Some(0) => Err(err(key, "must be positive, got 0")),
                Some(v) => Ok(v),
            }
        };
        let vocab_size = match s.vocab_size {
            None => {
                return Err(err(
                    "vocab_size",
                    "missing; give it, or let the trainer take it from the tokenizer",
                ));
            }
            v => positive("vocab_size", v)?,
        };
        let d_model = positive("d_model", s.d_model)?;
        let n_layers = positive("n_layers", s.n_layers)?;
        let n_heads = positive("n_heads", s.n_heads)?;
        let max_seq_len = positive("max_seq_len", s.max_seq_len)?;
        let default_head_dim = || -> Result<usize, ConfigError> {
            if d_model % n_heads != 0 {
                Err(err(
                    "n_heads",
                    format!(
                        "{n_heads} heads do not divide d_model = {d_model}; choose n_heads \
                         dividing d_model or set the per-head dims explicitly"
                    ),
                ))
            } else {
                Ok(d_model / n_heads)
            }
        };
        let even = |key: &'static str, v: usize| -> Result<usize, ConfigError> {
            if v % 2 == 1 {
                Err(err(
                    key,
                    format!("RoPE rotates pairs of dims, so it must be even, got {v}"),
                ))
            } else {
                Ok(v)
            }
        };

        let mla_keys: [(&'static str, Option<usize>); 5] = [
            ("q_lora_rank", s.q_lora_rank),
            ("kv_lora_rank", s.kv_lora_rank),
            ("qk_nope_head_dim", s.qk_nope_head_dim),
            ("qk_rope_head_dim", s.qk_rope_head_dim),
            ("v_head_dim", s.v_head_dim),
        ];
        let attention = match attention {
            AttentionKind::Mla => {
                for (key, v) in [("n_kv_heads", s.n_kv_heads), ("head_dim", s.head_dim)] {
                    if v.is_some() {
                        return Err(err(
                            key,
                            "is not used with attention = \"mla\" (each head gets its own \
                             decompressed K/V; see qk_nope_head_dim, qk_rope_head_dim, \
                             v_head_dim); remove it",
                        ));
                    }
                }
                let d_h = || default_head_dim();
                let nope = match s.qk_nope_head_dim {
                    Some(v) => positive("qk_nope_head_dim", Some(v))?,
                    None => d_h()?,
                };
                let rope = match s.qk_rope_head_dim {
                    Some(v) => positive("qk_rope_head_dim", Some(v))?,
                    None => (d_h()? / 2).max(2),
                };
                let rope = even("qk_rope_head_dim", rope)?;
                let v = match s.v_head_dim {
                    Some(v) => positive("v_head_dim", Some(v))?,
                    None => d_h()?,
                };
                let kv_lora_rank = match s.kv_lora_rank {
                    Some(v) => positive("kv_lora_rank", Some(v))?,
                    None => 4 * d_h()?,
                };
                AttentionConfig::Latent(LatentAttention {
                    q_lora_rank: s.q_lora_rank.filter(|&r| r > 0),
                    kv_lora_rank,
                    qk_nope_head_dim: nope,
                    qk_rope_head_dim: rope,
                    v_head_dim: v,
                })
            }
            kind => {
                for (key, v) in mla_keys {
                    if v.is_some() {
                        return Err(err(
                            key,
                            format!(
                                "is only used with attention = \"mla\", not \"{kind}\"; remove it"
                            ),
                        ));
                    }
                }
                let head_dim = match s.head_dim {
                    Some(v) => positive("head_dim", Some(v))?,
                    None => default_head_dim()?,
                };
                let head_dim = even("head_dim", head_dim)?;
                let n_kv_heads = match (kind, s.n_kv_heads) {
                    (AttentionKind::Mha, None) => n_heads,
                    (AttentionKind::Mha, Some(k)) if k == n_heads => k,
                    (AttentionKind::Mha, Some(k)) => {
                        return Err(err(
                            "n_kv_heads",
                            format!(
                                "attention = \"mha\" has n_kv_heads = n_heads = {n_heads}, got \
                                 {k}; use attention = \"gqa\" for fewer key/value heads"
                            ),
                        ));
                    }
                    (AttentionKind::Mqa, None | Some(1)) => 1,
                    (AttentionKind::Mqa, Some(k)) => {
                        return Err(err(
                            "n_kv_heads",
                            format!(
                                "attention = \"mqa\" has one key/value head, got {k}; use \
                                 attention = \"gqa\""
                            ),
                        ));
                    }
                    (_, None) => {
                        return Err(err(
                            "n_kv_heads",
                            "missing; attention = \"gqa\" needs the number of key/value heads",
                        ));
                    }
                    (_, Some(k)) => positive("n_kv_heads", Some(k))?,
                };
                if n_kv_heads > n_heads || n_heads % n_kv_heads != 0 {
                    return Err(err(
                        "n_kv_heads",
                        format!(
                            "{n_kv_heads} key/value heads must divide n_heads = {n_heads} so \
                             that each group of query heads shares one"
                        ),
                    ));
                }
                AttentionConfig::Standard(StandardAttention {
                    kind,
                    n_kv_heads,
                    head_dim,
                })
            }
        };
        let d_ff = match s.d_ff {
            Some(v) => positive("d_ff", Some(v))?,
            None => (8 * d_model).div_ceil(3).div_ceil(64) * 64,
        };
        let rope_theta = s.rope_theta.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(err(
                "rope_theta",
                format!("must be a finite number > 1, got {rope_theta}"),
            ));
        }
        if let Some(y) = &s.rope_scaling {
            if y.kind != "yarn" {
                return Err(err(
                    "rope_scaling",
                    format!("type {:?} is not supported; only \"yarn\"", y.kind),
                ));
            }
            if !(y.factor.is_finite() && y.factor >= 1.0) {
                return Err(err(
                    "rope_scaling",
                    format!("factor must be >= 1, got {}", y.factor),
                ));
            }
            if y.original_max_position_embeddings == 0 {
                return Err(err(
                    "rope_scaling",
                    "original_max_position_embeddings must be positive",
                ));
            }
            if !(y.beta_fast > y.beta_slow && y.beta_slow > 0.0) {
                return Err(err(
                    "rope_scaling",
                    format!(
                        "needs beta_fast > beta_slow > 0, got {} and {}",
                        y.beta_fast, y.beta_slow
                    ),
                ));
            }
        }
        let rms_norm_eps = s.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(err(
                "rms_norm_eps",
                format!("must be positive, got {rms_norm_eps}"),
            ));
        }
        let init = s.init.unwrap_or_default();
        let init_std = s.init_std.unwrap_or(init.default_std());
        if !(init_std.is_finite() && init_std > 0.0) {
            return Err(err("init_std", format!("must be positive, got {init_std}")));
        }
        if let Some(p) = &s.partial_rope {
            check_partial_rope(p, &attention)?;
        }
        Ok(ModelConfig {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            attention,
            d_ff,
            max_seq_len,
            rope_theta,
            rope_style: s.rope_style.unwrap_or_default(),
            rope_scaling: s.rope_scaling,
            tie_embeddings: s.tie_embeddings.unwrap_or(false),
            dtype: s.dtype.unwrap_or_default(),
            rms_norm_eps,
            init_std,
            init,
            partial_rope: s.partial_rope,
        })
    }
}

fn check_partial_rope(p: &PartialRope, attention: &AttentionConfig) -> Result<(), ConfigError> {
    let key = "partial_rope";
    if p.dim == 0 || p.dim % 2 == 1 {
        return Err(err(
            key,
            format!("dim must be even and positive, got {}", p.dim),
        ));
    }
    if let Some(&bad) = p.pairs.iter().find(|&&i| i >= p.dim / 2) {
        return Err(err(
            key,
            format!(
                "pair {bad} is out of range: a {}-wide RoPE has pairs 0..{}",
                p.dim,
                p.dim / 2
            ),
        ));
    }
    match *attention {
        AttentionConfig::Latent(l) => {
            if p.pairs.len() * 2 != l.qk_rope_head_dim {
                return Err(err(
                    key,
                    format!(
                        "gives {} pairs but the rope slice (qk_rope_head_dim = {}) has {}",
                        p.pairs.len(),
                        l.qk_rope_head_dim,
                        l.qk_rope_head_dim / 2
                    ),
                ));
            }
        }
        AttentionConfig::Standard(a) => {
            if p.dim != a.head_dim {
                return Err(err(
                    key,
                    format!("dim must equal head_dim = {} for {}", a.head_dim, a.kind),
                ));
            }
            let kv = a.n_kv_heads;
            if p.pairs.is_empty() || !p.pairs.len().is_multiple_of(kv) {
                return Err(err(
                    key,
                    format!(
                        "needs the same positive number of pairs for each of the {kv} key/value \
                         heads, got {} pairs",
                        p.pairs.len()
                    ),
                ));
            }
            let k = p.pairs.len() / kv;
            for head in p.pairs.chunks(k) {
                let mut sorted = head.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != k {
                    return Err(err(key, format!("a head lists a pair twice: {head:?}")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_src: &str) -> ModelSection {
        toml::from_str(toml_src).unwrap()
    }

    #[test]
    fn every_preset_resolves_and_round_trips() {
        for (name, _) in PRESETS {
            let cfg = ModelConfig::preset(name).unwrap();
            let text = toml::to_string(&cfg.to_section()).unwrap();
            let back: ModelSection = toml::from_str(&text).unwrap();
            assert_eq!(back.resolve().unwrap(), cfg, "{name}");
        }
    }

    #[test]
    fn defaults_follow_the_paper_ratios() {
        let cfg = section("attention = 'mla'\nvocab_size = 100\nd_model = 256\nn_layers = 2\nn_heads = 4\nmax_seq_len = 32")
            .resolve()
            .unwrap();
        let AttentionConfig::Latent(l) = cfg.attention else {
            panic!("not mla")
        };
        // d_h = 64: d_c = 4 d_h, d_h^R = d_h / 2.
        assert_eq!(
            (
                l.kv_lora_rank,
                l.qk_nope_head_dim,
                l.qk_rope_head_dim,
                l.v_head_dim
            ),
            (256, 64, 32, 64)
        );
        assert_eq!(l.q_lora_rank, None);
        assert_eq!(cfg.d_ff, 704);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let base = "vocab_size = 100\nd_model = 64\nn_layers = 2\nmax_seq_len = 16\n";
        let cases = [
            (
                "attention = 'mha'\nn_heads = 3",
                "n_heads",
                "do not divide d_model",
            ),
            (
                "attention = 'gqa'\nn_heads = 4\nn_kv_heads = 3",
                "n_kv_heads",
                "must divide",
            ),
            ("attention = 'gqa'\nn_heads = 4", "n_kv_heads", "missing"),
            (
                "attention = 'mha'\nn_heads = 4\nn_kv_heads = 2",
                "n_kv_heads",
                "gqa",
            ),
            (
                "attention = 'mqa'\nn_heads = 4\nn_kv_heads = 2",
                "n_kv_heads",
                "one key/value",
            ),
            (
                "attention = 'mla'\nn_heads = 4\nqk_rope_head_dim = 7",
                "qk_rope_head_dim",
                "even",
            ),
            (
                "attention = 'mha'\nn_heads = 4\nhead_dim = 9",
                "head_dim",
                "even",
            ),
            (
                "attention = 'mla'\nn_heads = 4\nkv_lora_rank = 0",
                "kv_lora_rank",
                "positive",
            ),
            (
                "attention = 'mha'\nn_heads = 4\nkv_lora_rank = 8",
                "kv_lora_rank",
                "only used",
            ),
            (
                "attention = 'mla'\nn_heads = 4\nn_kv_heads = 4",
                "n_kv_heads",
                "not used",
            ),
            ("n_heads = 4", "attention", "missing"),
            ("attention = 'mha'\nn_heads = 0", "n_heads", "positive"),
            (
                "attention = 'mha'\nn_heads = 4\nrope_theta = -1.0",
                "rope_theta",
                "> 1",
            ),
            (
                "attention = 'mha'\nn_heads = 4\npreset = 'nope'",
                "preset",
                "unknown preset",
            ),
        ];
        for (extra, key, needle) in cases {
            let e = section(&format!("{base}{extra}")).resolve().unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<ModelSection>("attention = 'mla'\nkv_rank = 4").unwrap_err();
        assert!(e.to_string().contains("unknown field `kv_rank`"), "{e}");
    }

    #[test]
    fn preset_keys_can_be_overridden_and_family_switched() {
        let cfg = section("preset = 'deepseek-v2-lite-attn'\nn_layers = 2\nattention = 'gqa'\nn_kv_heads = 4\nhead_dim = 128")
            .resolve()
            .unwrap();
        assert_eq!(cfg.n_layers, 2);
        assert_eq!(
            cfg.attention,
            AttentionConfig::Standard(StandardAttention {
                kind: AttentionKind::Gqa,
                n_kv_heads: 4,
                head_dim: 128
            })
        );
    }

    #[test]
    fn yarn_scales_the_softmax_like_deepseek() {
        let cfg = ModelConfig::preset("deepseek-v2-lite-attn").unwrap();
        let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
        let expected = m * m / 192f64.sqrt();
        assert!((cfg.softmax_scale() - expected).abs() < 1e-12);
        assert_eq!(cfg.rope_scaling.unwrap().attention_factor(), 1.0);
    }

    #[test]
    fn init_scheme_sets_the_default_std() {
        let base = "attention = 'mha'\nvocab_size = 10\nd_model = 16\nn_layers = 2\nn_heads = 2\nmax_seq_len = 8\n";
        let gpt2 = section(base).resolve().unwrap();
        assert_eq!((gpt2.init, gpt2.init_std), (InitScheme::Gpt2, 0.02));
        let ds = section(&format!("{base}init = 'deepseek'"))
            .resolve()
            .unwrap();
        assert_eq!((ds.init, ds.init_std), (InitScheme::Deepseek, 0.006));
        let explicit = section(&format!("{base}init = 'deepseek'\ninit_std = 0.01"))
            .resolve()
            .unwrap();
        assert_eq!(explicit.init_std, 0.01);
        assert_eq!(crate::init::out_std(&ds), 0.006, "no depth scaling");
        assert!(
            (crate::init::out_std(&gpt2) - 0.01).abs() < 1e-15,
            "0.02 / sqrt(4)"
        );
        let e = toml::from_str::<ModelSection>("init = 'xavier'").unwrap_err();
        assert!(e.to_string().contains("deepseek"), "{e}");
    }

    #[test]
    fn partial_rope_is_checked_against_the_heads() {
        let mha = "attention = 'gqa'\nvocab_size = 10\nd_model = 32\nn_layers = 1\nn_heads = 4\nn_kv_heads = 2\nmax_seq_len = 8\n";
        let ok = section(&format!(
            "{mha}partial_rope = {{ dim = 8, pairs = [0, 3, 1, 2] }}"
        ));
        assert_eq!(
            ok.resolve().unwrap().partial_rope.unwrap().pairs,
            vec![0, 3, 1, 2]
        );
        let mla = "attention = 'mla'\nvocab_size = 10\nd_model = 32\nn_layers = 1\nn_heads = 4\nqk_rope_head_dim = 4\nmax_seq_len = 8\n";
        assert!(
            section(&format!(
                "{mla}partial_rope = {{ dim = 16, pairs = [5, 5] }}"
            ))
            .resolve()
            .is_ok()
        );
        for (base, rope, needle) in [
            (mha, "{ dim = 8, pairs = [0, 4] }", "out of range"),
            (
                mha,
                "{ dim = 8, pairs = [0, 1, 2] }",
                "same positive number",
            ),
            (mha, "{ dim = 8, pairs = [1, 1, 2, 3] }", "twice"),
            (mha, "{ dim = 6, pairs = [0, 1] }", "head_dim = 8"),
            (mla, "{ dim = 16, pairs = [0, 1, 2] }", "has 2"),
            (mla, "{ dim = 7, pairs = [0, 1] }", "even"),
        ] {
            let e = section(&format!("{base}partial_rope = {rope}"))
                .resolve()
                .unwrap_err();
            assert_eq!(e.key, "partial_rope");
            assert!(e.to_string().contains(needle), "{rope}: {e}");
        }
    }

    #[test]
    fn a_context_extension_changes_only_context_fields() {
        let a = ModelConfig::preset("tiny-mla").unwrap();
        let mut b = a.clone();
        b.max_seq_len = 256;
        b.rope_theta = 50000.0;
        b.rope_scaling = ModelConfig::preset("deepseek-v2-lite-attn")
            .unwrap()
            .rope_scaling;
        let (context, other) = b.context_extension_of(&a);
        assert_eq!(context.len(), 3, "{context:?}");
        assert!(other.is_empty());
        b.d_model = 96;
        let (_, other) = b.context_extension_of(&a);
        assert_eq!(other, vec!["d_model: 64 vs 96".to_string()]);
    }

    #[test]
    fn keys_of_the_other_family_are_set_aside_and_named() {
        let mut s = section(
            "attention = 'mha'\nvocab_size = 50\nd_model = 32\nn_layers = 1\nn_heads = 4\n\
             max_seq_len = 16\nq_lora_rank = 8\nkv_lora_rank = 16\nv_head_dim = 8",
        );
        assert!(s.resolve().unwrap_err().to_string().contains("q_lora_rank"));
        assert_eq!(
            s.set_aside_other_family(),
            ["q_lora_rank", "kv_lora_rank", "v_head_dim"]
        );
        assert_eq!(s.resolve().unwrap().kind(), AttentionKind::Mha);
        // And the other way round; keys of the section's own family stay.
        let mut s = section(
            "attention = 'mla'\nvocab_size = 50\nd_model = 32\nn_layers = 1\nn_heads = 4\n\
             max_seq_len = 16\nn_kv_heads = 2\nkv_lora_rank = 16",
        );
        assert_eq!(s.set_aside_other_family(), ["n_kv_heads"]);
        assert_eq!(s.kv_lora_rank, Some(16));
        assert!(s.set_aside_other_family().is_empty());
    }

    #[test]
    fn differing_fields_are_named() {
        let a = ModelConfig::preset("tiny-mla").unwrap();
        let mut b = a.clone();
        b.n_layers = 3;
        let d = a.differing_fields(&b);
        assert_eq!(d, vec!["n_layers: 2 vs 3".to_string()]);
    }
}
