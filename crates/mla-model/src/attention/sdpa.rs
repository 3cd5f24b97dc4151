//! The one scaled-dot-product core every attention variant shares.
//!
//! Queries always sit at the *end* of the key sequence: a training forward has as many queries
//! as keys, a cached decode step has its new tokens after `t_k - t_q` cached ones. The causal
//! mask is therefore aligned bottom-right. burn's `is_causal` flag is only used when
//! `t_q == t_k`: flex aligns it bottom-right but libtorch's SDPA top-left, so for
//! `t_q < t_k` we build the mask ourselves. It is passed as an additive bias (0 or -inf), not
//! as a boolean mask: burn-tch hands a boolean mask to torch, where `true` means "attend", the
//! opposite of burn's "masked", while a bias means the same on every backend.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor};

/// `softmax(q k^T * scale) v`, causal, for queries at the last `t_q` of `t_k` positions.
///
/// # Shapes
/// - q: `[b, h, t_q, d_qk]`, k: `[b, h, t_k, d_qk]`, v: `[b, h, t_k, d_v]`
/// - returns `[b, h, t_q, d_v]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let [b, h, t_q, _] = q.dims();
    let t_k = k.dims()[2];
    let options = |is_causal| AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal,
    };
    if t_q == t_k {
        attention(q, k, v, None, None, options(true))
    } else if t_q == 1 {
        // A single new token may see every cached one.
        attention(q, k, v, None, None, options(false))
    } else {
        let bias = future_bias(t_q, t_k, 1, &q).expand([b, h, t_q, t_k]);
        attention(q, k, v, None, Some(bias), options(false))
    }
}

/// Causal attention with `groups` query heads per key/value head folded into the query-length
/// dim: row `g * t_q + j` of K/V head `n` is query head `n * groups + g` at position
/// `t_k - t_q + j`. Used when decoding from a cache, where copying K/V for every query head
/// would cost as much as the attention: GQA/MQA fold their groups, absorbed MLA folds all heads
/// onto its single latent head.
///
/// # Shapes
/// - q: `[b, n_kv, groups * t_q, d_qk]`, k: `[b, n_kv, t_k, d_qk]`, v: `[b, n_kv, t_k, d_v]`
/// - returns `[b, n_kv, groups * t_q, d_v]`
pub fn causal_attention_folded(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    t_q: usize,
) -> Tensor<4> {
    let [b, n_kv, rows, _] = q.dims();
    let t_k = k.dims()[2];
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    };
    let bias = if t_q == 1 {
        None
    } else {
        let groups = rows / t_q;
        Some(future_bias(t_q, t_k, groups, &q).expand([b, n_kv, rows, t_k]))
    };
    attention(q, k, v, None, bias, options)
}

/// `-inf` where key position > query position (0 elsewhere), for `groups` stacked copies of
/// `t_q` queries at positions `t_k - t_q ..t_k`, in the dtype of `like`.
///
/// # Shapes
/// - returns `[1, 1, groups * t_q, t_k]`
fn future_bias(t_q: usize, t_k: usize, groups: usize, like: &Tensor<4>) -> Tensor<4> {
    let device = &like.device();
    let zeros = Tensor::<4>::zeros([1, 1, groups * t_q, t_k], device).cast(like.dtype());
    zeros.mask_fill(future_mask(t_q, t_k, groups, device), f32::NEG_INFINITY)
}

/// `true` where key position > query position (same layout as [`future_bias`]).
fn future_mask(
    t_q: usize,
    t_k: usize,
    groups: usize,
    device: &burn::tensor::Device,
) -> Tensor<4, Bool> {
    let offset = (t_k - t_q) as i64;
    let rows = (groups * t_q) as i64;
    // [rows, 1]: position of each query row
    let q_pos = Tensor::<1, Int>::arange(0..rows, device)
        .remainder_scalar(t_q as i64)
        .add_scalar(offset)
        .reshape([rows as usize, 1]);
    // [1, t_k]
    let k_pos = Tensor::<1, Int>::arange(0..t_k as i64, device).reshape([1, t_k]);
    k_pos
        .greater(q_pos) // [rows, t_k] by broadcasting
        .reshape([1, 1, rows as usize, t_k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn dev() -> burn::tensor::Device {
        burn::tensor::Device::flex()
    }

    /// Reference: explicit scores, -inf above the shifted diagonal, softmax, weighted sum.
    fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
        let [_, _, t_q, _] = q.dims();
        let t_k = k.dims()[2];
        let device = q.device();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let mut mask = vec![0f32; t_q * t_k];
        for i in 0..t_q {
            for j in 0..t_k {
                if j > t_k - t_q + i {
                    mask[i * t_k + j] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::<1>::from_floats(mask.as_slice(), &device).reshape([1, 1, t_q, t_k]);
        burn::tensor::activation::softmax(scores + mask, 3).matmul(v)
    }

    #[test]
    fn matches_explicit_softmax_for_every_query_count() {
        let d = dev();
        let n = Distribution::Normal(0.0, 1.0);
        let k = Tensor::<4>::random([2, 3, 6, 5], n, &d);
        let v = Tensor::<4>::random([2, 3, 6, 4], n, &d);
        for t_q in [6, 1, 3] {
            let q = Tensor::<4>::random([2, 3, t_q, 5], n, &d);
            let got = causal_attention(q.clone(), k.clone(), v.clone(), 0.3);
            let want = reference(q, k.clone(), v.clone(), 0.3);
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn folded_groups_equal_separate_heads() {
        let d = dev();
        let n = Distribution::Normal(0.0, 1.0);
        let (b, g, t_k) = (2, 3, 7);
        let k = Tensor::<4>::random([b, 1, t_k, 5], n, &d);
        let v = Tensor::<4>::random([b, 1, t_k, 4], n, &d);
        for t_q in [1, 4, 7] {
            let q = Tensor::<4>::random([b, g, t_q, 5], n, &d);
            // [b, g, t_q, d] -> [b, 1, g * t_q, d]
            let folded = causal_attention_folded(
                q.clone().reshape([b, 1, g * t_q, 5]),
                k.clone(),
                v.clone(),
                0.5,
                t_q,
            )
            .reshape([b, g, t_q, 4]);
            let separate = causal_attention(
                q,
                k.clone().expand([b, g, t_k, 5]),
                v.clone().expand([b, g, t_k, 4]),
                0.5,
            );
            folded
                .into_data()
                .assert_approx_eq::<f32>(&separate.into_data(), Tolerance::absolute(1e-5));
        }
    }
}
