//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, as Llama and DeepSeek's dense layers.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::fused::silu;
use crate::init;
use crate::linear::linear;

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// `std` for gate/up, `out_std` (scaled down by depth) for the residual-facing `down_proj`.
    pub fn new(d_model: usize, d_ff: usize, std: f64, out_std: f64, device: &Device) -> Self {
        Self {
            gate_proj: init::linear(d_model, d_ff, std, device),
            up_proj: init::linear(d_model, d_ff, std, device),
            down_proj: init::linear(d_ff, d_model, out_std, device),
        }
    }

    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(linear(&self.gate_proj, x.clone()));
        linear(&self.down_proj, gate * linear(&self.up_proj, x))
    }
}
