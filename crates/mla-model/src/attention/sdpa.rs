//! The one scaled-dot-product core every attention variant shares.
//!
//! Queries always sit at the *end* of the key sequence: a training forward has as many queries
//! as keys, a cached decode step has its new tokens after `t_k - t_q` cached ones. The causal
//! mask is therefore aligned bottom-right. K/V may have fewer heads than Q (GQA, MQA): query
//! head `i` reads K/V head `i / (h / h_kv)`.
//!
//! Training and prefill run attention as one fused op with its own backward
//! ([`crate::fused::attention`]): torch's flash kernels on libtorch, a tiled kernel on flex,
//! memory linear in the context. A decode step (one query over a cache) reads the cache
//! buffer through strided matmuls instead ([`last_position_attention`]), since the fused op
//! would first copy the whole cache.
//!
//! The path before the fused op stays available as [`AttentionKernel::Explicit`] (scores
//! materialised, a fused softmax between two matmuls under autodiff, burn's attention op
//! otherwise), to compare against and to benchmark; which one runs is a per-thread setting
//! ([`set_attention_kernel`]), `[train] attention_kernel` in a run config.

use std::cell::Cell;

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::fused::attention::attention as fused_attention;
use crate::fused::masked_softmax;

/// How training and prefill compute attention (decode steps always use
/// [`last_position_attention`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// One fused op with its own backward; memory linear in the context.
    #[default]
    Fused,
    /// Scores and probabilities materialised (`[b, h, t_q, t_k]`), as before the fused op.
    Explicit,
}

thread_local! {
    static KERNEL: Cell<AttentionKernel> = const { Cell::new(AttentionKernel::Fused) };
}

/// Choose the attention kernel for model code running on this thread.
pub fn set_attention_kernel(kernel: AttentionKernel) {
    KERNEL.with(|k| k.set(kernel));
}

/// The attention kernel model code on this thread uses.
pub fn attention_kernel() -> AttentionKernel {
    KERNEL.with(|k| k.get())
}

/// `softmax(q k^T * scale) v`, causal, for queries at the last `t_q` of `t_k` positions.
///
/// # Shapes
/// - q: `[b, h, t_q, d_qk]`, k: `[b, h_kv, t_k, d_qk]`, v: `[b, h_kv, t_k, d_v]`
/// - returns `[b, h, t_q, d_v]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    causal_attention_masked(q, k, v, scale, None)
}

/// [`causal_attention`] for a decode step of a batch whose sequences differ in length:
/// `key_mask` (`true` = masked) hides the keys past each row's own length.
///
/// # Shapes
/// - q: `[b, h, t_q, d_qk]`, k: `[b, h_kv, t_k, d_qk]`, v: `[b, h_kv, t_k, d_v]`
/// - key_mask: `[b, 1, 1, t_k]`, only with `t_q == 1`
/// - returns `[b, h, t_q, d_v]`
pub fn causal_attention_masked(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    key_mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let [b, h, t_q, d_qk] = q.dims();
    let [_, h_kv, t_k, _] = k.dims();
    let groups = h / h_kv;
    assert!(
        key_mask.is_none() || t_q == 1,
        "a key mask is for decode steps (one query per row)"
    );
    if t_q == 1 && (t_k > 1 || key_mask.is_some()) {
        // A decode step: rather than copying each K/V head for its `groups` query heads,
        // fold those heads into query rows. [b, h, 1, d] -> [b, h_kv, groups, d]
        let d_v = v.dims()[3];
        let q = q.reshape([b, h_kv, groups, d_qk]);
        return last_position_attention_masked(q, k, v, scale, key_mask).reshape([b, h, 1, d_v]);
    }
    match attention_kernel() {
        AttentionKernel::Fused => fused_attention(q, k, v, true, scale),
        AttentionKernel::Explicit => {
            explicit_causal_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), scale)
        }
    }
}

/// The attention before the fused op, for queries at the last `t_q` of `t_k` positions.
/// burn's `is_causal` flag is only used when `t_q == t_k`: flex aligns it bottom-right but
/// libtorch's SDPA top-left, so for `t_q < t_k` we build the mask ourselves. It is passed as
/// an additive bias (0 or -inf), not as a boolean mask: burn-tch hands a boolean mask to
/// torch, where `true` means "attend", the opposite of burn's "masked", while a bias means
/// the same on every backend. Under autodiff the square causal case is spelled out, around a
/// fused softmax with its own backward ([`crate::fused`]).
///
/// # Shapes
/// - q: `[b, h, t_q, d_qk]`, k: `[b, h, t_k, d_qk]`, v: `[b, h, t_k, d_v]` -> `[b, h, t_q, d_v]`
pub fn explicit_causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
) -> Tensor<4> {
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
    } else {
        let bias = future_bias(t_q, t_k, &q).expand([b, h, t_q, t_k]);
        attention(q, k, v, None, Some(bias), options(false))
    }
}

/// Give each of the `groups` query heads of a K/V head its own copy.
///
/// # Shapes
/// - x: `[b, kv, t, d]` -> `[b, kv * groups, t, d]` (head `i` is K/V head `i / groups`)
pub fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, t, d] = x.dims();
    // [b, kv, 1, t, d] -> [b, kv, groups, t, d] -> [b, kv * groups, t, d]
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, groups, t, d])
        .reshape([b, kv * groups, t, d])
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
    last_position_attention_masked(q, k, v, scale, None)
}

/// [`last_position_attention`] where `key_mask` (`true` = masked) hides each row's keys past
/// its own length, in a batch of sequences of different lengths. The masked scores are
/// replaced by -inf (not offset: a stale key may hold anything finite), so they weigh 0.
///
/// # Shapes
/// - q: `[b, n_kv, rows, d_qk]`, k: `[b, n_kv, t_k, d_qk]`, v: `[b, n_kv, t_k, d_v]`
/// - key_mask: `[b, 1, 1, t_k]`
/// - returns `[b, n_kv, rows, d_v]`
pub fn last_position_attention_masked(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    key_mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let dtype = v.dtype();
    // [b, n_kv, rows, d_qk] @ [b, n_kv, d_qk, t_k] -> [b, n_kv, rows, t_k]
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .cast(DType::F32)
        .mul_scalar(scale);
    let scores = match key_mask {
        Some(mask) => {
            let shape = scores.dims();
            scores.mask_fill(mask.expand(shape), f32::NEG_INFINITY)
        }
        None => scores,
    };
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
    //! The core against an explicit reference written out here; the fused op against the
    //! explicit path it replaces, in value and in q/k/v gradients, over the shapes the model
    //! produces. On flex by default; `MLA_TEST_DEVICE=tch-cpu` (scripts/test.sh's tch stage)
    //! runs libtorch's kernels.
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[allow(deprecated)] // burn-tch: see mla-train's device.rs
    fn dev() -> Device {
        match std::env::var("MLA_TEST_DEVICE").as_deref() {
            #[cfg(feature = "tch")]
            Ok("tch-cpu") => Device::libtorch(),
            _ => Device::flex(),
        }
    }

    fn normal(shape: [usize; 4], d: &Device) -> Tensor<4> {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), d)
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

    fn close(got: Tensor<4>, want: Tensor<4>, tol: f32) {
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(tol));
    }

    #[test]
    fn matches_explicit_softmax_for_every_query_count_with_either_kernel() {
        let d = dev();
        let k = normal([2, 3, 6, 5], &d);
        let v = normal([2, 3, 6, 4], &d);
        for kernel in [AttentionKernel::Fused, AttentionKernel::Explicit] {
            set_attention_kernel(kernel);
            for t_q in [6, 1, 3] {
                let q = normal([2, 3, t_q, 5], &d);
                let got = causal_attention(q.clone(), k.clone(), v.clone(), 0.3);
                close(got, reference(q, k.clone(), v.clone(), 0.3), 1e-5);
            }
        }
        set_attention_kernel(AttentionKernel::Fused);
    }

    /// Under autodiff both kernels give the explicit reference's output and its q, k and v
    /// gradients: square and after a cache (t_q < t_k), q/k wider than v (MLA), t across the
    /// flex kernel's 64-row blocks, K/V heads shared (MHA, GQA, MQA).
    #[test]
    fn fused_and_explicit_kernels_agree_in_value_and_gradient() {
        let d = dev().autodiff();
        // (heads, kv_heads, t_q, t_k, d_qk, d_v)
        let cases = [
            (4, 4, 6, 6, 5, 5),     // mha, tiny
            (4, 4, 70, 70, 12, 8),  // mla widths (nope + rope > v), past one block
            (4, 2, 130, 130, 8, 8), // gqa, two full blocks and a short one
            (4, 1, 65, 65, 8, 8),   // mqa
            (2, 2, 37, 100, 12, 8), // prefill after 63 cached tokens
        ];
        for (h, h_kv, t_q, t_k, d_qk, d_v) in cases {
            let q = normal([2, h, t_q, d_qk], &d).require_grad();
            let k = normal([2, h_kv, t_k, d_qk], &d).require_grad();
            let v = normal([2, h_kv, t_k, d_v], &d).require_grad();
            let weights = normal([2, h, t_q, d_v], &d);
            let run = |kernel| {
                set_attention_kernel(kernel);
                let out = causal_attention(q.clone(), k.clone(), v.clone(), 0.35);
                let grads = (out.clone() * weights.clone()).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).expect("a gradient");
                (out.inner(), g(&q), g(&k), g(&v))
            };
            let fused = run(AttentionKernel::Fused);
            let explicit = run(AttentionKernel::Explicit);
            set_attention_kernel(AttentionKernel::Fused);
            let case = format!("h {h}, h_kv {h_kv}, t_q {t_q}, t_k {t_k}, d {d_qk}/{d_v}");
            for (name, a, b) in [
                ("out", fused.0, explicit.0),
                ("dq", fused.1, explicit.1),
                ("dk", fused.2, explicit.2),
                ("dv", fused.3, explicit.3),
            ] {
                let a = a.into_data().try_to_vec::<f32>().unwrap();
                let b = b.into_data().try_to_vec::<f32>().unwrap();
                let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(worst <= 2e-5 * scale, "{name}: off by {worst} ({case})");
            }
        }
    }

    /// A masked key weighs nothing, whatever it holds: a row of a batch attending over a view
    /// longer than its own keys equals that row alone over its own keys.
    #[test]
    fn masked_keys_are_ignored_even_when_huge() {
        let d = dev();
        let (b, g, t_k) = (2, 3, 6);
        let k = normal([b, 1, t_k, 5], &d);
        let v = normal([b, 1, t_k, 4], &d);
        let q = normal([b, g, 1, 5], &d);
        // Row 0 has 4 keys, row 1 all 6; row 0's stale keys and values are made huge.
        let lens = [4usize, 6];
        let mask: Vec<bool> = lens
            .iter()
            .flat_map(|&l| (0..t_k).map(move |j| j >= l))
            .collect();
        let mask =
            Tensor::<4, Bool>::from_data(burn::tensor::TensorData::new(mask, [b, 1, 1, t_k]), &d);
        let stale = Tensor::<4>::full([1, 1, 2, 5], 1e30, &d);
        let k = k.slice_assign([0..1, 0..1, 4..6, 0..5], stale);
        let v = v.slice_assign(
            [0..1, 0..1, 4..6, 0..4],
            Tensor::<4>::full([1, 1, 2, 4], -1e30, &d),
        );
        let got = causal_attention_masked(q.clone(), k.clone(), v.clone(), 0.5, Some(mask));
        for (i, &l) in lens.iter().enumerate() {
            let row = |x: &Tensor<4>| x.clone().slice_dim(0, i..i + 1);
            let alone = causal_attention(
                row(&q),
                row(&k).slice_dim(2, 0..l),
                row(&v).slice_dim(2, 0..l),
                0.5,
            );
            close(row(&got), alone, 1e-5);
        }
    }

    #[test]
    fn one_step_with_folded_heads_equals_separate_heads_over_a_cache_view() {
        let d = dev();
        let (b, g, t_k) = (2, 3, 7);
        // A cache buffer with room for 10 tokens, 7 of them filled: k and v are strided views.
        let k = normal([b, 1, 10, 5], &d).slice_dim(2, 0..t_k);
        let v = normal([b, 1, 10, 4], &d).slice_dim(2, 0..t_k);
        let q = normal([b, g, 1, 5], &d);
        // [b, g, 1, d] -> [b, 1, g, d]: the group's heads as rows of the one K/V head
        let folded =
            last_position_attention(q.clone().reshape([b, 1, g, 5]), k.clone(), v.clone(), 0.5)
                .reshape([b, g, 1, 4]);
        let separate = reference(
            q.clone(),
            k.clone().expand([b, g, t_k, 5]),
            v.clone().expand([b, g, t_k, 4]),
            0.5,
        );
        close(folded, separate.clone(), 1e-5);
        // The core folds a shared K/V head itself.
        close(causal_attention(q, k, v, 0.5), separate, 1e-5);
    }
}
