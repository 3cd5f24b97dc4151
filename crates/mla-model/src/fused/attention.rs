//! Attention as one fused op with its own backward: `softmax(scale q k^T + causal mask) v`.
//!
//! Under autodiff burn 0.22 differentiates its attention op through the decomposed version
//! (`burn-autodiff` `ops/module.rs`: `attention` -> `attention_fallback`), which keeps the
//! `[b, h, t_q, t_k]` scores and probabilities alive for backward: memory quadratic in the
//! context. Here attention is one autodiff node that saves only its inputs, its output and a
//! logsumexp per query row, and recomputes the rest in backward:
//!
//! - **flex**: the tiled kernel of [`crate::cpu::flash`] (online softmax forward, block-wise
//!   recomputing backward).
//! - **libtorch, CPU**: torch's own `_scaled_dot_product_flash_attention_for_cpu` and its
//!   backward, with their saved logsumexp. That kernel needs one head width for q, k and v,
//!   so MLA's narrower values are padded with zeros to the q/k width (the output's padded
//!   columns are then exactly zero and are cut off), as transformers' DeepseekV3 does for
//!   FlashAttention 2; GQA/MQA K/V heads are repeated for it and their gradients summed.
//! - **libtorch, CUDA**: `scaled_dot_product_attention`, so torch's own dispatcher picks
//!   flash (bf16/f16), memory-efficient (f32) or cuDNN by dtype and shape, with torch's
//!   autograd recording that one node; our backward runs it. (tch 0.22 binds neither the
//!   CUDA flash forward nor the cuDNN one, so the kernels cannot be called one by one.) In
//!   bf16/f16, when q/k and v widths differ and the zero-padded values make flash eligible,
//!   v is padded inside that graph.
//!
//! Queries sit at the end of the keys, as everywhere in this crate: with `t_q < t_k` (prefill
//! after a cache) the causal mask is aligned bottom-right. K/V may have fewer heads than q.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{FloatDType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::cpu::flash;

/// Attention's forward and backward kernels, and the op the model calls.
///
/// Shapes: `q [b, h, t_q, d_qk]`, `k [b, h_kv, t_k, d_qk]`, `v [b, h_kv, t_k, d_v]` with
/// `h_kv` dividing `h` and `t_q <= t_k`; the output is `[b, h, t_q, d_v]`.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedAttention: Backend {
    /// The output and what backward reads: `(out, lse, q, k, v)`. `lse [b, h, t_q]` is the
    /// logsumexp of each query row's scaled, masked scores (on CUDA: torch's graph of the op,
    /// see the module docs); `q`, `k`, `v` are the inputs as the backend keeps them.
    #[allow(clippy::type_complexity)]
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// `(dq, dk, dv)` from [`attention_forward`](Self::attention_forward)'s residuals and the
    /// output's gradient.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The attention output: one differentiable node under autodiff, the forward kernel alone
    /// otherwise.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::attention_forward(q, k, v, causal, scale).0
    }
}

/// The tiled kernel's geometry for these tensors (checked by the kernel).
fn dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> flash::Dims {
    let (q, k, v) = (q.shape(), k.shape(), v.shape());
    flash::Dims {
        batch: q[0],
        heads: q[1],
        kv_heads: k[1],
        t_q: q[2],
        t_k: k[2],
        d_qk: q[3],
        d_v: v[3],
    }
}

/// Contiguous f32 (the kernel computes in f32 whatever the training dtype, as flex's own
/// attention does).
fn f32_contiguous(x: FlexTensor) -> FlexTensor {
    Flex::float_cast(x, FloatDType::F32).to_contiguous()
}

fn slice(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// A kernel result as a tensor of `shape`, in `dtype`.
fn tensor(data: Vec<f32>, shape: Shape, dtype: FloatDType) -> FlexTensor {
    let x = FlexTensor::from_data(TensorData::new(data, shape));
    if dtype == FloatDType::F32 {
        x
    } else {
        Flex::float_cast(x, dtype)
    }
}

impl FusedAttention for Flex {
    fn attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        causal: bool,
        scale: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let dtype = FloatDType::from(q.dtype());
        let (q, k, v) = (f32_contiguous(q), f32_contiguous(k), f32_contiguous(v));
        let d = dims(&q, &k, &v);
        let opts = flash::Options {
            causal,
            scale: scale as f32,
        };
        let (out, lse) = flash::forward(slice(&q), slice(&k), slice(&v), d, opts);
        let out = tensor(out, Shape::new([d.batch, d.heads, d.t_q, d.d_v]), dtype);
        let lse = tensor(lse, Shape::new([d.batch, d.heads, d.t_q]), FloatDType::F32);
        (out, lse, q, k, v)
    }

    fn attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        causal: bool,
        scale: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = FloatDType::from(grad.dtype());
        let (q, k, v) = (f32_contiguous(q), f32_contiguous(k), f32_contiguous(v));
        let (out, lse, grad) = (
            f32_contiguous(out),
            f32_contiguous(lse),
            f32_contiguous(grad),
        );
        let d = dims(&q, &k, &v);
        let opts = flash::Options {
            causal,
            scale: scale as f32,
        };
        let (dq, dk, dv) = flash::backward(
            slice(&q),
            slice(&k),
            slice(&v),
            slice(&out),
            slice(&lse),
            slice(&grad),
            d,
            opts,
        );
        (
            tensor(dq, q.shape(), dtype),
            tensor(dk, k.shape(), dtype),
            tensor(dv, v.shape(), dtype),
        )
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    //! torch's kernels: see the module docs of the parent.
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use tch::{Kind, Tensor};

    use super::FusedAttention;

    /// `torch._fused_sdp_choice`'s answer for flash attention (`sdp::SDPBackend`).
    const SDP_FLASH: i64 = 1;

    /// `is_causal` for torch's kernels when the mask is square (they align it top-left), else
    /// the bottom-right causal mask as an additive bias `[t_q, t_k]` in q's dtype.
    fn causal_mask(q: &Tensor, k: &Tensor, causal: bool) -> (bool, Option<Tensor>) {
        let (t_q, t_k) = (q.size()[2], k.size()[2]);
        if !causal {
            return (false, None);
        }
        if t_q == t_k {
            return (true, None);
        }
        // [t_q, t_k]: key j is in the future of query i when j > (t_k - t_q) + i
        let future = Tensor::ones([t_q, t_k], (Kind::Bool, q.device())).triu(t_k - t_q + 1);
        let bias = Tensor::zeros([t_q, t_k], (q.kind(), q.device()))
            .masked_fill(&future, f64::NEG_INFINITY);
        (false, Some(bias))
    }

    /// Zero columns appended to the last dim up to `width`.
    fn pad_to(x: &Tensor, width: i64) -> Tensor {
        let d = x.size()[3];
        if d == width {
            x.shallow_clone()
        } else {
            x.constant_pad_nd([0, width - d])
        }
    }

    /// K/V heads repeated for their query heads: `[b, h_kv, t, d]` -> `[b, h, t, d]`.
    fn repeat_heads(x: &Tensor, heads: i64) -> Tensor {
        let g = heads / x.size()[1];
        if g == 1 {
            x.shallow_clone()
        } else {
            x.repeat_interleave_self_int(g, Some(1), None)
        }
    }

    /// `[b, h, t, d]` -> `[b, h_kv, t, d]`, summing each group's heads.
    fn sum_heads(x: Tensor, kv_heads: i64) -> Tensor {
        let s = x.size();
        let g = s[1] / kv_heads;
        if g == 1 {
            x
        } else {
            x.view([s[0], kv_heads, g, s[2], s[3]])
                .sum_dim_intlist(Some(&[2i64][..]), false, None)
        }
    }

    /// The CPU flash kernel's inputs: K/V heads repeated, all three padded to one width.
    fn cpu_inputs(q: &Tensor, k: &Tensor, v: &Tensor) -> (Tensor, Tensor, Tensor) {
        let heads = q.size()[1];
        let width = q.size()[3].max(v.size()[3]);
        (
            pad_to(q, width),
            pad_to(&repeat_heads(k, heads), width),
            pad_to(&repeat_heads(v, heads), width),
        )
    }

    pub(super) fn cpu_forward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        scale: f64,
    ) -> (Tensor, Tensor) {
        let (qp, kp, vp) = cpu_inputs(q, k, v);
        let (is_causal, mask) = causal_mask(q, k, causal);
        let (out, lse) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
            &qp,
            &kp,
            &vp,
            0.0,
            is_causal,
            mask.as_ref(),
            scale,
        );
        let d_v = v.size()[3];
        (out.narrow(3, 0, d_v), lse)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn cpu_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        grad: &Tensor,
        causal: bool,
        scale: f64,
    ) -> (Tensor, Tensor, Tensor) {
        let (qp, kp, vp) = cpu_inputs(q, k, v);
        let width = qp.size()[3];
        // The kernel's own output had zeros in the padded columns: padding restores it exactly.
        let (out, grad) = (pad_to(out, width), pad_to(grad, width));
        let (is_causal, mask) = causal_mask(q, k, causal);
        let (dq, dk, dv) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
            &grad,
            &qp,
            &kp,
            &vp,
            &out,
            lse,
            0.0,
            is_causal,
            mask.as_ref(),
            scale,
        );
        let (d_qk, d_v, kv) = (q.size()[3], v.size()[3], k.size()[1]);
        (
            dq.narrow(3, 0, d_qk),
            sum_heads(dk.narrow(3, 0, d_qk), kv),
            sum_heads(dv.narrow(3, 0, d_v), kv),
        )
    }

    /// `scaled_dot_product_attention` as torch's dispatcher runs it; v zero-padded to the q/k
    /// width when that lets the flash kernel take bf16/f16 (see the module docs).
    pub(super) fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: f64) -> Tensor {
        let gqa = k.size()[1] != q.size()[1];
        let (is_causal, mask) = causal_mask(q, k, causal);
        let (d_qk, d_v) = (q.size()[3], v.size()[3]);
        if d_v < d_qk && matches!(q.kind(), Kind::BFloat16 | Kind::Half) {
            let vp = pad_to(v, d_qk);
            let choice = Tensor::internal_fused_sdp_choice(
                q,
                k,
                &vp,
                mask.as_ref(),
                0.0,
                is_causal,
                scale,
                gqa,
            );
            if choice == SDP_FLASH {
                return Tensor::scaled_dot_product_attention(
                    q,
                    k,
                    &vp,
                    mask.as_ref(),
                    0.0,
                    is_causal,
                    scale,
                    gqa,
                )
                .narrow(3, 0, d_v);
            }
        }
        Tensor::scaled_dot_product_attention(q, k, v, mask.as_ref(), 0.0, is_causal, scale, gqa)
    }

    /// Forward through torch's autograd: leaves that require grad, the op's graph kept in
    /// the `lse` slot; the output handed on is detached so no later op records a graph.
    pub(super) fn autograd_forward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        scale: f64,
    ) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let leaf = |x: &Tensor| x.detach().set_requires_grad(true);
        let (q, k, v) = (leaf(q), leaf(k), leaf(v));
        let graph = sdpa(&q, &k, &v, causal, scale);
        (graph.detach(), graph, q, k, v)
    }

    /// Backward through the graph [`autograd_forward`] kept. `Σ graph * grad` has gradient
    /// `grad` with respect to the graph's output (bit for bit: the sum's backward is a
    /// broadcast of ones, the product's a multiplication by them).
    pub(super) fn autograd_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        graph: &Tensor,
        grad: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let objective = (graph * grad).sum(graph.kind());
        let mut g = Tensor::run_backward(&[objective], &[q, k, v], false, false).into_iter();
        let mut next = || g.next().expect("one gradient per input");
        (next(), next(), next())
    }

    fn tch(x: TchTensor) -> Tensor {
        x.tensor
    }

    impl FusedAttention for LibTorch {
        fn attention_forward(
            q: TchTensor,
            k: TchTensor,
            v: TchTensor,
            causal: bool,
            scale: f64,
        ) -> (TchTensor, TchTensor, TchTensor, TchTensor, TchTensor) {
            let (q, k, v) = (tch(q), tch(k), tch(v));
            if q.device().is_cuda() {
                let (out, graph, q, k, v) = autograd_forward(&q, &k, &v, causal, scale);
                (
                    TchTensor::new(out),
                    TchTensor::new(graph),
                    TchTensor::new(q),
                    TchTensor::new(k),
                    TchTensor::new(v),
                )
            } else {
                let (out, lse) = cpu_forward(&q, &k, &v, causal, scale);
                (
                    TchTensor::new(out),
                    TchTensor::new(lse),
                    TchTensor::new(q),
                    TchTensor::new(k),
                    TchTensor::new(v),
                )
            }
        }

        fn attention_backward(
            q: TchTensor,
            k: TchTensor,
            v: TchTensor,
            out: TchTensor,
            lse: TchTensor,
            grad: TchTensor,
            causal: bool,
            scale: f64,
        ) -> (TchTensor, TchTensor, TchTensor) {
            let (q, k, v, grad) = (tch(q), tch(k), tch(v), tch(grad));
            let (dq, dk, dv) = if q.device().is_cuda() {
                autograd_backward(&q, &k, &v, &lse.tensor, &grad)
            } else {
                cpu_backward(&q, &k, &v, &out.tensor, &lse.tensor, &grad, causal, scale)
            };
            (TchTensor::new(dq), TchTensor::new(dk), TchTensor::new(dv))
        }

        fn fused_attention(
            q: TchTensor,
            k: TchTensor,
            v: TchTensor,
            causal: bool,
            scale: f64,
        ) -> TchTensor {
            let (q, k, v) = (tch(q), tch(k), tch(v));
            TchTensor::new(if q.device().is_cuda() {
                sdpa(&q, &k, &v, causal, scale)
            } else {
                cpu_forward(&q, &k, &v, causal, scale).0
            })
        }
    }

    #[cfg(test)]
    mod tests {
        //! The CUDA path (torch's dispatcher under torch's autograd) run on CPU tensors against
        //! the CPU kernels: the same function, values and gradients.
        use super::*;

        fn randn(shape: [i64; 4], kind: Kind) -> Tensor {
            Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)).to_kind(kind)
        }

        fn worst(a: &Tensor, b: &Tensor) -> f64 {
            (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
                .abs()
                .max()
                .double_value(&[])
        }

        #[test]
        fn the_autograd_path_matches_the_cpu_kernels() {
            tch::manual_seed(7);
            // (h, h_kv, t_q, t_k, d_qk, d_v, kind, tolerance)
            let cases = [
                (4, 4, 33, 33, 12, 8, Kind::Float, 1e-5),    // MLA widths
                (4, 2, 40, 40, 8, 8, Kind::Float, 1e-5),     // GQA
                (2, 1, 9, 30, 8, 8, Kind::Float, 1e-5),      // MQA after a cache
                (4, 4, 33, 33, 12, 8, Kind::BFloat16, 5e-2), // v padded for flash
            ];
            for (h, h_kv, t_q, t_k, d_qk, d_v, kind, tol) in cases {
                let q = randn([2, h, t_q, d_qk], kind);
                let k = randn([2, h_kv, t_k, d_qk], kind);
                let v = randn([2, h_kv, t_k, d_v], kind);
                let grad = randn([2, h, t_q, d_v], kind);
                let (out, lse) = cpu_forward(&q, &k, &v, true, 0.3);
                let want = cpu_backward(&q, &k, &v, &out, &lse, &grad, true, 0.3);
                let (got_out, graph, ql, kl, vl) = autograd_forward(&q, &k, &v, true, 0.3);
                assert!(
                    !got_out.requires_grad(),
                    "the output handed on must be detached"
                );
                let got = autograd_backward(&ql, &kl, &vl, &graph, &grad);
                let case = format!("h {h}/{h_kv}, t {t_q}/{t_k}, d {d_qk}/{d_v}, {kind:?}");
                assert!(worst(&got_out, &out) <= tol, "out ({case})");
                for (name, a, b) in [
                    ("dq", &got.0, &want.0),
                    ("dk", &got.1, &want.1),
                    ("dv", &got.2, &want.2),
                ] {
                    assert_eq!(a.size(), b.size(), "{name} shape ({case})");
                    assert!(worst(a, b) <= tol * 4.0, "{name}: {} ({case})", worst(a, b));
                }
            }
        }
    }
}

/// The autodiff node: parents q, k, v; state the forward's residuals.
#[derive(Debug)]
struct AttentionNode;

impl<B: Backend + FusedAttention> Backward<B, 3> for AttentionNode {
    // (out, lse, q, k, v, causal, scale)
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        bool,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (out, lse, q, k, v, causal, scale) = ops.state;
        let (dq, dk, dv) = B::attention_backward(q, k, v, out, lse, grad, causal, scale);
        for (node, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend + FusedAttention, C: CheckpointStrategy> FusedAttention for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (q, node_q) = q.into_parts();
        let (k, node_k) = k.into_parts();
        let (v, node_v) = v.into_parts();
        match AttentionNode
            .prepare::<C>([node_q, node_k, node_v])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse, q, k, v) = B::attention_forward(q, k, v, causal, scale);
                prep.finish((out.clone(), lse, q, k, v, causal, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(q, k, v, causal, scale)),
        }
    }

    // The kernels themselves, untracked: only `fused_attention` is differentiable.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (inner, wrap) = (Self::inner, Self::from_inner);
        let (out, lse, q, k, v) = B::attention_forward(inner(q), inner(k), inner(v), causal, scale);
        (wrap(out), wrap(lse), wrap(q), wrap(k), wrap(v))
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        causal: bool,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (inner, wrap) = (Self::inner, Self::from_inner);
        let (dq, dk, dv) = B::attention_backward(
            inner(q),
            inner(k),
            inner(v),
            inner(out),
            inner(lse),
            inner(grad),
            causal,
            scale,
        );
        (wrap(dq), wrap(dk), wrap(dv))
    }
}

/// `softmax(scale q k^T + mask) v` as one fused op (see the module docs), causal when
/// `causal`, with queries at the last `t_q` of the `t_k` key positions.
///
/// # Shapes
/// - q: `[b, h, t_q, d_qk]`, k: `[b, h_kv, t_k, d_qk]`, v: `[b, h_kv, t_k, d_v]`
/// - returns `[b, h, t_q, d_v]`
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedAttention>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        causal,
        scale,
    ))
}
