//! Linear layers applied as one 2-D matmul over all rows.
//!
//! `burn::nn::Linear::forward` goes through burn 0.22's dispatch layer, which has no route for
//! the fused linear op yet (burn-dispatch `ops/module.rs`: "TODO: linear ops"), so it falls back
//! to broadcasting the weight over the batch: `[b, t, d_in] @ [1, d_in, d_out]`. Under autodiff
//! the weight gradient of that is a `[b, d_in, d_out]` batch of products summed over `b`: b
//! times the memory, an extra reduction and smaller matmuls. Folding the rows first makes the
//! forward one `[b * t, d_in] @ [d_in, d_out]` matmul and the weight gradient one
//! `[d_in, b * t] @ [b * t, d_out]`, as PyTorch's `F.linear` does.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `x W (+ bias)` for a `Linear` layer (burn stores `W` as `[d_in, d_out]`).
///
/// # Shapes
/// - x: `[..., d_in]` -> `[..., d_out]`
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let y = matmul_rows(x, layer.weight.val());
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// `x w` with every leading dim of `x` folded into the rows of one matmul.
///
/// # Shapes
/// - x: `[..., d_in]`, w: `[d_in, d_out]` -> `[..., d_out]`
pub fn matmul_rows<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let mut dims = x.dims();
    let [d_in, d_out] = w.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    // [..., d_in] -> [rows, d_in] @ [d_in, d_out] -> [rows, d_out] -> [..., d_out]
    let y = x.reshape([rows, d_in]).matmul(w);
    dims[D - 1] = d_out;
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Same values and same gradients as burn's own `Linear::forward`, with and without bias.
    #[test]
    fn matches_burn_linear_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        for bias in [false, true] {
            let layer = LinearConfig::new(6, 5).with_bias(bias).init(&device);
            let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let ours = linear(&layer, x.clone());
            let burns = layer.forward(x.clone());
            ours.clone()
                .into_data()
                .assert_approx_eq::<f32>(&burns.clone().into_data(), Tolerance::absolute(1e-6));

            // A loss that weights every output differently, so every gradient entry is checked.
            let weights = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
            let g_ours = (ours * weights.clone()).sum().backward();
            let g_burn = (burns * weights).sum().backward();
            let close = |a: Option<burn::tensor::TensorData>,
                         b: Option<burn::tensor::TensorData>| {
                a.unwrap()
                    .assert_approx_eq::<f32>(&b.unwrap(), Tolerance::absolute(1e-5))
            };
            let data = |t: Option<Tensor<3>>| t.map(Tensor::into_data);
            close(data(x.grad(&g_ours)), data(x.grad(&g_burn)));
            let data = |t: Option<Tensor<2>>| t.map(Tensor::into_data);
            close(
                data(layer.weight.grad(&g_ours)),
                data(layer.weight.grad(&g_burn)),
            );
            if let Some(b) = &layer.bias {
                b.grad(&g_ours)
                    .unwrap()
                    .into_data()
                    .assert_approx_eq::<f32>(
                        &b.grad(&g_burn).unwrap().into_data(),
                        Tolerance::absolute(1e-5),
                    );
            }
        }
    }
}
