//! The throughput benchmark on tiny models: the max batch's cache fits the budget and one more
//! sequence does not (from the bytes the cache tensors hold, not only the formula); the report
//! and its files; a budget below one sequence is a clear error, from the library and the CLI.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use mla_model::accounting;
use mla_model::{Lm, ModelConfig, ModelSection};
use mla_train::bench::throughput::{self, ThroughputOptions, max_batch};
use mla_train::bench::{Arm, ArmKind, ArmWeights, arms_from_config};

fn base() -> ModelConfig {
    let s: ModelSection = toml::from_str(
        "attention = 'mla'\nvocab_size = 64\nd_model = 64\nn_layers = 2\nn_heads = 8\nd_ff = 96\n\
         max_seq_len = 32\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\n\
         v_head_dim = 8",
    )
    .unwrap();
    s.resolve().unwrap()
}

const CONTEXT: usize = 12;

fn arms() -> Vec<Arm> {
    let kinds = [ArmKind::Mla, ArmKind::Mha, ArmKind::Gqa, ArmKind::Mqa];
    arms_from_config(&base(), &kinds, CONTEXT, 1).unwrap()
}

/// A batched cache of `slots` sequences of `CONTEXT` tokens each, filled by a real prefill.
fn filled(arm: &Arm, slots: usize) -> mla_model::KvCache {
    let device = Device::flex();
    let ArmWeights::Random { seed } = arm.weights else {
        unreachable!()
    };
    device.seed(seed);
    let model = Lm::new(&arm.config, &device);
    let ids: Vec<i64> = (0..CONTEXT as i64).map(|i| (i * 7) % 64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, CONTEXT]), &device);
    let mut one = model.new_cache(arm.mode);
    let _ = model.forward_cached_last(tokens, &mut one);
    let mut cache = model.new_batched_cache(arm.mode, slots, CONTEXT);
    for s in 0..slots {
        cache.insert(s, &one, 0, CONTEXT);
    }
    cache
}

#[test]
fn the_max_batch_fits_the_budget_and_one_more_sequence_does_not() {
    // 40 kB: MHA (2 * 8 heads * 8 dims * 2 layers * 4 B = 1 KiB a token) fits 3 sequences
    // of 12 tokens, MLA (20 * 2 * 4 = 160 B a token) 20.
    let budget = 40_000;
    for arm in arms() {
        let per_token = accounting::kv_cache(&arm.config, arm.mode).bytes_per_token;
        let max = max_batch(budget, CONTEXT, per_token);
        assert!(max >= 1, "{}", arm.name);
        let fits = filled(&arm, max);
        assert!(
            fits.bytes_held() <= budget,
            "{}: {}",
            arm.name,
            fits.bytes_held()
        );
        assert_eq!(
            fits.bytes_reserved(),
            fits.bytes_held(),
            "{}: exact room",
            arm.name
        );
        let over = filled(&arm, max + 1);
        assert!(
            over.bytes_held() > budget,
            "{}: {} more",
            arm.name,
            over.bytes_held()
        );
    }
    let mha = arms().into_iter().find(|a| a.name == "mha").unwrap();
    let per_token = accounting::kv_cache(&mha.config, mha.mode).bytes_per_token;
    assert_eq!(max_batch(budget, CONTEXT, per_token), 3);
}

fn opts(budget: usize) -> ThroughputOptions {
    ThroughputOptions {
        budget,
        context: CONTEXT,
        new_tokens: 3,
        batches: None,
        repeats: 1,
        seed: 2,
        only: None,
    }
}

#[test]
fn the_report_runs_every_arm_to_its_budget_and_writes_its_files() {
    let arms = arms();
    let r = throughput::run_throughput(
        "tiny",
        &arms,
        &opts(40_000),
        &Device::flex(),
        "cpu f32",
        |_| {},
    )
    .unwrap();
    let names: Vec<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["mla", "mha", "gqa", "mqa"]);
    assert_eq!(r.mha_max_batch, Some(3));
    for a in &r.arms {
        let batches: Vec<usize> = a.points.iter().map(|p| p.batch).collect();
        assert_eq!(
            *batches.last().unwrap(),
            a.max_batch,
            "{}: ends at its budget",
            a.name
        );
        assert!(
            batches.windows(2).all(|w| w[0] < w[1]),
            "{}: {batches:?}",
            a.name
        );
        assert!(
            a.max_batch < 3 || batches.contains(&3),
            "{}: MHA's batch measured",
            a.name
        );
        for p in &a.points {
            assert_eq!(
                p.cache_bytes_held,
                a.cache_bytes_per_token * CONTEXT * p.batch
            );
            assert!(p.cache_bytes_reserved <= r.budget_bytes);
            assert!(p.tokens_per_s > 0.0);
        }
    }
    // The table's ratio column is against MHA's own max batch.
    let (mha, mla) = (&r.arms[1], &r.arms[0]);
    assert!(mla.max_batch > mha.max_batch);
    let table = r.table();
    assert!(
        table.contains("max batch") && table.contains("x MHA"),
        "{table}"
    );
    assert!(table.contains("1.00"), "MHA against itself: {table}");
    for a in &r.arms {
        if a.rss_peak_bytes.is_some() {
            assert_eq!(a.within_memory, Some(true), "{}: {table}", a.name);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path()).unwrap();
    for f in [
        "throughput.json",
        "throughput.md",
        "throughput.png",
        "throughput.svg",
    ] {
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(len > 100, "{f}: {len} bytes");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("throughput.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["arms"][0]["model"]["kv_lora_rank"], 16,
        "each arm's model for the peer"
    );
    let svg = std::fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
    assert!(svg.contains("max batch 3"), "the MHA curve's end is named");
}

#[test]
fn a_budget_below_one_sequence_is_refused() {
    let arms = arms();
    // MLA needs 160 B a token: 1920 B for one sequence of 12; MHA 12 KiB.
    let e = throughput::run_throughput("tiny", &arms, &opts(5_000), &Device::flex(), "cpu", |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("mha: a KV-cache budget of 5000 bytes holds no sequence at context 12")
            && e.contains("needs 12288 bytes")
            && e.contains("--kv-budget"),
        "{e}"
    );
    let mut o = opts(40_000);
    o.new_tokens = CONTEXT;
    let e = throughput::run_throughput("tiny", &arms, &o, &Device::flex(), "cpu", |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--new-tokens"), "{e}");
}

#[test]
fn cli_runs_the_throughput_bench_and_refuses_a_tiny_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("m.toml");
    std::fs::write(
        &config,
        "[model]\nattention = 'mla'\nvocab_size = 64\nd_model = 64\nn_layers = 2\nn_heads = 8\n\
         d_ff = 96\nmax_seq_len = 32\nkv_lora_rank = 16\nqk_nope_head_dim = 8\n\
         qk_rope_head_dim = 4\nv_head_dim = 8\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let ok = common::run_ok({
        let mut c = common::mla();
        c.args(["bench", "throughput"]).arg(&config).args([
            "--kv-budget",
            "40kB",
            "--context",
            "12",
            "--new-tokens",
            "2",
            "--attn",
            "mla,mha",
            "--repeat",
            "1",
            "--out",
        ]);
        c.arg(&out);
        c
    });
    let table = String::from_utf8_lossy(&ok.stdout);
    assert!(
        table.contains("mla") && table.contains("mha") && table.contains("max batch"),
        "{table}"
    );
    assert!(out.join("throughput.png").exists());
    // Each arm ran in a process of its own, within its memory limit.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("throughput.json")).unwrap())
            .unwrap();
    assert_eq!(json["isolated"], true);
    for a in json["arms"].as_array().unwrap() {
        assert_ne!(a["within_memory"], false, "{a}");
    }

    let mut c = common::mla();
    c.args(["bench", "throughput"]).arg(&config).args([
        "--kv-budget",
        "1KB",
        "--context",
        "12",
        "--new-tokens",
        "2",
    ]);
    let bad = c.output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("holds no sequence at context 12"), "{err}");
}
