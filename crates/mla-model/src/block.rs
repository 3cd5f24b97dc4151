//! A pre-norm transformer block: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::{Device, Tensor};

use crate::attention::Attention;
use crate::cache::LayerCache;
use crate::config::ModelConfig;
use crate::fused::rms_norm;
use crate::init;
use crate::mlp::Mlp;
use crate::rope::Rope;

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let out_std = init::out_std(cfg);
        Self {
            input_layernorm: init::rms_norm(cfg.d_model, cfg.rms_norm_eps, device),
            self_attn: Attention::new(cfg, device),
            post_attention_layernorm: init::rms_norm(cfg.d_model, cfg.rms_norm_eps, device),
            mlp: Mlp::new(cfg.d_model, cfg.d_ff, cfg.init_std, out_std, device),
        }
    }

    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, d_model]`
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(rms_norm(&self.input_layernorm, x), rope, cache);
        h.clone()
            + self
                .mlp
                .forward(rms_norm(&self.post_attention_layernorm, h))
    }
}
