//! The one scaled-dot-product core every attention variant shares.
//!
//! Queries always sit at the *end* of the key sequence: a training forward has as many queries
//! as keys, a cached decode step has its new tokens after `t_k - t_q` cached ones. The causal
//! mask is therefore aligned bottom-right. burn's `is_causal` flag is only used when
//! `t_q == t_k`: flex aligns it bottom-right but libtorch's SDPA top-left, so for
//! `t_q < t_k` we build the mask ourselves. It is passed as an additive bias (0 or -inf), not
//! as a boolean mask: burn-tch hands a boolean mask to torch, where `true` means "attend", the
//! opposite of burn's "masked", while a bias means the same on every backend.
//!
//! Under autodiff (training) the square causal case is spelled out instead, around a fused
//! softmax with its own backward ([`crate::fused`]): burn differentiates its attention op
//! through the dozen primitives its softmax is built from.

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor};

use crate::fused::masked_softmax;

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
    if t_q == t_k && q.is_autodiff() {
        training_attention(q, k, v, scale)
    } else if t_q == t_k {
        attention(q, k, v, None, None, options(true))
    } else if t_q == 1 {
        last_position_attention(q, k, v, scale)
    } else {
        let bias = future_bias(t_q, t_k, &q).expand([b, h, t_q, t_k]);
        attention(q, k, v, None, Some(bias), options(false))
    }
}

/// Square causal attention as three autodiff nodes: two matmuls around one fused softmax.
///
/// # Shapes
/// - q: `[b, h, t, d_qk]`, k: `[b, h, t, d_qk]`, v: `[b, h, t, d_v]` -> `[b, h, t, d_v]`
fn training_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    // [t, t]: true above the diagonal, the future of each query; a view broadcast to the scores
    let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &q.device())
        .reshape([1, 1, t, t])
        .expand([b, h, t, t]);
    // Scaling q rather than the scores touches d_qk numbers per query instead of t.
    // [b, h, t, d_qk] @ [b, h, d_qk, t] -> [b, h, t, t]
    let scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    masked_softmax(scores, future).matmul(v)
}

/// Attention for one decode step: every query sits at the last position, so it sees every
/// cached key and needs no mask. The rows of `q` may be several query heads folded onto one
/// K/V head (a GQA/MQA group, or all heads of absorbed MLA), so that K/V are not copied for
/// each head.
///
/// Two matmuls rather than the fused attention op, because `k` and `v` are views of a cache
/// buffer with room for more tokens: matmul reads them through their strides, while the fused
/// op (on flex) would first copy the whole cache, every step. Scores and softmax are f32
/// whatever the cache's dtype.
///
/// # Shapes
/// - q: `[b, n_kv, rows, d_qk]`, k: `[b, n_kv, t_k, d_qk]`, v: `[b, n_kv, t_k, d_v]`
/// - returns `[b, n_kv, rows, d_v]`
pub fn last_position_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let dtype = v.dtype();
    // [b, n_kv, rows, d_qk] @ [b, n_kv, d_qk, t_k] -> [b, n_kv, rows, t_k]
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .cast(DType::F32)
        .mul_scalar(scale);
    softmax(scores, 3).cast(dtype).matmul(v)
}

/// `-inf` where key position > query position (0 elsewhere), for `t_q` queries at positions
/// `t_k - t_q ..t_k`, in the dtype of `like`.
///
/// # Shapes
/// - returns `[1, 1, t_q, t_k]`
fn future_bias(t_q: usize, t_k: usize, like: &Tensor<4>) -> Tensor<4> {
    let device = &like.device();
    let offset = (t_k - t_q) as i64;
    // [t_q, 1]: position of each query
    let q_pos = Tensor::<1, Int>::arange(offset..t_k as i64, device).reshape([t_q, 1]);
    // [1, t_k]
    let k_pos = Tensor::<1, Int>::arange(0..t_k as i64, device).reshape([1, t_k]);
    let future = k_pos.greater(q_pos).reshape([1, 1, t_q, t_k]); // [t_q, t_k] by broadcasting
    Tensor::<4>::zeros([1, 1, t_q, t_k], device)
        .cast(like.dtype())
        .mask_fill(future, f32::NEG_INFINITY)
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

    /// Under autodiff the square case runs the spelled-out path around the fused softmax: same
    /// output as the explicit reference, and the same gradients for q, k and v.
    #[test]
    fn training_path_matches_explicit_softmax_in_value_and_gradient() {
        let d = dev().autodiff();
        let n = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([2, 3, 6, 5], n, &d).require_grad();
        let k = Tensor::<4>::random([2, 3, 6, 5], n, &d).require_grad();
        let v = Tensor::<4>::random([2, 3, 6, 4], n, &d).require_grad();
        let weights = Tensor::<4>::random([2, 3, 6, 4], n, &d);
        let got = causal_attention(q.clone(), k.clone(), v.clone(), 0.3);
        let want = reference(q.clone(), k.clone(), v.clone(), 0.3);
        let tol = Tolerance::absolute(1e-5);
        got.clone()
            .into_data()
            .assert_approx_eq::<f32>(&want.clone().into_data(), tol);
        let g_got = (got * weights.clone()).sum().backward();
        let g_want = (want * weights).sum().backward();
        for x in [q, k, v] {
            x.grad(&g_got)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&x.grad(&g_want).unwrap().into_data(), tol);
        }
    }

    #[test]
    fn one_step_with_folded_heads_equals_separate_heads_over_a_cache_view() {
        let d = dev();
        let n = Distribution::Normal(0.0, 1.0);
        let (b, g, t_k) = (2, 3, 7);
        // A cache buffer with room for 10 tokens, 7 of them filled: k and v are strided views.
        let k = Tensor::<4>::random([b, 1, 10, 5], n, &d).slice_dim(2, 0..t_k);
        let v = Tensor::<4>::random([b, 1, 10, 4], n, &d).slice_dim(2, 0..t_k);
        let q = Tensor::<4>::random([b, g, 1, 5], n, &d);
        // [b, g, 1, d] -> [b, 1, g, d]: the group's heads as rows of the one K/V head
        let folded =
            last_position_attention(q.clone().reshape([b, 1, g, 5]), k.clone(), v.clone(), 0.5)
                .reshape([b, g, 1, 4]);
        let separate = reference(
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
