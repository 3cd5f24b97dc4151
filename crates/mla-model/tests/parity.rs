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
use burn::tensor::{Device, Int, Tensor, TensorData};
use mla_model::accounting::CacheMode;
use mla_model::attention::Attention;
use mla_model::attention::mla::Absorbed;
use mla_model::cache::KvCache;
use mla_model::hf::{self, HfTensor, Layout};
use mla_model::{Lm, ModelSection, cross_entropy};

/// Positions the fixtures' `decode_logits` start at (scripts/reference/make_fixtures.py).
const DECODE_FROM: usize = 3;

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
        // Checked by `latent_cache_decode_matches_the_reference_absorbed_decode`.
        tensors.retain(|k, _| !k.starts_with("grad.") && k != "decode_logits");
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
        tensors.retain(|k, _| {
            !k.starts_with("grad.") && !matches!(k.as_str(), "targets" | "loss" | "decode_logits")
        });
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

/// A fixture's model (weights as recorded unless `edit` changes them), its input ids and
/// its recorded decode logits.
fn decode_case(
    name: &str,
    edit_section: impl FnOnce(&mut ModelSection),
    edit_weights: impl FnOnce(&mut BTreeMap<String, HfTensor>),
    device: &Device,
) -> (Lm, HfTensor, HfTensor) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (mut tensors, meta) =
        hf::read_safetensors(&dir.join(format!("{name}.safetensors"))).unwrap();
    let mut section: ModelSection = serde_json::from_str(&meta["config"]).unwrap();
    edit_section(&mut section);
    let ids = tensors.remove("input_ids").unwrap();
    let want = tensors
        .remove("decode_logits")
        .unwrap_or_else(|| panic!("{name}: no decode_logits; rerun make_fixtures.py"));
    tensors.retain(|k, _| {
        !k.starts_with("grad.") && !matches!(k.as_str(), "targets" | "loss" | "logits")
    });
    edit_weights(&mut tensors);
    let model = hf::import(
        Lm::new(&section.resolve().unwrap(), device),
        tensors,
        Layout::Native,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, ids, want)
}

/// Logits of positions `DECODE_FROM..` after a prefill of the tokens before them, one decode
/// step per token through the latent cache (absorbed weights). `edit` may change the cache's
/// absorbed weights before the first step.
fn absorbed_decode(model: &Lm, ids: &HfTensor, edit: impl FnOnce(&mut KvCache)) -> Vec<f32> {
    let device = model.embed_tokens.weight.val().device();
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let tokens = |from: usize, to: usize| {
        // [b, to - from] columns of the [b, t] ids
        let data: Vec<i64> = (0..b)
            .flat_map(|r| (from..to).map(move |c| ids.data[r * t + c] as i64))
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [b, to - from]), &device)
    };
    let mut cache = model.new_cache(CacheMode::Latent);
    model.forward_cached(tokens(0, DECODE_FROM), &mut cache);
    edit(&mut cache);
    let steps: Vec<Tensor<3>> = (DECODE_FROM..t)
        .map(|p| model.forward_cached(tokens(p, p + 1), &mut cache))
        .collect();
    Tensor::cat(steps, 1)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

const MLA_FIXTURES: [&str; 5] = [
    "mla_q_lora",
    "mla_no_q_lora",
    "mla_half",
    "mla_yarn",
    "mla_yarn_attn_factor",
];

/// Decoding from the latent cache with W_UK absorbed into the query and W_UV into the output
/// matches the reference's own absorbed decode (written apart from its full forward), step by
/// step, to the logits tolerance.
#[test]
fn latent_cache_decode_matches_the_reference_absorbed_decode() {
    let device = common::device();
    for name in MLA_FIXTURES {
        let (model, ids, want) = decode_case(name, |_| {}, |_| {}, &device);
        let got = absorbed_decode(&model, &ids, |_| {});
        let d = max_abs_diff(&got, &want.data);
        assert!(d <= 1e-4, "{name}: decode logits differ by {d}");
        eprintln!("{name}: decode logits max |diff| {d:.1e}");
    }
}

/// The decode fixtures catch the absorption mistakes a review looks for: each one below moves
/// the decode logits far beyond the 1e-4 tolerance.
#[test]
fn the_decode_fixtures_detect_absorption_mistakes() {
    let device = common::device();
    let moved = |name: &str, mistake: &str, got: Vec<f32>, want: &HfTensor| {
        let d = max_abs_diff(&got, &want.data);
        assert!(
            d > 0.05,
            "{name} with {mistake}: decode logits only moved by {d}"
        );
    };

    // The q_pe . k_pe term dropped: the shared rotary key zeroed (kv_a_proj_with_mqa's last
    // qk_rope_head_dim rows, in HF layout [kv_lora_rank + rope, d]).
    let zero_k_pe = |t: &mut BTreeMap<String, HfTensor>| {
        for (k, w) in t.iter_mut() {
            if k.ends_with("kv_a_proj_with_mqa.weight") {
                let (rows, cols) = (w.shape[0], w.shape[1]);
                let rope = 4; // qk_rope_head_dim of the MLA fixtures
                w.data[(rows - rope) * cols..].fill(0.0);
            }
        }
    };
    let (model, ids, want) = decode_case("mla_q_lora", |_| {}, zero_k_pe, &device);
    moved(
        "mla_q_lora",
        "q_pe . k_pe dropped",
        absorbed_decode(&model, &ids, |_| {}),
        &want,
    );

    // W_UV read transposed: per head [v, kv_lora] where [kv_lora, v] belongs, reshaped back.
    let (model, ids, want) = decode_case("mla_q_lora", |_| {}, |_| {}, &device);
    let transposed = |cache: &mut KvCache| {
        for (i, layer) in model.layers.iter().enumerate() {
            let Attention::Latent(mla) = &layer.self_attn else {
                unreachable!("an MLA fixture")
            };
            let Absorbed { w_uk, w_uv } = mla.absorb();
            let [one, h, r, v] = w_uv.dims();
            let w_uv = w_uv.swap_dims(2, 3).reshape([one, h, r, v]);
            cache.layer_mut(i).absorbed(|| Absorbed { w_uk, w_uv });
        }
    };
    moved(
        "mla_q_lora",
        "W_UV transposed",
        absorbed_decode(&model, &ids, transposed),
        &want,
    );

    // YaRN's mscale^2 on the softmax scale removed alone: with mscale = mscale_all_dim = 0
    // both mscales are 1, so the factor on cos/sin (their ratio) stays what it was (1 in this
    // fixture) while the softmax scale loses mscale(factor, mscale_all_dim)^2.
    let drop_mscale = |s: &mut ModelSection| {
        let y = s.rope_scaling.as_mut().expect("mla_yarn has YaRN");
        assert_eq!(
            y.attention_factor(),
            1.0,
            "the cos/sin factor this check relies on"
        );
        y.mscale = 0.0;
        y.mscale_all_dim = 0.0;
        assert_eq!(y.attention_factor(), 1.0);
        assert_eq!(y.softmax_factor(), 1.0);
    };
    let (model, ids, want) = decode_case("mla_yarn", drop_mscale, |_| {}, &device);
    moved(
        "mla_yarn",
        "mscale^2 removed",
        absorbed_decode(&model, &ids, |_| {}),
        &want,
    );
}
