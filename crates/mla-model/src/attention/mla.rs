//! Multi-head latent attention, exactly as DeepSeek-V2 (arXiv:2405.04434, section 2.1).
//!
//! Keys and values are rebuilt from one small latent per token:
//! `c_kv = RMSNorm(W_DKV x)` (`kv_a_proj_with_mqa` + `kv_a_layernorm`), then per head
//! `[k_nope | v] = W_UK/W_UV c_kv` (`kv_b_proj`). RoPE cannot pass through that compression
//! (it would sit between W_UK and the query at inference), so position is carried by a few
//! extra decoupled dims: a rotary query slice per head and ONE rotary key `k_pe`, shared by all
//! heads, produced next to the latent by `kv_a_proj_with_mqa`. Queries may be compressed too
//! (`q_lora_rank`: `q_a_proj` -> `q_a_layernorm` -> `q_b_proj`), or come from a plain `q_proj`.
//!
//! A generation cache holds only `[c_kv | k_pe]` per token (`kv_lora_rank + qk_rope_head_dim`
//! elements). Decoding then uses absorption: W_UK is folded into the query
//! (`q_nope W_UK^T` lives in latent space) and W_UV into the output (attention-weighted
//! latents are up-projected once), so attention runs over the latent cache directly, as MQA
//! with one `kv_lora_rank + rope`-wide head. The `naive` cache mode decompresses and caches
//! full per-head K/V instead, for comparison.

use burn::module::Module;
use burn::nn::{Linear, RmsNorm};
use burn::tensor::{Device, Tensor};

use super::sdpa::{causal_attention_masked, last_position_attention_masked};
use crate::cache::LayerCache;
use crate::config::{LatentAttention, ModelConfig};
use crate::fused::rms_norm;
use crate::init;
use crate::linear::linear;
use crate::rope::{Positions, Rope};

/// Epsilon of `q_a_layernorm` and `kv_a_layernorm`, fixed as in DeepSeek-V2.
pub const LATENT_NORM_EPS: f64 = 1e-6;

/// DeepSeek-V2's low-rank query path: `q_b_proj(q_a_layernorm(q_a_proj(x)))`.
#[derive(Module, Debug)]
pub struct LowRankQuery {
    pub q_a_proj: Linear,
    pub q_a_layernorm: RmsNorm,
    pub q_b_proj: Linear,
}

/// Query projection: plain (`q_lora_rank` none, as V2-Lite) or compressed (as V2).
// Built once per layer and never moved in a hot loop, so the variants' size difference is
// harmless; boxing them would only put another indirection between burn's Module derive and
// the weights.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum QueryProjection {
    Plain(Linear),
    LowRank(LowRankQuery),
}

impl QueryProjection {
    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, n_heads * (nope + rope)]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Plain(q_proj) => linear(q_proj, x),
            Self::LowRank(q) => linear(
                &q.q_b_proj,
                rms_norm(&q.q_a_layernorm, linear(&q.q_a_proj, x)),
            ),
        }
    }
}

#[derive(Module, Debug)]
pub struct MultiHeadLatentAttention {
    pub q: QueryProjection,
    pub kv_a_proj_with_mqa: Linear,
    pub kv_a_layernorm: RmsNorm,
    pub kv_b_proj: Linear,
    pub o_proj: Linear,
    n_heads: usize,
    kv_lora_rank: usize,
    qk_nope_head_dim: usize,
    qk_rope_head_dim: usize,
    v_head_dim: usize,
    scale: f64,
}

/// `kv_b_proj` split per head and arranged for absorbed decoding (computed once per cache).
#[derive(Clone, Debug)]
pub struct Absorbed {
    /// `[1, h, nope, kv_lora_rank]`: `q_nope @ w_uk` maps a query into latent space.
    pub w_uk: Tensor<4>,
    /// `[1, h, kv_lora_rank, v]`: `ctx @ w_uv` maps attention-weighted latents to values.
    pub w_uv: Tensor<4>,
}

impl MultiHeadLatentAttention {
    pub fn new(cfg: &ModelConfig, a: LatentAttention, device: &Device) -> Self {
        let (d, h, std) = (cfg.d_model, cfg.n_heads, cfg.init_std);
        // DeepSeek-V2 builds the latent norms with eps 1e-6 whatever `rms_norm_eps` says (its
        // reference code and HF's DeepseekV2 do); we do the same so weights map exactly.
        let eps = LATENT_NORM_EPS;
        let q_out = h * a.qk_head_dim();
        let q = match a.q_lora_rank {
            None => QueryProjection::Plain(init::linear(d, q_out, std, device)),
            Some(r) => QueryProjection::LowRank(LowRankQuery {
                q_a_proj: init::linear(d, r, std, device),
                q_a_layernorm: init::rms_norm(r, eps, device),
                q_b_proj: init::linear(r, q_out, std, device),
            }),
        };
        Self {
            q,
            kv_a_proj_with_mqa: init::linear(d, a.kv_lora_rank + a.qk_rope_head_dim, std, device),
            kv_a_layernorm: init::rms_norm(a.kv_lora_rank, eps, device),
            kv_b_proj: init::linear(
                a.kv_lora_rank,
                h * (a.qk_nope_head_dim + a.v_head_dim),
                std,
                device,
            ),
            o_proj: init::linear(h * a.v_head_dim, d, init::out_std(cfg), device),
            n_heads: h,
            kv_lora_rank: a.kv_lora_rank,
            qk_nope_head_dim: a.qk_nope_head_dim,
            qk_rope_head_dim: a.qk_rope_head_dim,
            v_head_dim: a.v_head_dim,
            scale: cfg.softmax_scale(),
        }
    }

    /// Attend causally. With a cache, `x` holds the tokens after the cached ones: a latent cache
    /// stores `[c_kv | k_pe]` and decodes with absorbed weights, a naive one stores full K/V.
    ///
    /// # Shapes
    /// - x: `[b, t, d_model]` -> `[b, t, d_model]`
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, nope, rope_d) = (self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim);
        let r = self.kv_lora_rank;

        // [b, t, h * (nope + rope)] -> [b, t, h, nope + rope] -> [b, h, t, nope + rope]
        let q = self
            .q
            .forward(x.clone())
            .reshape([b, t, h, nope + rope_d])
            .swap_dims(1, 2);
        let q_nope = q.clone().slice_dim(3, 0..nope); // [b, h, t, nope]
        let q_pe = q.slice_dim(3, nope..nope + rope_d); // [b, h, t, rope]

        // [b, t, r + rope]: the latent, then the one rotary key all heads share
        let ckv = linear(&self.kv_a_proj_with_mqa, x);
        let c_kv = rms_norm(&self.kv_a_layernorm, ckv.clone().slice_dim(2, 0..r)); // [b, t, r]
        let k_pe = ckv.slice_dim(2, r..r + rope_d).reshape([b, 1, t, rope_d]); // [b, 1, t, rope]

        // After the cached tokens; in a batched cache, each row after its own.
        let positions = cache.as_ref().map_or(Positions::From(0), |c| c.positions());
        let q_pe = rope.apply_at(q_pe, &positions);
        let k_pe = rope.apply_at(k_pe, &positions);

        let out = match cache {
            Some(cache) if cache.is_latent() => {
                // [b, t, r] -> [b, 1, t, r]; cat -> [b, 1, t, r + rope]: what is cached per token
                let latent = Tensor::cat(vec![c_kv.unsqueeze_dim::<4>(1), k_pe], 3);
                let latents = cache.append_latent(latent); // [b, 1, T, r + rope]
                if t == 1 {
                    self.attend_absorbed(q_nope, q_pe, latents, cache)
                } else {
                    // Prefill is compute-bound: decompress K/V of every cached token and attend
                    // as in training (as DeepSeek does); only the latents are kept.
                    let total = latents.dims()[2];
                    let c_all = latents.clone().slice_dim(3, 0..r).reshape([b, total, r]);
                    let k_pe_all = latents.slice_dim(3, r..r + rope_d); // [b, 1, T, rope]
                    self.attend_naive(q_nope, q_pe, c_all, k_pe_all, None)
                }
            }
            cache => self.attend_naive(q_nope, q_pe, c_kv, k_pe, cache),
        }; // [b, h, t, v]
        // [b, h, t, v] -> [b, t, h * v]
        linear(
            &self.o_proj,
            out.swap_dims(1, 2).reshape([b, t, h * self.v_head_dim]),
        )
    }

    /// Decompress per-head keys and values from the latents and attend as MHA would: training,
    /// prefill, and the `naive` cache (which stores the decompressed K/V).
    ///
    /// # Shapes
    /// - q_nope `[b, h, t, nope]`, q_pe `[b, h, t, rope]` for the last `t` of `T` positions;
    ///   c_kv `[b, T, r]`, k_pe `[b, 1, T, rope]` -> `[b, h, t, v]`
    fn attend_naive(
        &self,
        q_nope: Tensor<4>,
        q_pe: Tensor<4>,
        c_kv: Tensor<3>,
        k_pe: Tensor<4>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<4> {
        let [b, h, _, _] = q_nope.dims();
        let t_kv = c_kv.dims()[1];
        let (nope, rope_d, v_d) = (
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        );
        // [b, T, r] -> [b, T, h * (nope + v)] -> [b, T, h, nope + v] -> [b, h, T, nope + v]
        let kv = linear(&self.kv_b_proj, c_kv)
            .reshape([b, t_kv, h, nope + v_d])
            .swap_dims(1, 2);
        let k_nope = kv.clone().slice_dim(3, 0..nope); // [b, h, T, nope]
        let v = kv.slice_dim(3, nope..nope + v_d); // [b, h, T, v]
        // Every head sees the same rotary key: [b, 1, T, rope] -> [b, h, T, rope]
        let k_pe = k_pe.expand([b, h, t_kv, rope_d]);
        let k = Tensor::cat(vec![k_nope, k_pe], 3); // [b, h, T, nope + rope]
        let q = Tensor::cat(vec![q_nope, q_pe], 3); // [b, h, t, nope + rope]
        let (k, v, key_mask) = match cache {
            // [b, h, offset + T, ..], and the keys a shorter row of a batched cache must skip
            Some(cache) => {
                let (k, v) = cache.append_kv(k, v);
                (k, v, cache.key_mask())
            }
            None => (k, v, None),
        };
        causal_attention_masked(q, k, v, self.scale, key_mask)
    }

    /// One decode step over the latent cache with W_UK absorbed into the query and W_UV into
    /// the output: the cache is one `r + rope`-wide "key head" that every query head shares,
    /// and the latents' `c_kv` part is the value.
    ///
    /// # Shapes
    /// - q_nope `[b, h, 1, nope]`, q_pe `[b, h, 1, rope]`, latents `[b, 1, T, r + rope]`
    ///   -> `[b, h, 1, v]`
    fn attend_absorbed(
        &self,
        q_nope: Tensor<4>,
        q_pe: Tensor<4>,
        latents: Tensor<4>,
        cache: &mut LayerCache,
    ) -> Tensor<4> {
        let [b, h, _, _] = q_nope.dims();
        let (r, rope_d) = (self.kv_lora_rank, self.qk_rope_head_dim);
        let Absorbed { w_uk, w_uv } = cache.absorbed(|| self.absorb()).clone();
        // A batched cache: the latents past a shorter row's length are not its own.
        let key_mask = cache.key_mask();

        // W_UK into the query, the batch as rows of one matmul per head (a broadcast over b
        // would copy W_UK for every sequence): [b, h, 1, nope] -> [1, h, b, nope]
        // @ [1, h, nope, r] -> [1, h, b, r] -> [b, h, 1, r]
        let nope = self.qk_nope_head_dim;
        let q_latent = q_nope
            .reshape([b, h, nope])
            .swap_dims(0, 1)
            .reshape([1, h, b, nope])
            .matmul(w_uk)
            .reshape([h, b, r])
            .swap_dims(0, 1)
            .reshape([b, h, 1, r]);
        // [b, h, 1, r + rope] -> [b, 1, h, r + rope]: heads folded into query rows
        let q = Tensor::cat(vec![q_latent, q_pe], 3).reshape([b, 1, h, r + rope_d]);
        // The latents are the keys, and their c_kv columns the values (a strided view, no copy).
        let c_kv = latents.clone().slice_dim(3, 0..r); // [b, 1, T, r]
        // [b, 1, h, r]
        let ctx = last_position_attention_masked(q, latents, c_kv, self.scale, key_mask);
        // W_UV into the output, again one matmul per head: [b, 1, h, r] -> [1, h, b, r]
        // @ [1, h, r, v] -> [1, h, b, v] -> [b, h, 1, v]
        let v_d = self.v_head_dim;
        ctx.reshape([b, h, r])
            .swap_dims(0, 1)
            .reshape([1, h, b, r])
            .matmul(w_uv)
            .reshape([h, b, v_d])
            .swap_dims(0, 1)
            .reshape([b, h, 1, v_d])
    }

    /// Split `kv_b_proj` into per-head W_UK and W_UV, arranged for [`Self::attend_absorbed`].
    pub fn absorb(&self) -> Absorbed {
        let (h, nope, v_d, r) = (
            self.n_heads,
            self.qk_nope_head_dim,
            self.v_head_dim,
            self.kv_lora_rank,
        );
        // burn's Linear weight is [d_in, d_out]: [r, h * (nope + v)] -> [r, h, nope + v]
        let w = self.kv_b_proj.weight.val().reshape([r, h, nope + v_d]);
        // [r, h, nope] -> [h, nope, r] -> [1, h, nope, r]
        let w_uk = w
            .clone()
            .slice_dim(2, 0..nope)
            .permute([1, 2, 0])
            .unsqueeze_dim(0);
        // [r, h, v] -> [h, r, v] -> [1, h, r, v]
        let w_uv = w
            .slice_dim(2, nope..nope + v_d)
            .permute([1, 0, 2])
            .unsqueeze_dim(0);
        Absorbed { w_uk, w_uv }
    }
}
