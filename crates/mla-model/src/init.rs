//! Weight initialisation (`[model] init`). Every linear and embedding weight comes from
//! N(0, init_std^2); RMSNorm gains start at 1; no biases anywhere.
//! - `gpt2` (default, GPT-2 / torchtitan without depth-init): init_std = 0.02, and the
//!   projections that write into the residual stream (attention `o_proj`, MLP `down_proj`)
//!   divided by sqrt(2 * n_layers) so that the residual's variance does not grow with depth.
//! - `deepseek` (DeepSeek-V2, arXiv:2405.04434 section 3.1.2): init_std = 0.006 for every
//!   weight, output projections included.

use burn::nn::{Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::Device;

use crate::config::{InitScheme, ModelConfig};

/// A bias-free linear layer `[d_in] -> [d_out]` with normal init.
pub fn linear(d_in: usize, d_out: usize, std: f64, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

pub fn rms_norm(d: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

/// The std of residual-facing output projections.
pub fn out_std(cfg: &ModelConfig) -> f64 {
    match cfg.init {
        InitScheme::Gpt2 => cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt(),
        InitScheme::Deepseek => cfg.init_std,
    }
}
