//! Generation: the cached decode loops equal recomputing the whole sequence, for every
//! attention type and both MLA caches; sampling is reproducible under a seed and its edge
//! cases reduce to greedy; prompts that do not fit fail or are truncated; EOS stops. Then the
//! `mla generate` command end to end on a tiny trained run.

mod common;

use burn::tensor::Device;
use mla_model::{Lm, ModelConfig, ModelSection};
use mla_train::generate::{
    CacheChoice, GenerateError, GenerateOptions, GenerationResult, Sampling, StopReason, generate,
};

/// Small models of every attention type. `init_std` is raised so that logits are spread out
/// and greedy choices are far from ties that f32 summation order could flip.
fn variants() -> Vec<(&'static str, ModelConfig)> {
    let base = "vocab_size = 97\nd_model = 32\nn_layers = 2\nn_heads = 4\nd_ff = 64\n\
                max_seq_len = 48\ninit_std = 0.1\n";
    [
        ("mha", "attention = 'mha'"),
        ("gqa", "attention = 'gqa'\nn_kv_heads = 2"),
        ("mqa", "attention = 'mqa'"),
        (
            "mla",
            "attention = 'mla'\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\nv_head_dim = 8",
        ),
        (
            "mla-q-lora",
            "attention = 'mla'\nq_lora_rank = 12\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\nv_head_dim = 8",
        ),
    ]
    .into_iter()
    .map(|(name, extra)| {
        let s: ModelSection = toml::from_str(&format!("{base}{extra}")).unwrap();
        (name, s.resolve().unwrap())
    })
    .collect()
}

fn model(cfg: &ModelConfig, seed: u64) -> Lm {
    let device = Device::flex();
    device.seed(seed);
    Lm::new(cfg, &device)
}

const PROMPT: [u32; 5] = [3, 41, 7, 88, 19];

fn run(model: &Lm, prompt: &[u32], opts: &GenerateOptions) -> GenerationResult {
    let mut streamed = Vec::new();
    let r = generate(model, prompt, opts, |id| streamed.push(id)).unwrap();
    assert_eq!(streamed, r.tokens, "on_token sees every token, in order");
    r
}

fn opts(cache: CacheChoice, sampling: Sampling, n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        sampling,
        cache,
        ..Default::default()
    }
}

fn sampled(temperature: f64, top_k: Option<usize>, top_p: f64, seed: u64) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

#[test]
fn cached_greedy_equals_recomputed_greedy_for_every_attention_type() {
    for (name, cfg) in variants() {
        let m = model(&cfg, 1);
        let reference = run(
            &m,
            &PROMPT,
            &opts(CacheChoice::Recompute, Sampling::greedy(), 20),
        );
        assert_eq!(reference.tokens.len(), 20, "{name}");
        assert_eq!(reference.stop, StopReason::MaxNewTokens);
        assert_eq!(reference.cache_bytes, 0);
        for cache in [CacheChoice::Latent, CacheChoice::Naive] {
            let r = run(&m, &PROMPT, &opts(cache, Sampling::greedy(), 20));
            assert_eq!(r.tokens, reference.tokens, "{name} {cache:?}");
            // The last token is never fed: prompt + 19 tokens cached.
            assert_eq!(r.cache_tokens, PROMPT.len() + 19, "{name} {cache:?}");
            let mode = match cache {
                CacheChoice::Naive => mla_model::CacheMode::Naive,
                _ => mla_model::CacheMode::Latent,
            };
            let per_token = mla_model::accounting::kv_cache(&cfg, mode).bytes_per_token;
            assert_eq!(
                r.cache_bytes,
                per_token * r.cache_tokens,
                "{name} {cache:?}"
            );
            assert_eq!(r.decode_steps, 19);
        }
    }
}

/// Absorbed (latent) and naive MLA give the same tokens even when sampling, where every
/// probability matters, not only the argmax.
#[test]
fn absorbed_and_naive_mla_sample_the_same_tokens() {
    for (name, cfg) in variants().into_iter().filter(|(n, _)| n.starts_with("mla")) {
        let m = model(&cfg, 2);
        let s = sampled(1.0, None, 1.0, 11);
        let latent = run(&m, &PROMPT, &opts(CacheChoice::Latent, s.clone(), 20));
        let naive = run(&m, &PROMPT, &opts(CacheChoice::Naive, s.clone(), 20));
        let none = run(&m, &PROMPT, &opts(CacheChoice::Recompute, s, 20));
        assert_eq!(latent.tokens, naive.tokens, "{name}");
        assert_eq!(latent.tokens, none.tokens, "{name}");
        assert!(
            latent.cache_bytes * 4 <= naive.cache_bytes,
            "{name}: the latent cache ({} B) is at most a quarter of the naive one ({} B)",
            latent.cache_bytes,
            naive.cache_bytes
        );
    }
}

#[test]
fn a_seed_fixes_the_sample_and_another_seed_changes_it() {
    for (name, cfg) in variants() {
        let m = model(&cfg, 3);
        let go = |seed| {
            run(
                &m,
                &PROMPT,
                &opts(CacheChoice::Latent, sampled(1.0, None, 1.0, seed), 24),
            )
            .tokens
        };
        let a = go(5);
        assert_eq!(a, go(5), "{name}");
        // 24 draws over 97 tokens at temperature 1 from a near-flat distribution: a collision
        // has probability far below 1e-20.
        assert_ne!(a, go(6), "{name}");
        let greedy = run(
            &m,
            &PROMPT,
            &opts(CacheChoice::Latent, Sampling::greedy(), 24),
        )
        .tokens;
        assert_ne!(a, greedy, "{name}: temperature 1 should not be greedy");
    }
}

#[test]
fn sampling_edge_cases_reduce_to_greedy() {
    for (name, cfg) in variants() {
        let m = model(&cfg, 4);
        let greedy = run(
            &m,
            &PROMPT,
            &opts(CacheChoice::Latent, Sampling::greedy(), 16),
        )
        .tokens;
        for (what, s) in [
            ("top-k 1", sampled(1.5, Some(1), 1.0, 9)),
            ("top-p 1e-9", sampled(1.5, None, 1e-9, 9)),
            ("top-p 1e-9 with top-k 5", sampled(1.5, Some(5), 1e-9, 9)),
            ("temperature 0", sampled(0.0, Some(40), 0.9, 9)),
        ] {
            let r = run(&m, &PROMPT, &opts(CacheChoice::Latent, s, 16));
            assert_eq!(r.tokens, greedy, "{name}: {what}");
        }
        // top-p = 1 and top-k = vocab keep everything: the same draws as no limit at all.
        let plain = run(
            &m,
            &PROMPT,
            &opts(CacheChoice::Latent, sampled(1.0, None, 1.0, 9), 16),
        );
        let wide = run(
            &m,
            &PROMPT,
            &opts(
                CacheChoice::Latent,
                sampled(1.0, Some(cfg.vocab_size), 1.0, 9),
                16,
            ),
        );
        assert_eq!(plain.tokens, wide.tokens, "{name}");
    }
}

#[test]
fn eos_stops_generation() {
    let (_, cfg) = &variants()[3];
    let m = model(cfg, 5);
    let greedy = run(
        &m,
        &PROMPT,
        &opts(CacheChoice::Latent, Sampling::greedy(), 12),
    )
    .tokens;
    // Stop at the first occurrence of the 4th token.
    let eos = greedy[3];
    let first = greedy.iter().position(|&t| t == eos).unwrap();
    let mut o = opts(CacheChoice::Latent, Sampling::greedy(), 12);
    o.eos = Some(eos);
    let r = run(&m, &PROMPT, &o);
    assert_eq!(r.stop, StopReason::Eos);
    assert_eq!(r.tokens, greedy[..first], "EOS itself is not returned");
}

#[test]
fn prompts_that_do_not_fit_fail_or_are_truncated() {
    let (_, cfg) = &variants()[4];
    let m = model(cfg, 6);
    let long: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 97).collect();
    let mut o = opts(CacheChoice::Latent, Sampling::greedy(), 10);
    let e = generate(&m, &long, &o, |_| {}).unwrap_err();
    assert!(matches!(
        e,
        GenerateError::TooLong {
            prompt: 40,
            max_new_tokens: 10,
            max_seq_len: 48
        }
    ));
    let msg = e.to_string();
    for needle in ["40 tokens", "(10)", "48 tokens", "--truncate"] {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }

    o.truncate = true;
    let r = run(&m, &long, &o);
    assert_eq!(r.truncated, 2);
    assert_eq!(r.prompt, long[2..]);
    assert_eq!(r.tokens.len(), 10);
    let direct = run(
        &m,
        &long[2..],
        &opts(CacheChoice::Latent, Sampling::greedy(), 10),
    );
    assert_eq!(r.tokens, direct.tokens, "truncation keeps the last tokens");

    // More new tokens than the context holds: one prompt token is kept and generation stops
    // when the context is full.
    let mut o = opts(CacheChoice::Naive, Sampling::greedy(), 100);
    o.truncate = true;
    let r = run(&m, &long, &o);
    assert_eq!(r.prompt, long[39..]);
    assert_eq!(r.stop, StopReason::ContextFull);
    assert_eq!(r.prompt.len() + r.tokens.len(), cfg.max_seq_len);

    let e = generate(&m, &[], &o, |_| {}).unwrap_err();
    assert_eq!(e, GenerateError::EmptyPrompt);
    let e = generate(&m, &[3, 97], &o, |_| {}).unwrap_err();
    assert!(e.to_string().contains("id 97"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The command line.

fn generate_cmd(run_dir: &std::path::Path, prompt: &str, extra: &[&str]) -> std::process::Command {
    let mut c = common::mla();
    c.arg("generate").arg(run_dir).arg("--prompt").arg(prompt);
    c.args(extra);
    c
}

#[test]
fn cli_generates_reproducibly_and_every_cache_agrees() {
    let data = common::data();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    common::run_ok(common::train_cmd(
        &data,
        &run_dir,
        &[
            "train.max_steps=8",
            "eval.every=0",
            "checkpoint.every=0",
            "log.tensorboard=false",
        ],
    ));

    let prompt = "The king speaks of";
    let sample = |extra: &[&str]| {
        let mut args = vec!["--max-new-tokens", "10"];
        args.extend_from_slice(extra);
        let out = common::run_ok(generate_cmd(&run_dir, prompt, &args));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stdout.starts_with(prompt),
            "the prompt is echoed: {stdout:?}"
        );
        (stdout, stderr)
    };
    let (a, stats) = sample(&["--seed", "1"]);
    let (b, _) = sample(&["--seed", "1"]);
    assert_eq!(a, b, "the same seed gives the same text");
    assert!(a.len() > prompt.len(), "some text was generated: {a:?}");
    for needle in [
        "prompt",
        "generated",
        "prefill",
        "tokens/s",
        "cache latent",
        "seed 1",
    ] {
        assert!(
            stats.contains(needle),
            "{needle:?} not in the stats line: {stats}"
        );
    }

    let (latent, _) = sample(&["--temperature", "0", "--cache", "latent"]);
    let (naive, _) = sample(&["--temperature", "0", "--cache", "naive"]);
    let (none, stats) = sample(&["--temperature", "0", "--cache", "none"]);
    assert_eq!(
        latent, none,
        "greedy with the latent cache = greedy recomputing everything"
    );
    assert_eq!(naive, none);
    assert!(stats.contains("cache none"), "{stats}");

    // debug.toml has max_seq_len 64: a long prompt fails with both numbers, or is truncated.
    let long = "The queen waits for the night. ".repeat(20);
    let out = generate_cmd(&run_dir, &long, &["--max-new-tokens", "10", "--seed", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(10)") && err.contains("64 tokens") && err.contains("--truncate"),
        "{err}"
    );
    let out = common::run_ok(generate_cmd(
        &run_dir,
        &long,
        &["--max-new-tokens", "10", "--seed", "1", "--truncate"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("keeping the last 54"),
        "{err}"
    );
}
