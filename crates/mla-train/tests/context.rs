//! Context extension: a fine-tune (or an evaluation) loads a checkpoint into a model that
//! differs from it only in max_seq_len, rope_scaling and rope_theta, and nothing else.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{data, debug_config, mla, run_ok, test_device, train_cmd, train_losses};
use mla_data::{ShardSet, TokenBatcher, TrainSampler};
use mla_train::RunConfig;
use mla_train::checkpoint::Checkpoint;

const YARN: &str =
    "model.rope_scaling={type=\"yarn\", factor=2.0, original_max_position_embeddings=64}";

fn finetune(from: &Path, run: &Path, data: &common::Data, sets: &[&str]) -> std::process::Command {
    let mut c = mla();
    c.arg("finetune")
        .arg(debug_config())
        .arg("--from")
        .arg(from)
        .arg("--run-dir")
        .arg(run);
    let device = format!("train.device={}", test_device());
    for s in data
        .sets()
        .iter()
        .map(String::as_str)
        .chain([device.as_str()])
        .chain(sets.iter().copied())
    {
        c.arg("--set").arg(s);
    }
    c
}

fn device() -> Device {
    mla_train::device::parse(&test_device())
        .unwrap()
        .device()
        .unwrap()
}

/// The loss of the first training step of `cfg`, computed here: the source's weights in the
/// extended model on the batches the sampler hands the trainer first.
fn first_step_loss(cfg: &RunConfig, source: &Path) -> f32 {
    let dev = device();
    let (model, _) = Checkpoint::open(source)
        .unwrap()
        .load_model_extending(&cfg.model, &dev)
        .unwrap();
    let shards = ShardSet::open_glob(&cfg.data.train, Some(cfg.model.vocab_size)).unwrap();
    let mut sampler = TrainSampler::new(shards, cfg.seq_len(), cfg.train.seed).unwrap();
    let mut sum = 0.0f64;
    for _ in 0..cfg.grad_accum() {
        let b = TokenBatcher.make(&sampler.next_batch(cfg.train.micro_batch), &dev);
        sum += model.loss(b.inputs, b.targets).into_scalar::<f32>() as f64;
    }
    (sum / cfg.grad_accum() as f64) as f32
}

#[test]
fn a_context_extended_finetune_starts_from_the_source_weights() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    run_ok(train_cmd(&data, &base, &[]));

    // max_seq_len 64 -> 128 with YaRN x2 and another rope_theta, trained at 128. The first
    // step's loss must equal the source's under the new RoPE within 2e-6 (a few f32 ulps; it
    // is bit-equal on flex), and the new RoPE must move it by more than 1e-5 (this small model
    // uses position little), so that a trainer ignoring it would fail.
    let ft = tmp.path().join("ft");
    let sets = [
        "model.max_seq_len=128",
        "train.seq_len=128",
        YARN,
        "model.rope_theta=100.0",
        "train.max_steps=1",
        "log.every=1",
        "schedule.warmup_steps=0",
    ];
    let out = run_ok(finetune(&base, &ft, &data, &sets));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("context extension: max_seq_len: 64 vs 128")
            && err.contains("rope_scaling")
            && err.contains("rope_theta: 10000.0 vs 100.0"),
        "{err}"
    );
    let cfg = RunConfig::from_resolved_file(&ft.join("config.toml")).unwrap();
    assert_eq!(cfg.model.max_seq_len, 128);
    let logged = f32::from_bits(train_losses(&ft)[0].1);
    let expected = first_step_loss(&cfg, &base);
    assert!(
        (logged - expected).abs() <= 2e-6,
        "first step {logged}, source evaluated with the new RoPE {expected}"
    );
    // The RoPE settings matter: with the source's RoPE the same batch scores differently.
    let mut plain = cfg.clone();
    plain.model.rope_scaling = None;
    plain.model.rope_theta = 10000.0;
    let without = first_step_loss(&plain, &base);
    assert!(
        (without - expected).abs() > 1e-5,
        "{without} vs {expected} (logged {logged})"
    );

    // A changed width (or anything else) is still refused, naming it.
    let bad = tmp.path().join("bad");
    let out = finetune(
        &base,
        &bad,
        &data,
        &["model.d_model=96", "model.max_seq_len=128"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("d_model: 64 vs 96")
            && err.contains("only max_seq_len, rope_scaling and rope_theta may differ")
            && !err.contains("max_seq_len: 64 vs 128"),
        "{err}"
    );
}

#[test]
fn eval_runs_past_the_training_length() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    run_ok(train_cmd(&data, &base, &["train.max_steps=5"]));
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut c = mla();
        c.arg("eval")
            .arg(&base)
            .args(["--data", &data.val, "--batches", "2", "--json", "--device"])
            .arg(test_device())
            .args(extra);
        serde_json::from_slice(&run_ok(c).stdout).unwrap()
    };
    let at64 = eval(&[]);
    assert_eq!(at64["seq_len"], 64);
    let plain = eval(&["--seq-len", "128"]);
    assert_eq!(plain["seq_len"], 128);
    assert_eq!(plain["tokens"], 2 * 4 * 128);
    let yarn = eval(&["--seq-len", "128", "--set", YARN]);
    assert_ne!(plain["loss"], yarn["loss"]);
    assert!(yarn["context"].to_string().contains("rope_scaling"));
    let mut c = mla();
    c.arg("eval")
        .arg(&base)
        .args(["--data", &data.val, "--set", "model.n_heads=2"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("n_heads: 4 vs 2"));
}
