//! Standard multi-head attention and its key/value-sharing variants: MHA (`n_kv_heads =
//! n_heads`), GQA (each group of `n_heads / n_kv_heads` query heads shares one K/V head) and MQA
//! (one K/V head). RoPE rotates whole heads.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::sdpa::causal_attention_masked;
use crate::cache::LayerCache;
use crate::config::{ModelConfig, StandardAttention};
use crate::init;
use crate::linear::linear;
use crate::rope::{Positions, Rope};

#[derive(Module, Debug)]
pub struct MultiHeadAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl MultiHeadAttention {
    pub fn new(cfg: &ModelConfig, a: StandardAttention, device: &Device) -> Self {
        let (d, h, std) = (cfg.d_model, cfg.n_heads, cfg.init_std);
        Self {
            q_proj: init::linear(d, h * a.head_dim, std, device),
            k_proj: init::linear(d, a.n_kv_heads * a.head_dim, std, device),
            v_proj: init::linear(d, a.n_kv_heads * a.head_dim, std, device),
            o_proj: init::linear(h * a.head_dim, d, init::out_std(cfg), device),
            n_heads: h,
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim,
            scale: cfg.softmax_scale(),
        }
    }

    /// Attend causally. With a cache, `x` holds the tokens after the cached ones; their keys and
    /// values are appended to it.
    ///
    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, d_model]`
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // [b, t, h * hd] -> [b, t, h, hd] -> [b, h, t, hd]
        let q = linear(&self.q_proj, x.clone())
            .reshape([b, t, h, hd])
            .swap_dims(1, 2);
        // [b, t, kv * hd] -> [b, kv, t, hd]
        let k = linear(&self.k_proj, x.clone())
            .reshape([b, t, kv, hd])
            .swap_dims(1, 2);
        let v = linear(&self.v_proj, x)
            .reshape([b, t, kv, hd])
            .swap_dims(1, 2);

        // After the cached tokens; in a batched cache, each row after its own.
        let positions = cache.as_ref().map_or(Positions::From(0), |c| c.positions());
        let q = rope.apply_at(q, &positions);
        let k = rope.apply_at(k, &positions);
        // With a cache, attend over everything it holds: [b, kv, offset + t, hd], minus the
        // keys past a shorter row's length in a batched cache. GQA/MQA K/V heads are shared by
        // their query heads inside the core, never copied here.
        let (k, v, key_mask) = match cache {
            Some(cache) => {
                let (k, v) = cache.append_kv(k, v);
                (k, v, cache.key_mask())
            }
            None => (k, v, None),
        };
        let out = causal_attention_masked(q, k, v, self.scale, key_mask); // [b, h, t, hd]
        // [b, h, t, hd] -> [b, t, h * hd]
        linear(&self.o_proj, out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}
