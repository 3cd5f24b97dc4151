//! MHA/GQA/MQA -> MLA conversion: exact at full rank, each rope-selection strategy pinned,
//! bad requests refused.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{device, model};
use mla_model::accounting::{self, CacheMode};
use mla_model::convert::{Calibration, ConvertError, ConvertOptions, RopeSelect, convert};
use mla_model::hf::{self, Layout};
use mla_model::{AttentionConfig, Lm, ModelConfig};

fn tokens(b: usize, t: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..b)
        .map(|_| {
            (0..t)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn logits(m: &Lm, rows: &[Vec<u32>]) -> Vec<f32> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device());
    m.forward(x)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A source with sharp attention (large init) so that RoPE and every score matter.
fn source(extra: &str, seed: u64) -> Lm {
    let cfg = model(&format!("{extra}\ninit_std = 0.25"));
    device().seed(seed);
    Lm::new(&cfg, &device())
}

fn opts(cfg: &ModelConfig, rope: usize, select: RopeSelect, balance: bool) -> ConvertOptions {
    let AttentionConfig::Standard(a) = cfg.attention else {
        panic!("standard source")
    };
    let nope = a.head_dim - rope / a.n_kv_heads;
    ConvertOptions {
        kv_lora_rank: cfg.n_heads * (nope + a.head_dim),
        qk_rope_head_dim: rope,
        rope_select: select,
        balance_kv: balance,
    }
}

/// At full rank (R = heads x (nope + v)) the converted model computes the source with the
/// same partial RoPE: logits within 2e-4 (f32 forward of weights factorised in f64; the
/// logits are O(1-10)). The partial RoPE itself moves the logits far more than that.
#[test]
fn full_rank_is_exact_for_mha_gqa_and_mqa() {
    let cases = [
        ("attention = 'mha'\nn_heads = 4", 8),
        ("attention = 'mha'\nn_heads = 4\nrope_style = 'half'", 8),
        ("attention = 'gqa'\nn_heads = 4\nn_kv_heads = 2", 4),
        ("attention = 'mqa'\nn_heads = 4", 4),
        (
            "attention = 'mqa'\nn_heads = 4\nrope_scaling = { type = 'yarn', factor = 4.0, \
             original_max_position_embeddings = 8, mscale = 1.0, mscale_all_dim = 0.5 }",
            2,
        ),
    ];
    let rows = tokens(2, 20, 53, 5);
    let calib = tokens(6, 21, 53, 9);
    for (i, (extra, rope)) in cases.iter().enumerate() {
        let src = source(extra, 11 + i as u64);
        for (select, balance) in [
            (RopeSelect::High, false),
            (RopeSelect::Low, true),
            (RopeSelect::Uniform, false),
            (RopeSelect::TwoNorm, true),
        ] {
            let o = opts(src.config(), *rope, select, balance);
            let conv = convert(
                &src,
                &o,
                Some(Calibration {
                    windows: &calib,
                    batch: 4,
                }),
            )
            .unwrap();
            let what = format!("{extra} / {select} / balance {balance}");
            let target = conv.model.config();
            assert_eq!(target.kind(), mla_model::AttentionKind::Mla, "{what}");
            assert_eq!(
                accounting::kv_cache(target, CacheMode::Latent).elements_per_token_per_layer,
                o.kv_lora_rank + rope,
                "{what}"
            );
            let (a, b) = (
                logits(&conv.model, &rows),
                logits(&conv.partial_source, &rows),
            );
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&a, &b);
            assert!(
                d <= 2e-4 * scale.max(1.0),
                "{what}: logits differ by {d} (scale {scale})"
            );
            let moved = max_diff(&b, &logits(&src, &rows));
            assert!(
                moved > 100.0 * d.max(1e-5),
                "{what}: partial RoPE moved logits by {moved} only"
            );
            // Without calibration too (weight SVD), where the strategy allows it.
            if !select.needs_calibration() {
                let conv = convert(&src, &o, None).unwrap();
                let d = max_diff(&logits(&conv.model, &rows), &b);
                assert!(d <= 2e-4 * scale.max(1.0), "{what} uncalibrated: {d}");
            }
        }
    }
}

/// Below full rank the factorisation is approximate, and the energy kept grows with the rank.
#[test]
fn lower_ranks_keep_less() {
    let src = source("attention = 'mha'\nn_heads = 4", 3);
    let rows = tokens(2, 16, 53, 2);
    let mut last_energy = 0.0;
    let mut diffs = vec![];
    for r in [4, 8, 16, 48] {
        let mut o = opts(src.config(), 8, RopeSelect::High, false);
        o.kv_lora_rank = r;
        let conv = convert(&src, &o, None).unwrap();
        let energy = conv.layers[0].energy_kept;
        assert!(energy >= last_energy, "rank {r}");
        last_energy = energy;
        diffs.push(max_diff(
            &logits(&conv.model, &rows),
            &logits(&conv.partial_source, &rows),
        ));
    }
    assert!(
        diffs[0] > 1e-2,
        "rank 4 of 48 should be approximate: {diffs:?}"
    );
    assert!(diffs[3] < 1e-3, "full rank: {diffs:?}");
}

/// A hand-built source whose queries and keys live only on known pairs of each head: 2norm
/// finds exactly those (and high / low / uniform give their fixed picks).
#[test]
fn each_strategy_selects_its_pairs_on_a_hand_built_model() {
    let src = source("attention = 'gqa'\nn_heads = 4\nn_kv_heads = 2", 4);
    let cfg = src.config().clone();
    // head_dim 8: pairs 0..4 interleaved (rows 2p, 2p+1). Key/value head 0 lives on pairs
    // {1}, head 1 on {3}; everything else of q and k is scaled down 100x.
    let strong = [1usize, 3];
    let mut w = hf::export(&src, Layout::Native);
    for l in 0..cfg.n_layers {
        for (name, heads, groups) in [("q_proj", 4, 2), ("k_proj", 2, 1)] {
            let t = w
                .get_mut(&format!("model.layers.{l}.self_attn.{name}.weight"))
                .unwrap();
            let cols = t.shape[1];
            for head in 0..heads {
                let keep = strong[head / groups];
                for row in 0..8 {
                    if row / 2 != keep {
                        for x in &mut t.data[(head * 8 + row) * cols..(head * 8 + row + 1) * cols] {
                            *x *= 0.01;
                        }
                    }
                }
            }
        }
    }
    let src = hf::import(Lm::new(&cfg, &device()), w, Layout::Native).unwrap();
    let calib = tokens(4, 17, 53, 1);
    let pick = |select| {
        convert(
            &src,
            &opts(&cfg, 4, select, false),
            Some(Calibration {
                windows: &calib,
                batch: 4,
            }),
        )
        .unwrap()
        .pairs
    };
    assert_eq!(pick(RopeSelect::TwoNorm), vec![vec![1], vec![3]]);
    assert_eq!(pick(RopeSelect::High), vec![vec![0], vec![0]]);
    assert_eq!(pick(RopeSelect::Low), vec![vec![3], vec![3]]);
    assert_eq!(pick(RopeSelect::Uniform), vec![vec![0], vec![0]]);
    // The converted model's shared rotary key turns at those pairs' frequencies.
    let conv = convert(
        &src,
        &opts(&cfg, 4, RopeSelect::TwoNorm, false),
        Some(Calibration {
            windows: &calib,
            batch: 4,
        }),
    )
    .unwrap();
    let p = conv.model.config().partial_rope.clone().unwrap();
    assert_eq!((p.dim, p.pairs), (8, vec![1, 3]));
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let mha = source("attention = 'mha'\nn_heads = 4", 1);
    let full = opts(mha.config(), 8, RopeSelect::High, false);
    let err = |src: &Lm, o: ConvertOptions, calib: bool| {
        let c = tokens(2, 9, 53, 3);
        convert(
            src,
            &o,
            calib.then_some(Calibration {
                windows: &c,
                batch: 2,
            }),
        )
        .err()
        .expect("refused")
    };
    let mla = source("attention = 'mla'\nn_heads = 4\nkv_lora_rank = 8", 1);
    assert!(matches!(
        err(&mla, full.clone(), false),
        ConvertError::AlreadyLatent
    ));
    for r in [0, full.kv_lora_rank + 1] {
        let e = err(
            &mha,
            ConvertOptions {
                kv_lora_rank: r,
                ..full.clone()
            },
            false,
        );
        assert!(matches!(e, ConvertError::Rank { full: 56, .. }), "{e}");
        assert!(e.to_string().contains("1..=56"), "{e}");
    }
    for (d, needle) in [
        (0, "multiple of 2 x n_kv_heads = 8"),
        (6, "multiple of 2 x n_kv_heads = 8"),
        (32, "leaving no nope dims"),
    ] {
        let e = err(
            &mha,
            ConvertOptions {
                qk_rope_head_dim: d,
                ..full.clone()
            },
            false,
        );
        assert!(e.to_string().contains(needle), "{d}: {e}");
    }
    let e = err(
        &mha,
        ConvertOptions {
            rope_select: RopeSelect::TwoNorm,
            ..full.clone()
        },
        false,
    );
    assert!(matches!(e, ConvertError::NeedsCalibration), "{e}");
}
