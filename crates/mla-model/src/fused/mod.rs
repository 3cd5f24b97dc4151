//! Fused operations with hand-written backward passes: the attention softmax, the loss's
//! log-softmax, SwiGLU's SiLU and RMSNorm.
//!
//! burn's autodiff differentiates these through the primitives they are composed of (max, sub,
//! exp, sum, div...), so a training step ran a dozen elementwise kernels over every score and
//! logit matrix where PyTorch runs two (`softmax` forward, `_softmax_backward_data` backward).
//! Here each is one autodiff node. Its forward is the backend's own kernel and its backward the
//! closed-form gradient:
//!
//! - softmax `y = softmax(x)`: `dx = y (g - Σ g y)`
//! - log-softmax `y = x - logsumexp(x)`: `dx = g - exp(y) Σ g`
//! - SiLU `y = x σ(x)`: `dx = g σ(x) (1 + x (1 - σ(x)))`
//! - RMSNorm `y = x̂ γ`, `x̂ = x r`, `r = 1 / rms(x)`: `dx = r (gγ - x̂ mean(gγ x̂))`,
//!   `dγ = Σ_rows g x̂`
//!
//! The trait's default bodies are those formulas in backend primitives; flex overrides them
//! with the row kernels of [`crate::cpu::rows`] (burn-flex's scalar `exp` and a pass per
//! primitive were 7% and more of a training step), libtorch with its own fused kernels.
//! `Autodiff<B>` wires forward and backward together. The wrappers at the bottom are the model's entry points.
//!
//! Attention, the largest of them, has its own room: [`attention`].

pub mod attention;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Bool, FloatDType, Shape, Tensor};

/// The last dimension of `x`: every op here works along it.
fn last_dim<T: TensorMetadata>(x: &T) -> usize {
    x.shape().num_dims() - 1
}

/// RMSNorm's `1 / sqrt(mean(x²) + eps)` over the last dim, computed in f32 whatever x's dtype
/// (as burn's `RmsNorm` and the reference do), returned in x's dtype.
///
/// # Shapes
/// - x: `[..., d]` -> `[..., 1]`
fn rms_rstd<B: Backend>(x: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let (dim, dtype) = (last_dim(&x), x.dtype());
    let x = B::float_cast(x, FloatDType::F32);
    let mean_sq = B::float_mean_dim(B::float_mul(x.clone(), x), dim);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(mean_sq, eps.into())));
    B::float_cast(rstd, dtype.into())
}

/// `x r γ`, with γ `[d]` broadcast over the leading dims of x.
fn rms_scale<B: Backend>(
    x: FloatTensor<B>,
    rstd: FloatTensor<B>,
    gamma: FloatTensor<B>,
) -> FloatTensor<B> {
    let gamma = broadcastable::<B>(gamma, x.shape().num_dims());
    B::float_mul(B::float_mul(x, rstd), gamma)
}

/// `[d]` -> `[1, ..., 1, d]` with `ndims` dims, to broadcast against a `[..., d]` tensor.
fn broadcastable<B: Backend>(v: FloatTensor<B>, ndims: usize) -> FloatTensor<B> {
    let mut dims = vec![1; ndims];
    dims[ndims - 1] = v.shape().num_elements();
    B::float_reshape(v, Shape::from(dims))
}

/// Backend operations fused beyond burn's primitives. See the module docs for the formulas.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedOps: Backend {
    /// `softmax(x)` over the last dim, with `mask` positions (`true`) at zero weight.
    fn masked_softmax(x: FloatTensor<Self>, mask: BoolTensor<Self>) -> FloatTensor<Self> {
        let dim = last_dim(&x);
        let x = Self::float_mask_fill(x, mask, f32::NEG_INFINITY.into());
        Self::softmax(x, dim)
    }

    /// Gradient of [`masked_softmax`](Self::masked_softmax) given its output `y`:
    /// `y (g - Σ g y)`. Masked positions need no care: their `y` is 0.
    fn softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let dim = last_dim(&y);
        let gy = Self::float_mul(grad, y.clone());
        let sum = Self::float_sum_dim(gy.clone(), dim);
        Self::float_sub(gy, Self::float_mul(y, sum))
    }

    /// `log_softmax(x)` over the last dim.
    fn log_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let dim = last_dim(&x);
        Self::log_softmax(x, dim)
    }

    /// Gradient of [`log_softmax_last`](Self::log_softmax_last) given its output `y`:
    /// `g - exp(y) Σ g`.
    fn log_softmax_last_backward(
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dim = last_dim(&y);
        let sum = Self::float_sum_dim(grad.clone(), dim);
        Self::float_sub(grad, Self::float_mul(Self::float_exp(y), sum))
    }

    /// RMSNorm over the last dim: `x r γ` with `r = 1 / sqrt(mean(x²) + eps)` (in f32).
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        Self::rms_norm_forward(x, gamma, eps).0
    }

    /// [`rms_norm`](Self::rms_norm) and the `r` (`[..., 1]`) its backward reads.
    fn rms_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let r = rms_rstd::<Self>(x.clone(), eps);
        (rms_scale::<Self>(x.clone(), r.clone(), gamma), r)
    }

    /// `(dx, dγ)` of [`rms_norm`](Self::rms_norm) at `x` with gain `γ` and saved `r`: with
    /// x̂ = x r and gx = g γ, `dx = r (gx - x̂ mean(gx x̂))`, `dγ = Σ_rows g x̂`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let (dim, d) = (last_dim(&x), shape[shape.num_dims() - 1]);
        let x_hat = Self::float_mul(x, rstd.clone());
        // [..., d] -> [rows, d] -> [1, d] -> [d]
        let rows = shape.num_elements() / d;
        let g_xhat = Self::float_mul(grad.clone(), x_hat.clone());
        let g_xhat = Self::float_reshape(g_xhat, Shape::new([rows, d]));
        let dgamma = Self::float_reshape(Self::float_sum_dim(g_xhat, 0), Shape::new([d]));
        let gx = Self::float_mul(grad, broadcastable::<Self>(gamma, shape.num_dims()));
        // [..., 1]
        let mean = Self::float_mean_dim(Self::float_mul(gx.clone(), x_hat.clone()), dim);
        let dx = Self::float_mul(Self::float_sub(gx, Self::float_mul(x_hat, mean)), rstd);
        (dx, dgamma)
    }

    /// SiLU (swish): `x σ(x)`.
    fn silu_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(x.clone(), Self::sigmoid(x))
    }

    /// Gradient of [`silu_fused`](Self::silu_fused) at input `x`: `g σ(x) (1 + x (1 - σ(x)))`.
    fn silu_fused_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let sig = Self::sigmoid(x.clone());
        // 1 + x (1 - σ) = 1 + x - x σ
        let x_sig = Self::float_mul(x.clone(), sig.clone());
        let factor = Self::float_add_scalar(Self::float_sub(x, x_sig), 1.0.into());
        Self::float_mul(grad, Self::float_mul(sig, factor))
    }
}

/// flex: the row kernels of [`crate::cpu::rows`] (vectorised `exp`, one pass per formula, in
/// parallel over rows), on f32 (other dtypes are computed in f32 and cast back).
mod flex {
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::{Flex, TensorMetadata};
    use burn::tensor::{FloatDType, Shape, TensorData};
    use burn_flex::FlexTensor;

    use super::FusedOps;
    use crate::cpu::rows;

    fn f32_contiguous(x: FlexTensor) -> FlexTensor {
        Flex::float_cast(x, FloatDType::F32).to_contiguous()
    }

    fn slice(x: &FlexTensor) -> &[f32] {
        x.as_slice::<f32>().expect("a contiguous f32 tensor")
    }

    fn tensor(data: Vec<f32>, shape: Shape, dtype: FloatDType) -> FlexTensor {
        let x = FlexTensor::from_data(TensorData::new(data, shape));
        if dtype == FloatDType::F32 {
            x
        } else {
            Flex::float_cast(x, dtype)
        }
    }

    fn dtype(x: &FlexTensor) -> FloatDType {
        FloatDType::from(x.dtype())
    }

    /// `f` on the f32 contents of `x`, the result shaped and typed as `x`.
    fn unary(x: FlexTensor, f: impl FnOnce(&[f32]) -> Vec<f32>) -> FlexTensor {
        let (shape, dt) = (x.shape(), dtype(&x));
        let x = f32_contiguous(x);
        tensor(f(slice(&x)), shape, dt)
    }

    /// `f` on the f32 contents of `a` and `b`, the result shaped and typed as `b`.
    fn binary(
        a: FlexTensor,
        b: FlexTensor,
        f: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    ) -> FlexTensor {
        let (shape, dt) = (b.shape(), dtype(&b));
        let (a, b) = (f32_contiguous(a), f32_contiguous(b));
        tensor(f(slice(&a), slice(&b)), shape, dt)
    }

    fn row_len(x: &FlexTensor) -> usize {
        let s = x.shape();
        s[s.num_dims() - 1]
    }

    impl FusedOps for Flex {
        fn log_softmax_last(x: FlexTensor) -> FlexTensor {
            let n = row_len(&x);
            unary(x, |x| rows::log_softmax(x, n))
        }

        fn log_softmax_last_backward(y: FlexTensor, grad: FlexTensor) -> FlexTensor {
            let n = row_len(&y);
            binary(y, grad, |y, g| rows::log_softmax_backward(y, g, n))
        }

        fn silu_fused(x: FlexTensor) -> FlexTensor {
            unary(x, rows::silu)
        }

        fn silu_fused_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
            binary(x, grad, rows::silu_backward)
        }

        fn rms_norm_forward(
            x: FlexTensor,
            gamma: FlexTensor,
            eps: f64,
        ) -> (FlexTensor, FlexTensor) {
            let (shape, dt) = (x.shape(), dtype(&x));
            let (x, gamma) = (f32_contiguous(x), f32_contiguous(gamma));
            let (y, rstd) = rows::rms_norm(slice(&x), slice(&gamma), eps as f32);
            let mut r_shape = shape.clone();
            let last = r_shape.num_dims() - 1;
            r_shape[last] = 1;
            (tensor(y, shape, dt), tensor(rstd, r_shape, dt))
        }

        fn rms_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            rstd: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            let (shape, g_shape, dt) = (x.shape(), gamma.shape(), dtype(&grad));
            let (x, gamma) = (f32_contiguous(x), f32_contiguous(gamma));
            let (rstd, grad) = (f32_contiguous(rstd), f32_contiguous(grad));
            let (dx, dgamma) =
                rows::rms_norm_backward(slice(&x), slice(&gamma), slice(&rstd), slice(&grad));
            (tensor(dx, shape, dt), tensor(dgamma, g_shape, dt))
        }
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    //! libtorch's own fused kernels, the ones PyTorch's autograd calls for the same ops.
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    use super::FusedOps;

    impl FusedOps for LibTorch {
        fn masked_softmax(x: TchTensor, mask: TchTensor) -> TchTensor {
            let scores = x.tensor.masked_fill(&mask.tensor, f64::NEG_INFINITY);
            TchTensor::new(scores.softmax(-1, None))
        }

        fn softmax_backward(y: TchTensor, grad: TchTensor) -> TchTensor {
            TchTensor::new(tch::Tensor::internal_softmax_backward_data(
                &grad.tensor,
                &y.tensor,
                -1,
                y.tensor.kind(),
            ))
        }

        fn log_softmax_last(x: TchTensor) -> TchTensor {
            TchTensor::new(x.tensor.log_softmax(-1, None))
        }

        fn log_softmax_last_backward(y: TchTensor, grad: TchTensor) -> TchTensor {
            TchTensor::new(tch::Tensor::internal_log_softmax_backward_data(
                &grad.tensor,
                &y.tensor,
                -1,
                y.tensor.kind(),
            ))
        }

        fn silu_fused(x: TchTensor) -> TchTensor {
            TchTensor::new(x.tensor.silu())
        }

        fn silu_fused_backward(x: TchTensor, grad: TchTensor) -> TchTensor {
            TchTensor::new(x.tensor.silu_backward(&grad.tensor))
        }
    }
}

/// What the gradient of a one-input fused op is computed from: its input or its output.
enum Saved {
    Input,
    Output,
}

/// The gradient of a one-input fused op: `grad_fn(saved, g)`.
type GradFn<B> = fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>;

/// The autodiff node of every one-input fused op; its formula travels in the state.
#[derive(Debug)]
struct UnaryFused;

impl<B: Backend> Backward<B, 1> for UnaryFused {
    type State = (FloatTensor<B>, GradFn<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (saved, grad_fn) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| grad_fn(saved, grad));
    }
}

/// One autodiff node: `forward` on the inner backend, `grad_fn(saved, g)` for its gradient.
fn unary_node<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    forward: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
    saved: Saved,
    grad_fn: GradFn<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x, node) = x.into_parts();
    match UnaryFused.prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => match saved {
            Saved::Input => prep.finish((x.clone(), grad_fn), forward(x)),
            Saved::Output => {
                let y = forward(x);
                prep.finish((y.clone(), grad_fn), y)
            }
        },
        OpsKind::UnTracked(prep) => prep.finish(forward(x)),
    }
}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn masked_softmax(x: FloatTensor<Self>, mask: BoolTensor<Self>) -> FloatTensor<Self> {
        let forward = |x| B::masked_softmax(x, mask);
        unary_node::<B, C>(x, forward, Saved::Output, B::softmax_backward)
    }

    fn log_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        unary_node::<B, C>(
            x,
            B::log_softmax_last,
            Saved::Output,
            B::log_softmax_last_backward,
        )
    }

    fn silu_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        unary_node::<B, C>(x, B::silu_fused, Saved::Input, B::silu_fused_backward)
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNorm;

        impl<B: Backend + FusedOps> Backward<B, 2> for RmsNorm {
            // x, γ and r = 1 / rms(x).
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_x, node_gamma] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, rstd) = ops.state;
                let (dx, dgamma) = B::rms_norm_backward(x, gamma, rstd, grad);
                if let Some(node) = node_gamma {
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
            }
        }

        let (x, node_x) = x.into_parts();
        let (gamma, node_gamma) = gamma.into_parts();
        match RmsNorm
            .prepare::<C>([node_x, node_gamma])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, rstd) = B::rms_norm_forward(x.clone(), gamma.clone(), eps);
                prep.finish((x, gamma, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x, gamma, eps)),
        }
    }
}

/// `softmax(x)` over the last dim with `mask` (`true` = excluded) at zero weight: the attention
/// weights. Every row must keep at least one position.
pub fn masked_softmax<const D: usize>(x: Tensor<D>, mask: Tensor<D, Bool>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::masked_softmax(
        x.into_dispatch(),
        mask.into_dispatch(),
    ))
}

/// `log_softmax(x)` over the last dim.
pub fn log_softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::log_softmax_last(x.into_dispatch()))
}

/// burn's `RmsNorm` layer applied as one fused op (same parameters, same formula).
pub fn rms_norm<const D: usize>(norm: &burn::nn::RmsNorm, x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.epsilon,
    ))
}

/// SiLU, `x σ(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::silu_fused(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    //! Each fused op against the same function composed from burn's differentiable primitives:
    //! values, and gradients under a loss that weights every output differently. On flex by
    //! default; `MLA_TEST_DEVICE=tch-cpu` (scripts/test.sh's tch stage) runs the libtorch kernels.
    use super::*;
    use burn::module::Module;
    use burn::nn::RmsNormConfig;
    use burn::tensor::activation;
    use burn::tensor::{Device, Distribution, Tolerance};

    fn device() -> Device {
        match std::env::var("MLA_TEST_DEVICE").as_deref() {
            #[cfg(feature = "tch")]
            Ok("tch-cpu") => Device::libtorch().autodiff(),
            _ => Device::flex().autodiff(),
        }
    }

    fn normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn close<const D: usize>(got: Tensor<D>, want: Tensor<D>, tol: f32) {
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(tol));
    }

    /// Runs `fused` and `composed` on the same tracked input; checks outputs and input grads,
    /// and that the untracked (inference) path gives the same output.
    fn check<const D: usize>(
        shape: [usize; D],
        fused: impl Fn(Tensor<D>) -> Tensor<D>,
        composed: impl Fn(Tensor<D>) -> Tensor<D>,
    ) {
        let device = device();
        let x = normal(shape, &device).require_grad();
        let weights = normal(shape, &device);
        let (a, b) = (fused(x.clone()), composed(x.clone()));
        close(a.clone(), b.clone(), 1e-5);
        let ga = x.grad(&(a * weights.clone()).sum().backward()).unwrap();
        let gb = x.grad(&(b * weights).sum().backward()).unwrap();
        close(ga, gb, 1e-4);
        let x = x.detach().inner();
        close(fused(x.clone()), composed(x), 1e-5);
    }

    #[test]
    fn masked_softmax_matches_composed_softmax_with_minus_infinity() {
        // Causal mask: every row keeps at least its diagonal.
        let mask = |x: &Tensor<4>| {
            let [b, h, t, _] = x.dims();
            Tensor::<2, Bool>::tril_mask([t, t], 0, &x.device())
                .reshape([1, 1, t, t])
                .expand([b, h, t, t])
        };
        check(
            [2, 3, 5, 5],
            |x| masked_softmax(x.clone(), mask(&x)),
            |x| activation::softmax(x.clone().mask_fill(mask(&x), f32::NEG_INFINITY), 3),
        );
    }

    #[test]
    fn log_softmax_matches_composed() {
        check([4, 7], log_softmax, |x| activation::log_softmax(x, 1));
    }

    #[test]
    fn silu_matches_composed() {
        check([3, 4, 6], silu, activation::silu);
    }

    #[test]
    fn rms_norm_matches_burns_layer_in_value_and_both_gradients() {
        let device = device();
        let mut norm = RmsNormConfig::new(6).with_epsilon(1e-5).init(&device);
        // A gain other than ones, so that its role in dx is checked too.
        let gain = normal([6], &device).into_data();
        norm.gamma = norm
            .gamma
            .map(|g| Tensor::from_data(gain, &g.device()).require_grad());
        let x = normal([2, 3, 6], &device).require_grad();
        let weights = normal([2, 3, 6], &device);
        let (a, b) = (rms_norm(&norm, x.clone()), norm.forward(x.clone()));
        close(a.clone(), b.clone(), 1e-5);
        let ga = (a * weights.clone()).sum().backward();
        let gb = (b * weights).sum().backward();
        close(x.grad(&ga).unwrap(), x.grad(&gb).unwrap(), 1e-4);
        close(
            norm.gamma.grad(&ga).unwrap(),
            norm.gamma.grad(&gb).unwrap(),
            1e-4,
        );
        // A strided view (as MLA's latent slice is) and no tracking.
        let wide = normal([2, 3, 9], &device.inner());
        let view = wide.slice_dim(2, 0..6);
        let norm = norm.valid();
        close(rms_norm(&norm, view.clone()), norm.forward(view), 1e-5);
    }
}
