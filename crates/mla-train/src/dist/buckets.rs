//! Gradients averaged in a few flat buckets, as PyTorch's DDP does (`bucket_cap_mb`, 25 MB):
//! the gradients of consecutive parameters are flattened into one 1-D tensor per bucket, each
//! bucket is reduced with one collective call, and the results are cut back into the
//! parameters' shapes. A few extra scalars (the micro-batch losses, the stop flag) ride in the
//! first bucket, so a step costs no collective call of its own for them.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

/// PyTorch DDP's default bucket size.
pub const BUCKET_BYTES: usize = 25 << 20;

/// One parameter's gradient in a bucket: where it sits and the shape it goes back to.
struct Slot {
    id: ParamId,
    bucket: usize,
    offset: usize,
    dims: Vec<usize>,
}

/// Removes every gradient of `module` from `grads`, in the module's parameter order (the same
/// on every rank), flattened into buckets of at most `cap` elements; a larger tensor gets a
/// bucket of its own. The first bucket starts with `reserved` elements for the extras.
struct Flatten<'a> {
    grads: &'a mut GradientsParams,
    cap: usize,
    parts: Vec<Vec<Tensor<1>>>,
    sizes: Vec<usize>,
    slots: Vec<Slot>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let dims = g.dims().to_vec();
        let n: usize = dims.iter().product();
        let last = self.sizes.len() - 1;
        if !self.parts[last].is_empty() && self.sizes[last] + n > self.cap {
            self.parts.push(Vec::new());
            self.sizes.push(0);
        }
        let bucket = self.sizes.len() - 1;
        self.slots.push(Slot {
            id: param.id,
            bucket,
            offset: self.sizes[bucket],
            dims,
        });
        self.sizes[bucket] += n;
        self.parts[bucket].push(g.reshape([n])); // [n]
    }
}

/// Puts the reduced gradients back under their parameters, in the order they were taken.
struct Restore<'a> {
    grads: &'a mut GradientsParams,
    buckets: &'a [Tensor<1>],
    slots: std::iter::Peekable<std::vec::IntoIter<Slot>>,
}

impl ModuleVisitor for Restore<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Parameters without a gradient were skipped when flattening, so the next slot is
        // this parameter's exactly when the ids match.
        let Some(slot) = self.slots.next_if(|s| s.id == param.id) else {
            return;
        };
        let n: usize = slot.dims.iter().product();
        let flat = self.buckets[slot.bucket]
            .clone()
            .slice(slot.offset..slot.offset + n); // [n]
        let dims: [usize; D] = slot.dims.try_into().expect("the parameter's rank");
        self.grads.register::<D>(param.id, flat.reshape(dims));
    }
}

/// Reduces all gradients of `module` with `reduce` (one call per bucket of at most `cap`
/// elements), and `extras` with them (in the first bucket). `device` is where the gradients
/// live (the training device without autodiff).
pub fn reduce_gradients<M: Module, E>(
    module: &M,
    grads: &mut GradientsParams,
    extras: &mut [f32],
    device: &Device,
    cap: usize,
    mut reduce: impl FnMut(Tensor<1>) -> Result<Tensor<1>, E>,
) -> Result<(), E> {
    let k = extras.len();
    let head = Tensor::<1>::from_data(TensorData::new(extras.to_vec(), [k]), device);
    let mut flat = Flatten {
        grads,
        cap: cap.max(1),
        parts: vec![vec![head]],
        sizes: vec![k],
        slots: Vec::new(),
    };
    module.visit(&mut flat);
    let Flatten {
        grads,
        parts,
        slots,
        ..
    } = flat;
    let mut buckets = Vec::with_capacity(parts.len());
    for part in parts {
        buckets.push(reduce(Tensor::cat(part, 0))?); // [bucket elements]
    }
    if k > 0 {
        let head = buckets[0].clone().slice(0..k).into_data();
        extras.copy_from_slice(head.as_slice::<f32>().expect("f32 extras"));
    }
    let mut restore = Restore {
        grads,
        buckets: &buckets,
        slots: slots.into_iter().peekable(),
    };
    module.visit(&mut restore);
    debug_assert!(restore.slots.next().is_none(), "every gradient went back");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mla_model::{Lm, ModelConfig};

    fn grads_of(model: &Lm) -> GradientsParams {
        let device = Device::flex().autodiff();
        let tokens = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(vec![3i64, 1, 4, 1, 5, 9, 2, 6], [2, 4]),
            &device,
        );
        GradientsParams::from_grads(model.loss(tokens.clone(), tokens).backward(), model)
    }

    fn flat_values(model: &Lm, grads: &GradientsParams) -> Vec<f32> {
        struct All<'a>(&'a GradientsParams, Vec<f32>);
        impl ModuleVisitor for All<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.0.get::<D>(param.id) {
                    self.1.extend(g.into_data().try_into_vec::<f32>().unwrap());
                }
            }
        }
        let mut all = All(grads, Vec::new());
        model.visit(&mut all);
        all.1
    }

    /// Through the buckets and back, every gradient keeps its parameter, shape and values,
    /// whatever the bucket size; the reduce sees a few buckets, not one call per parameter.
    #[test]
    fn gradients_come_back_under_their_parameters() {
        let model = Lm::new(
            &ModelConfig::preset("tiny-mla").unwrap(),
            &Device::flex().autodiff(),
        );
        let before = grads_of(&model);
        let want = flat_values(&model, &before);
        let tensors = {
            struct Count(usize);
            impl ModuleVisitor for Count {
                fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
                    self.0 += 1;
                }
            }
            let mut c = Count(0);
            model.visit(&mut c);
            c.0
        };
        for (cap, buckets) in [
            (1usize, Some(1 + tensors)),
            (20_000, None),
            (BUCKET_BYTES / 4, Some(1)),
        ] {
            let mut grads = grads_of(&model);
            let mut extras = [1.5f32, -2.0];
            let mut calls = 0;
            reduce_gradients(&model, &mut grads, &mut extras, &Device::flex(), cap, |b| {
                calls += 1;
                Ok::<_, ()>(b.mul_scalar(2.0))
            })
            .unwrap();
            assert_eq!(extras, [3.0, -4.0]);
            let got = flat_values(&model, &grads);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(*g, 2.0 * w, "cap {cap}");
            }
            match buckets {
                Some(n) => assert_eq!(calls, n, "cap {cap}"),
                None => assert!(calls > 1 && calls < tensors, "{calls} buckets"),
            }
        }
    }

    #[test]
    fn a_failed_reduce_is_returned() {
        let model = Lm::new(
            &ModelConfig::preset("tiny-mha").unwrap(),
            &Device::flex().autodiff(),
        );
        let mut grads = grads_of(&model);
        let err = reduce_gradients(
            &model,
            &mut grads,
            &mut [],
            &Device::flex(),
            1 << 20,
            |_| Err("peer gone"),
        );
        assert_eq!(err.unwrap_err(), "peer gone");
    }
}
