//! Invariants every attention variant must keep, checked on small random models.

mod common;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use common::{device, variants};
use mla_model::accounting::{self, CacheMode};
use mla_model::{AttentionConfig, Lm, ModelSection, StandardAttention};

fn tokens(rows: &[Vec<i64>]) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.concat();
    Tensor::from_data(TensorData::new(flat, [b, t]), &device())
}

fn random_tokens(b: usize, t: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    // A small LCG keeps the test inputs independent of any RNG crate's stream.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..b)
        .map(|_| {
            (0..t)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab as u64) as i64
                })
                .collect()
        })
        .collect()
}

fn close(a: Tensor<3>, b: Tensor<3>, tol: f32, what: &str) {
    let a = a.into_data().try_into_vec::<f32>().unwrap();
    let b = b.into_data().try_into_vec::<f32>().unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs diff {worst} > {tol}");
}

/// Changing tokens after position t never changes the logits at positions <= t.
#[test]
fn future_tokens_never_change_past_logits() {
    for (name, cfg) in variants() {
        device().seed(1);
        let model = Lm::new(&cfg, &device());
        let t = 12;
        let a = random_tokens(2, t, cfg.vocab_size, 7);
        let mut b = a.clone();
        for row in &mut b {
            for tok in row.iter_mut().skip(5) {
                *tok = (*tok + 3) % cfg.vocab_size as i64;
            }
        }
        let la = model.forward(tokens(&a)).slice_dim(1, 0..5);
        let lb = model.forward(tokens(&b)).slice_dim(1, 0..5);
        close(la, lb, 0.0, name);
        // ...while the logits after the change do move.
        let la = model.forward(tokens(&a)).slice_dim(1, 5..t);
        let lb = model.forward(tokens(&b)).slice_dim(1, 5..t);
        let diff = (la - lb).abs().max().into_scalar::<f32>();
        assert!(diff > 1e-4, "{name}: later logits did not change");
    }
}

/// Decoding token by token (and in uneven chunks) through the cache gives the logits of one
/// full forward pass, for every variant and both MLA cache modes.
#[test]
fn cached_decode_equals_full_forward() {
    for (name, cfg) in variants() {
        device().seed(2);
        let model = Lm::new(&cfg, &device());
        let seq = random_tokens(2, 11, cfg.vocab_size, 3);
        let full = model.forward(tokens(&seq));
        for mode in [CacheMode::Latent, CacheMode::Naive] {
            // No room reserved (the buffers double: 4 -> 8 -> 16), too little (3 -> 6 -> 12),
            // and exactly enough.
            for (chunks, reserve) in [
                (vec![1; 11], 0),
                (vec![4, 1, 3, 1, 2], 0),
                (vec![2, 1, 3, 1, 4], 3),
                (vec![5, 1, 1, 1, 1, 1, 1], 11),
            ] {
                let mut cache = model.new_cache(mode).with_capacity(reserve);
                let mut outs = Vec::new();
                let mut at = 0;
                for n in &chunks {
                    let part: Vec<Vec<i64>> = seq.iter().map(|r| r[at..at + n].to_vec()).collect();
                    outs.push(model.forward_cached(tokens(&part), &mut cache));
                    at += n;
                }
                assert_eq!(cache.len(), 11);
                let reserved = cache.bytes_reserved();
                assert!(reserved >= cache.bytes_held(), "{name}: {reserved}");
                if reserve == 11 {
                    assert_eq!(reserved, cache.bytes_held(), "{name}: exact reserve");
                }
                let stepped = Tensor::cat(outs, 1);
                // The last-position shortcut generation uses agrees too.
                let mut short = model.new_cache(mode);
                let prefix: Vec<Vec<i64>> = seq.iter().map(|r| r[..10].to_vec()).collect();
                let _ = model.forward_cached_last(tokens(&prefix), &mut short);
                let last: Vec<Vec<i64>> = seq.iter().map(|r| r[10..].to_vec()).collect();
                let v = cfg.vocab_size;
                let got = model
                    .forward_cached_last(tokens(&last), &mut short)
                    .reshape([2, 1, v]);
                close(
                    full.clone().slice_dim(1, 10..11),
                    got,
                    2e-5,
                    &format!("{name} last"),
                );
                close(
                    full.clone(),
                    stepped,
                    2e-5,
                    &format!("{name} {mode:?} chunks {chunks:?}"),
                );
            }
        }
    }
}

/// Absorbed decoding over the latent cache equals naive decoding over decompressed K/V.
/// Tolerance 2e-5 absolute on logits of magnitude ~1: the two differ only in f32 summation
/// order (W_UK applied to the query instead of the key).
#[test]
fn absorbed_mla_equals_naive_mla() {
    for (name, cfg) in variants() {
        if !matches!(cfg.attention, AttentionConfig::Latent(_)) {
            continue;
        }
        device().seed(3);
        let model = Lm::new(&cfg, &device());
        let seq = random_tokens(3, 9, cfg.vocab_size, 5);
        let mut latent = model.new_cache(CacheMode::Latent);
        let mut naive = model.new_cache(CacheMode::Naive);
        // Prefill 5 tokens, then 4 single steps.
        for (from, to) in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9)] {
            let part: Vec<Vec<i64>> = seq.iter().map(|r| r[from..to].to_vec()).collect();
            let a = model.forward_cached(tokens(&part), &mut latent);
            let b = model.forward_cached(tokens(&part), &mut naive);
            close(a, b, 2e-5, name);
        }
        // The latent cache is what MLA promises: (d_c + d_h^R) per token per layer.
        let per_token = accounting::kv_cache(&cfg, CacheMode::Latent);
        assert_eq!(latent.elements_held(), 3 * 9 * per_token.elements_per_token);
        let naive_per_token = accounting::kv_cache(&cfg, CacheMode::Naive);
        assert_eq!(
            naive.elements_held(),
            3 * 9 * naive_per_token.elements_per_token
        );
        assert!(latent.elements_held() < naive.elements_held());
    }
}

/// The accounting formulas equal the built module and the tensors a cache holds.
#[test]
fn accounting_matches_the_built_model() {
    for (name, cfg) in variants() {
        let model = Lm::new(&cfg, &device());
        let counts = accounting::param_counts(&cfg);
        assert_eq!(model.num_params(), counts.total, "{name}: total");
        assert_eq!(model.embed_tokens.num_params(), counts.embedding, "{name}");
        let attn: usize = model.layers.iter().map(|l| l.self_attn.num_params()).sum();
        assert_eq!(attn, counts.attention, "{name}: attention");
        let mlp: usize = model.layers.iter().map(|l| l.mlp.num_params()).sum();
        assert_eq!(mlp, counts.mlp, "{name}: mlp");

        let mut cache = model.new_cache(CacheMode::Latent);
        let _ = model.forward_cached(tokens(&random_tokens(2, 6, cfg.vocab_size, 1)), &mut cache);
        let kv = accounting::kv_cache(&cfg, CacheMode::Latent);
        assert_eq!(
            cache.elements_held(),
            2 * 6 * kv.elements_per_token,
            "{name}: cache"
        );
        // f32 tensors: 4 bytes per element.
        assert_eq!(
            cache.bytes_held(),
            4 * cache.elements_held(),
            "{name}: bytes"
        );
    }
}

/// GQA with as many K/V heads as query heads is MHA: same weights, same logits.
#[test]
fn gqa_with_all_kv_heads_equals_mha() {
    let mha_cfg = common::model("attention = 'mha'\nn_heads = 4");
    let mut gqa_cfg = mha_cfg.clone();
    gqa_cfg.attention = AttentionConfig::Standard(StandardAttention {
        kind: mla_model::AttentionKind::Gqa,
        n_kv_heads: 4,
        head_dim: 8,
    });
    device().seed(4);
    let mha = Lm::new(&mha_cfg, &device());
    let gqa = Lm::new(&gqa_cfg, &device()).load_record(mha.clone().into_record());
    let seq = tokens(&random_tokens(2, 10, mha_cfg.vocab_size, 9));
    close(
        mha.forward(seq.clone()),
        gqa.forward(seq),
        0.0,
        "gqa == mha",
    );

    // And a gqa config with fewer K/V heads really is different (fewer parameters).
    let fewer: ModelSection = toml::from_str(&format!(
        "{}\nattention = 'gqa'\nn_heads = 4\nn_kv_heads = 2",
        common::BASE
    ))
    .unwrap();
    let fewer = fewer.resolve().unwrap();
    assert!(Lm::new(&fewer, &device()).num_params() < mha.num_params());
}

/// A few dozen AdamW steps on one batch drive the loss far down, for every variant.
#[test]
fn loss_decreases_when_overfitting_one_batch() {
    let train = device().autodiff();
    for (name, cfg) in variants() {
        train.seed(5);
        let mut model = Lm::new(&cfg, &train);
        let mut optim = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(0.0)
            .init();
        let seq = random_tokens(2, 13, cfg.vocab_size, 11);
        let inputs: Vec<Vec<i64>> = seq.iter().map(|r| r[..12].to_vec()).collect();
        let targets: Vec<Vec<i64>> = seq.iter().map(|r| r[1..].to_vec()).collect();
        let to = |rows: &[Vec<i64>]| {
            let (b, t) = (rows.len(), rows[0].len());
            Tensor::<2, Int>::from_data(TensorData::new(rows.concat(), [b, t]), &train)
        };
        let (x, y) = (to(&inputs), to(&targets));
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..40 {
            let loss = model.loss(x.clone(), y.clone());
            last = loss.clone().into_scalar::<f32>();
            first.get_or_insert(last);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        let first = first.unwrap();
        // Uniform guessing costs ln(vocab); memorising 24 tokens should get far below it.
        assert!(
            (first - (cfg.vocab_size as f32).ln()).abs() < 0.3,
            "{name}: initial loss {first} is not ~ln(vocab)"
        );
        assert!(last < 0.25 * first, "{name}: loss {first} -> {last}");
    }
}

#[test]
fn random_init_has_the_documented_std() {
    let mut cfg = common::model("attention = 'mla'\nn_heads = 4");
    cfg.n_layers = 8;
    device().seed(6);
    let model = Lm::new(&cfg, &device());
    let std = |t: Tensor<2>| {
        let v = t.into_data().try_into_vec::<f32>().unwrap();
        let n = v.len() as f64;
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n).sqrt()
    };
    let emb = std(model.embed_tokens.weight.val());
    assert!((emb - 0.02).abs() < 0.002, "embedding std {emb}");
    let mla_model::attention::Attention::Latent(attn) = &model.layers[0].self_attn else {
        panic!("mla expected")
    };
    let o = std(attn.o_proj.weight.val());
    let expected = 0.02 / 16f64.sqrt();
    assert!(
        (o - expected).abs() < 0.15 * expected,
        "o_proj std {o} vs {expected}"
    );
}

/// The fused attention op (training's default) and the explicit path it replaced give one
/// model the same logits, loss and gradient of every parameter, for every variant.
#[test]
fn fused_attention_trains_like_the_explicit_path() {
    use burn::module::{ModuleVisitor, Param};
    use mla_model::attention::sdpa::{AttentionKernel, set_attention_kernel};

    /// Every parameter's gradient, flattened, in visiting order.
    struct Grads<'a>(&'a GradientsParams, Vec<Vec<f32>>);
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self
                .0
                .get::<D>(param.id)
                .expect("every parameter has a gradient");
            self.1.push(g.into_data().try_into_vec::<f32>().unwrap());
        }
    }

    let train = device().autodiff();
    for (name, cfg) in variants() {
        train.seed(4);
        let model = Lm::new(&cfg, &train);
        let seq = random_tokens(2, 21, cfg.vocab_size, 9);
        let inputs: Vec<Vec<i64>> = seq.iter().map(|r| r[..20].to_vec()).collect();
        let targets: Vec<Vec<i64>> = seq.iter().map(|r| r[1..].to_vec()).collect();
        let to = |rows: &[Vec<i64>]| tokens(rows).to_device(&train);
        let run = |kernel| {
            set_attention_kernel(kernel);
            let logits = model.forward(to(&inputs));
            let loss = mla_model::cross_entropy(logits.clone(), to(&targets));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let mut v = Grads(&grads, vec![]);
            model.visit(&mut v);
            (logits.inner(), v.1)
        };
        let (fused_logits, fused) = run(AttentionKernel::Fused);
        let (explicit_logits, explicit) = run(AttentionKernel::Explicit);
        set_attention_kernel(AttentionKernel::Fused);
        close(fused_logits, explicit_logits, 1e-5, name);
        assert_eq!(fused.len(), explicit.len());
        for (i, (a, b)) in fused.iter().zip(&explicit).enumerate() {
            let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "{name}: parameter {i}'s gradient off by {worst} (scale {scale})"
            );
        }
    }
}
