//! Weight initialisation, as DeepSeek and torchtitan do it: every linear and embedding weight
//! from N(0, init_std^2) with init_std = 0.02, except the projections that write into the
//! residual stream (attention `o_proj`, MLP `down_proj`), whose std is divided by
//! sqrt(2 * n_layers) (GPT-2 / torchtitan without depth-init) so that the residual's variance
//! does not grow with depth. RMSNorm gains start at 1. No biases anywhere.

use burn::nn::{Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::Device;

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
pub fn out_std(init_std: f64, n_layers: usize) -> f64 {
    init_std / (2.0 * n_layers as f64).sqrt()
}
