//! AdamW as PyTorch configures it for LMs: decoupled weight decay on matrices only (no decay on
//! norm gains or embeddings unless asked), and clipping of the *global* gradient norm exactly as
//! `torch.nn.utils.clip_grad_norm_` (burn's own `GradientClippingConfig::Norm` clips each tensor
//! on its own).

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Tensor};

use crate::config::OptimSection;

/// Parameter paths never decayed by default: RMSNorm gains and the token embedding.
const NORM_PATTERN: &str = r"(^|\.)[a-z_]*norm\.gamma$";
const EMBEDDING_PATTERN: &str = r"^embed_tokens\.";

pub fn build(cfg: &OptimSection) -> ModuleOptimizer {
    let adamw = AdamWConfig::new()
        .with_beta_1(cfg.beta1 as f32)
        .with_beta_2(cfg.beta2 as f32)
        .with_epsilon(cfg.eps as f32)
        .with_weight_decay(cfg.weight_decay as f32);
    let mut exempt = Vec::new();
    if !cfg.decay_norms {
        exempt.push(NORM_PATTERN);
    }
    if !cfg.decay_embeddings {
        exempt.push(EMBEDDING_PATTERN);
    }
    let optim = adamw.init();
    if exempt.is_empty() || cfg.weight_decay == 0.0 {
        return optim;
    }
    let group = ParamGroup::from_any_regexes(exempt).expect("the patterns are valid regexes");
    optim.with_group(group, adamw.with_weight_decay(0.0).build(), None)
}

/// Global L2 norm of all gradients of `module` (one device sync).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                // Accumulate in f32 even when training in bf16.
                let s = g.cast(DType::F32).square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares { grads, sum: None };
    module.visit(&mut v);
    v.sum
        .map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt())
}

/// Multiply every gradient by `factor`.
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads
                    .register::<D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}

/// `clip_grad_norm_`: returns the norm before clipping; scales the gradients by
/// `max_norm / (norm + 1e-6)` when that is below 1. `max_norm = 0` only measures.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(module, grads);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            scale_grads(module, grads, coef);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use mla_model::{Lm, ModelConfig};

    /// Which parameter paths each pattern exempts from weight decay.
    #[test]
    fn norms_and_embeddings_are_exempt_from_decay() {
        struct Paths(Vec<String>, Vec<String>);
        impl ModuleVisitor for Paths {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
                // `enter_module` is called for the parameter name too.
                self.0.push(self.1.join("."));
            }
        }
        let model = Lm::new(&ModelConfig::preset("tiny-mla").unwrap(), &Device::flex());
        let mut v = Paths(vec![], vec![]);
        model.visit(&mut v);
        let norm = regex_lite(NORM_PATTERN);
        let emb = regex_lite(EMBEDDING_PATTERN);
        let exempt: Vec<&String> = v.0.iter().filter(|p| norm(p) || emb(p)).collect();
        // 2 layers x (2 block norms + q_a_layernorm + kv_a_layernorm) + final norm + embedding
        assert_eq!(exempt.len(), 10, "{exempt:?}");
        assert!(exempt.iter().any(|p| p.ends_with("kv_a_layernorm.gamma")));
        assert!(exempt.iter().all(|p| !p.contains("proj")), "{exempt:?}");
    }

    fn regex_lite(pattern: &'static str) -> impl Fn(&str) -> bool {
        let group = ParamGroup::from_regex(pattern).unwrap();
        move |path| group.matches(&burn::module::ParamId::new(), Some(path))
    }

    #[test]
    fn clipping_matches_torch_semantics() {
        let device = Device::flex().autodiff();
        let model = Lm::new(&ModelConfig::preset("tiny-mha").unwrap(), &device);
        let tokens = Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [1, 6]),
            &device,
        );
        let loss = model.loss(tokens.clone(), tokens);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let before = grad_norm(&model, &grads);
        assert!(before > 0.0);
        let reported = clip_grad_norm(&model, &mut grads, before / 4.0);
        assert_eq!(reported, before);
        let after = grad_norm(&model, &grads);
        assert!(
            (after - before / 4.0).abs() < 1e-4 * before,
            "{after} vs {}",
            before / 4.0
        );
        // Below the threshold: untouched.
        let again = clip_grad_norm(&model, &mut grads, before);
        assert!((grad_norm(&model, &grads) - again).abs() < 1e-9);
    }
}
