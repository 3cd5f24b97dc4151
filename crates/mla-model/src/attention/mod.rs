//! Attention variants behind one enum, chosen by `[model] attention`. Each variant lives in its
//! own file and shares only the scaled-dot-product core ([`sdpa`]) and RoPE.

pub mod mha;
pub mod mla;
pub mod sdpa;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::cache::LayerCache;
use crate::config::{AttentionConfig, ModelConfig};
use crate::rope::Rope;
pub use mha::MultiHeadAttention;
pub use mla::MultiHeadLatentAttention;

// One per layer, built once: the variants' size difference costs nothing (see QueryProjection).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Attention {
    /// mha, gqa, mqa
    Standard(MultiHeadAttention),
    /// mla
    Latent(MultiHeadLatentAttention),
}

impl Attention {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        match cfg.attention {
            AttentionConfig::Standard(a) => Self::Standard(MultiHeadAttention::new(cfg, a, device)),
            AttentionConfig::Latent(a) => {
                Self::Latent(MultiHeadLatentAttention::new(cfg, a, device))
            }
        }
    }

    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, d_model]`
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, cache: Option<&mut LayerCache>) -> Tensor<3> {
        match self {
            Self::Standard(a) => a.forward(x, rope, cache),
            Self::Latent(a) => a.forward(x, rope, cache),
        }
    }
}
