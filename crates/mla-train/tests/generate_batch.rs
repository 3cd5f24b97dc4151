//! Batched generation: a prompt's completion is the same whether it is decoded alone or in a
//! batch with prompts of other lengths, for every attention type and cache (MLA latent and
//! naive, mha, gqa, mqa, and no cache), also when its slot was freed by a sequence that
//! stopped earlier; sampling is seeded per prompt. Then `mla generate --prompts` end to end:
//! JSON lines in input order, and the bad-input errors (empty file, malformed JSONL, a prompt
//! too long for the context) naming the file and line.

mod common;

use burn::tensor::Device;
use mla_model::{Lm, ModelConfig, ModelSection};
use mla_train::generate::{CacheChoice, GenerateOptions, Sampling, StopReason, generate};
use mla_train::generate_batch::{BatchError, generate_batch, prompt_seed};

/// Small models of every attention type; `init_std` raised so that greedy choices are far
/// from ties (as tests/generate.rs).
fn variants() -> Vec<(&'static str, ModelConfig)> {
    let base = "vocab_size = 97\nd_model = 32\nn_layers = 2\nn_heads = 4\nd_ff = 64\n\
                max_seq_len = 48\ninit_std = 0.1\n";
    [
        ("mha", "attention = 'mha'"),
        ("gqa", "attention = 'gqa'\nn_kv_heads = 2"),
        ("mqa", "attention = 'mqa'"),
        (
            "mla",
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

/// Seven prompts of 1 to 14 tokens.
fn prompts() -> Vec<Vec<u32>> {
    [5usize, 12, 1, 8, 3, 14, 6]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| ((i * 31 + j * 7 + 3) % 97) as u32).collect())
        .collect()
}

fn opts(cache: CacheChoice, sampling: Sampling, n: usize, eos: Option<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        sampling,
        cache,
        eos,
        ..Default::default()
    }
}

/// Each prompt alone, with the seed the batch gives it.
fn alone(m: &Lm, prompts: &[Vec<u32>], o: &GenerateOptions) -> Vec<(Vec<u32>, StopReason)> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut o = o.clone();
            o.sampling.seed = prompt_seed(o.sampling.seed, i);
            let r = generate(m, p, &o, |_| {}).unwrap();
            (r.tokens, r.stop)
        })
        .collect()
}

fn batched(
    m: &Lm,
    prompts: &[Vec<u32>],
    batch: usize,
    o: &GenerateOptions,
) -> Vec<(Vec<u32>, StopReason)> {
    let mut order = Vec::new();
    let (results, stats) = generate_batch(m, prompts, batch, o, |r| order.push(r.index)).unwrap();
    assert_eq!(results.len(), prompts.len());
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..prompts.len()).collect::<Vec<_>>(),
        "each finishes once"
    );
    assert_eq!(stats.slots, batch.min(prompts.len()));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.index, i, "results in input order");
        assert_eq!(r.prompt, prompts[i]);
    }
    results.into_iter().map(|r| (r.tokens, r.stop)).collect()
}

/// An EOS that stops some prompts early (the 3rd token of prompt 0's completion), so that
/// slots are freed and reused while other sequences are still running.
fn eos_for(m: &Lm, prompts: &[Vec<u32>], cache: CacheChoice) -> u32 {
    let free = alone(m, &prompts[..1], &opts(cache, Sampling::greedy(), 12, None));
    free[0].0[2]
}

#[test]
fn greedy_batched_equals_alone_for_every_attention_type_and_cache() {
    let prompts = prompts();
    for (name, cfg) in variants() {
        let m = model(&cfg, 1);
        let caches: &[CacheChoice] = if name == "mla" {
            &[
                CacheChoice::Latent,
                CacheChoice::Naive,
                CacheChoice::Recompute,
            ]
        } else {
            &[CacheChoice::Latent]
        };
        for &cache in caches {
            let eos = eos_for(&m, &prompts, cache);
            let o = opts(cache, Sampling::greedy(), 12, Some(eos));
            let want = alone(&m, &prompts, &o);
            let stops: Vec<StopReason> = want.iter().map(|w| w.1).collect();
            assert!(
                stops.contains(&StopReason::Eos) && stops.contains(&StopReason::MaxNewTokens),
                "{name}: some prompts stop early and free their slot: {stops:?}"
            );
            for batch in [3, 7, 1] {
                let got = batched(&m, &prompts, batch, &o);
                assert_eq!(got, want, "{name} {cache:?} batch {batch}");
            }
        }
    }
}

#[test]
fn sampling_is_seeded_per_prompt_whatever_the_batch() {
    let prompts = prompts();
    let (_, cfg) = &variants()[3];
    let m = model(cfg, 2);
    let s = Sampling {
        temperature: 1.0,
        top_k: Some(40),
        top_p: 0.95,
        seed: 9,
    };
    let o = opts(CacheChoice::Latent, s, 10, None);
    let want = alone(&m, &prompts, &o);
    assert_eq!(batched(&m, &prompts, 4, &o), want);
    assert_eq!(batched(&m, &prompts, 2, &o), want);
    // The same prompt twice in one batch: its two copies draw with different seeds.
    let twice = vec![prompts[0].clone(), prompts[0].clone()];
    let got = batched(&m, &twice, 2, &o);
    assert_ne!(got[0].0, got[1].0, "each prompt has its own seed");
}

/// More new tokens than the context holds: with --truncate each prompt keeps one token, and
/// each sequence stops when its context is full, as alone.
#[test]
fn a_full_context_stops_a_batched_sequence_as_alone() {
    let (_, cfg) = &variants()[0];
    let m = model(cfg, 3);
    let long: Vec<u32> = (0..46).map(|i| (i * 5 + 1) % 97).collect();
    let short: Vec<u32> = (0..3).map(|i| (i * 11 + 2) % 97).collect();
    let mut o = opts(CacheChoice::Latent, Sampling::greedy(), 60, None);
    o.truncate = true;
    let prompts = vec![long, short];
    let want = alone(&m, &prompts, &o);
    let (results, _) = generate_batch(&m, &prompts, 2, &o, |_| {}).unwrap();
    assert_eq!((results[0].truncated, results[1].truncated), (45, 2));
    for r in &results {
        assert_eq!(r.stop, StopReason::ContextFull);
        assert_eq!(r.prompt.len() + r.tokens.len(), cfg.max_seq_len);
    }
    let got: Vec<_> = results.into_iter().map(|r| (r.tokens, r.stop)).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_batches_and_prompts_are_refused_naming_the_prompt() {
    let (_, cfg) = &variants()[3];
    let m = model(cfg, 4);
    let o = opts(CacheChoice::Latent, Sampling::greedy(), 10, None);
    assert_eq!(
        generate_batch(&m, &[], 2, &o, |_| {}).unwrap_err(),
        BatchError::NoPrompts
    );
    assert_eq!(
        generate_batch(&m, &prompts(), 0, &o, |_| {}).unwrap_err(),
        BatchError::ZeroBatch
    );
    let mut p = prompts();
    p[2] = (0..45).collect();
    let e = generate_batch(&m, &p, 2, &o, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("prompt 3: the prompt (45 tokens) plus --max-new-tokens (10)"),
        "{e}"
    );
    p[2] = vec![4, 97];
    let e = generate_batch(&m, &p, 2, &o, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("prompt 3: prompt token id 97"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The command line.

fn generate_cmd(
    run_dir: &std::path::Path,
    prompts: &std::path::Path,
    extra: &[&str],
) -> std::process::Command {
    let mut c = common::mla();
    c.arg("generate").arg(run_dir).arg("--prompts").arg(prompts);
    c.args(extra);
    c
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cli_generates_from_a_prompts_file_and_names_bad_lines() {
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
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let prompts = [
        "The king",
        "",
        "A much longer prompt about the queen and the night",
        "Oh",
    ];
    let plain = file(
        "p.txt",
        &format!("{}\n{}\n\n{}\n{}\n", prompts[0], "", prompts[2], prompts[3]),
    );
    let greedy = ["--temperature", "0", "--max-new-tokens", "6"];
    // The blank line is skipped: three prompts, on lines 1, 4 and 5.
    let one = lines(
        &common::run_ok(generate_cmd(
            &run_dir,
            &plain,
            &[&greedy[..], &["--batch", "1"]].concat(),
        ))
        .stdout,
    );
    let three = common::run_ok(generate_cmd(
        &run_dir,
        &plain,
        &[&greedy[..], &["--batch", "3"]].concat(),
    ));
    let stats = String::from_utf8_lossy(&three.stderr).to_string();
    let three = lines(&three.stdout);
    assert_eq!(one, three, "batch 1 and batch 3 write the same lines");
    assert_eq!(three.len(), 3);
    for (row, (line, text)) in three
        .iter()
        .zip([(1, prompts[0]), (4, prompts[2]), (5, prompts[3])])
    {
        assert_eq!(row["line"], line);
        assert_eq!(row["prompt"], text);
        assert!(row["completion"].is_string());
        assert!(row["prompt_tokens"].as_u64().unwrap() >= 2, "{row}");
        let n = row["completion_tokens"].as_u64().unwrap();
        let stop = row["stop"].as_str().unwrap();
        assert!(
            n == 6 && stop == "max_new_tokens" || n < 6 && stop == "eos",
            "{row}"
        );
    }
    assert!(stats.contains("3 prompts | batch 3"), "{stats}");

    // JSONL with an --out file: the same completions.
    let jsonl = file(
        "p.jsonl",
        &format!(
            "{{\"prompt\": \"{}\"}}\n{{\"prompt\": \"{}\", \"id\": 7}}\n{{\"prompt\": \"{}\"}}\n",
            prompts[0], prompts[2], prompts[3]
        ),
    );
    let out = tmp.path().join("out.jsonl");
    common::run_ok(generate_cmd(
        &run_dir,
        &jsonl,
        &[&greedy[..], &["--out", out.to_str().unwrap()]].concat(),
    ));
    let written = lines(&std::fs::read(&out).unwrap());
    let completions = |rows: &[serde_json::Value]| -> Vec<String> {
        rows.iter().map(|r| r["completion"].to_string()).collect()
    };
    assert_eq!(completions(&written), completions(&three));

    let fails = |path: &std::path::Path, extra: &[&str]| {
        let out = generate_cmd(&run_dir, path, extra).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = fails(&file("empty.txt", "\n  \n"), &greedy);
    assert!(e.contains("empty.txt has no prompts"), "{e}");
    let e = fails(
        &file("bad.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": oops}\n"),
        &greedy,
    );
    assert!(e.contains("bad.jsonl line 2: not a JSON object"), "{e}");
    let e = fails(&file("nofield.jsonl", "{\"text\": \"a\"}\n"), &greedy);
    assert!(
        e.contains("nofield.jsonl line 1: no string field \"prompt\""),
        "{e}"
    );
    // debug.toml has max_seq_len 64: line 3 is too long with 10 new tokens.
    let long = file(
        "long.txt",
        &format!(
            "short\nalso short\n{}\n",
            "The queen waits for the night. ".repeat(20)
        ),
    );
    let e = fails(&long, &["--max-new-tokens", "10"]);
    assert!(
        e.contains("long.txt line 3: the prompt (") && e.contains("--truncate"),
        "{e}"
    );
    let ok = common::run_ok(generate_cmd(
        &run_dir,
        &long,
        &["--max-new-tokens", "10", "--truncate"],
    ));
    let rows = lines(&ok.stdout);
    assert_eq!(rows[2]["prompt_tokens"], 54, "64 - 10 tokens kept");
    assert!(rows[2]["truncated_tokens"].as_u64().unwrap() > 0);
    let warn = String::from_utf8_lossy(&ok.stderr);
    assert!(
        warn.contains("long.txt line 3: dropped the first"),
        "{warn}"
    );
}
