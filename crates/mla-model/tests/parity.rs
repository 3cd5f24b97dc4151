//! Parity with the PyTorch reference (scripts/reference/model.py): logits, loss and the
//! gradients of a few parameters, recorded by scripts/reference/make_fixtures.py into
//! tests/fixtures/*.safetensors with the weights in HF naming and layout.
//!
//! Tolerances (f32 everywhere; fixture weights ~ N(0, 0.2) so that RoPE, YaRN and the softmax
//! scale move the logits by 0.3-3 when wrong, while f32 rounding stays ~3e-6):
//! logits and loss 1e-4 absolute; gradients 1e-4 relative to each tensor's largest entry.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use mla_model::hf::{self, HfTensor, Layout};
use mla_model::{Lm, ModelSection, cross_entropy};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "fixtures missing in {}", dir.display());
    files
}

/// Replace every parameter by its gradient, so `hf::export` names and lays out gradients
/// exactly as it does weights.
struct ToGrads(GradientsParams);

impl ModuleMapper for ToGrads {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let grad = self
            .0
            .get::<D>(param.id)
            .unwrap_or_else(|| param.val().inner().zeros_like());
        Param::from_tensor(grad)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_loss_and_gradients_match_the_pytorch_reference() {
    let device = common::device().autodiff();
    for path in fixtures() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (mut tensors, meta) = hf::read_safetensors(&path).unwrap();
        let section: ModelSection = serde_json::from_str(&meta["config"]).unwrap();
        let cfg = section.resolve().unwrap();
        let take = |t: &mut BTreeMap<String, HfTensor>, k: &str| t.remove(k).unwrap();
        let ids = take(&mut tensors, "input_ids");
        let targets = take(&mut tensors, "targets");
        let want_logits = take(&mut tensors, "logits");
        let want_loss = take(&mut tensors, "loss").data[0];
        let want_grads: BTreeMap<String, HfTensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v.clone())))
            .collect();
        tensors.retain(|k, _| !k.starts_with("grad."));
        assert!(!want_grads.is_empty(), "{name}: no gradients recorded");

        let model = hf::import(Lm::new(&cfg, &device), tensors, Layout::Native)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let int = |t: &HfTensor| {
            let data: Vec<i64> = t.data.iter().map(|&x| x as i64).collect();
            Tensor::<2, Int>::from_data(TensorData::new(data, t.shape.clone()), &device)
        };
        let logits = model.forward(int(&ids));
        assert_eq!(logits.dims().to_vec(), want_logits.shape, "{name}");
        let loss = cross_entropy(logits.clone(), int(&targets));
        let got_logits = logits.into_data().try_into_vec::<f32>().unwrap();
        let d = max_abs_diff(&got_logits, &want_logits.data);
        assert!(d <= 1e-4, "{name}: logits differ by {d}");
        let got_loss = loss.clone().into_scalar::<f32>();
        assert!(
            (got_loss - want_loss).abs() <= 1e-4,
            "{name}: loss {got_loss} vs {want_loss}"
        );
        eprintln!(
            "{name}: logits max |diff| {d:.1e}, loss |diff| {:.1e}",
            (got_loss - want_loss).abs()
        );

        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let as_grads = model.map(&mut ToGrads(grads));
        let got_grads = hf::export(&as_grads, Layout::Native);
        for (gname, want) in &want_grads {
            let got = &got_grads[gname];
            assert_eq!(got.shape, want.shape, "{name}: {gname}");
            let scale = want.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_abs_diff(&got.data, &want.data);
            assert!(
                d <= 1e-4 * scale,
                "{name}: grad {gname} differs by {d} (scale {scale})"
            );
        }
    }
}

/// The fixtures exercise what they claim: a wrong RoPE pairing or a missing YaRN softmax
/// factor changes the logits far beyond the tolerance.
#[test]
fn the_fixtures_detect_convention_mistakes() {
    let device = common::device();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (case, mutate) in [
        ("mla_q_lora", "rope_style"),
        ("mla_yarn", "rope_scaling"),
        ("mha", "rope_style"),
    ] {
        let (mut tensors, meta) =
            hf::read_safetensors(&dir.join(format!("{case}.safetensors"))).unwrap();
        let mut section: ModelSection = serde_json::from_str(&meta["config"]).unwrap();
        match mutate {
            "rope_style" => section.rope_style = Some(mla_model::RopeStyle::Half),
            _ => section.rope_scaling = None,
        }
        let cfg = section.resolve().unwrap();
        let ids = tensors.remove("input_ids").unwrap();
        let want = tensors.remove("logits").unwrap();
        tensors.retain(|k, _| !k.starts_with("grad.") && k != "targets" && k != "loss");
        let model = hf::import(Lm::new(&cfg, &device), tensors, Layout::Native).unwrap();
        let data: Vec<i64> = ids.data.iter().map(|&x| x as i64).collect();
        let logits = model.forward(Tensor::from_data(TensorData::new(data, ids.shape), &device));
        let d = max_abs_diff(
            &logits.into_data().try_into_vec::<f32>().unwrap(),
            &want.data,
        );
        assert!(
            d > 0.05,
            "{case} with a wrong {mutate}: logits only moved by {d}"
        );
    }
}
