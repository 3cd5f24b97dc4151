//! Training precision. `[train] dtype = "bf16"` runs every matmul and activation in bf16 while
//! the master weights and the AdamW state stay in f32: each step the forward pass goes through
//! a *view* of the model whose parameters are differentiable bf16 casts of the f32 masters
//! (same parameter ids), so the gradients flow back through the casts onto the f32 weights,
//! and the optimizer updates those. The loss (log-softmax) is computed in f32; RMSNorm
//! normalises in f32. Evaluation and checkpoints use the f32 masters.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};
use mla_model::Lm;

use crate::config::TrainDType;

/// The model to run forward through for one step.
pub fn compute_view(model: &Lm, dtype: TrainDType) -> Lm {
    match dtype {
        TrainDType::F32 => model.clone(),
        TrainDType::Bf16 => model.clone().map(&mut CastParams(DType::BF16)),
    }
}

struct CastParams(DType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Int, TensorData};
    use mla_model::ModelConfig;

    /// Gradients through the bf16 view reach the f32 master weights, close to f32 gradients.
    #[test]
    fn bf16_view_gradients_land_on_f32_masters() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = Lm::new(&ModelConfig::preset("tiny-mla").unwrap(), &device);
        let x = Tensor::<2, Int>::from_data(
            TensorData::new((0..32i64).collect::<Vec<_>>(), [2, 16]),
            &device,
        );
        let y = Tensor::<2, Int>::from_data(
            TensorData::new((1..33i64).collect::<Vec<_>>(), [2, 16]),
            &device,
        );
        let grad_of = |view: &Lm| {
            let loss = view.loss(x.clone(), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let g = grads
                .get::<2>(model.embed_tokens.weight.id)
                .expect("the master embedding has a gradient");
            assert_eq!(g.dtype(), DType::F32);
            g.into_data().try_into_vec::<f32>().unwrap()
        };
        let bf16 = compute_view(&model, TrainDType::Bf16);
        assert_eq!(bf16.embed_tokens.weight.val().dtype(), DType::BF16);
        assert_eq!(bf16.embed_tokens.weight.id, model.embed_tokens.weight.id);
        let (g16, g32) = (grad_of(&bf16), grad_of(&model));
        let scale = g32.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = g16
            .iter()
            .zip(&g32)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            scale > 0.0 && worst < 0.05 * scale,
            "bf16 grads off by {worst} (scale {scale})"
        );
    }
}
