//! `mla convert` end to end: a trained mha/gqa/mqa run into an MLA checkpoint that eval,
//! generate, finetune and (where representable) export take; calibration loss against the
//! rank; bad requests refused with nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Data, data, debug_config, mla, run_ok, test_device, train_cmd, train_losses};

/// configs/debug.toml with a standard-attention [model] of the same size (d_model 64, 4 heads
/// of 16), written next to the data.
fn standard_config(data: &Data, attention: &str, kv: usize) -> PathBuf {
    let text = std::fs::read_to_string(debug_config()).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    let model: toml::Table = format!(
        "attention = '{attention}'\nd_model = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = {kv}\n\
         d_ff = 160\nmax_seq_len = 64"
    )
    .parse()
    .unwrap();
    table.insert("model".into(), toml::Value::Table(model));
    let path = data.dir.path().join(format!("{attention}.toml"));
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

fn train_standard(data: &Data, root: &Path, attention: &str, kv: usize) -> PathBuf {
    let run = root.join(attention);
    let mut c = mla();
    c.arg("train")
        .arg(standard_config(data, attention, kv))
        .arg("--run-dir")
        .arg(&run);
    let device = format!("train.device={}", test_device());
    for s in data.sets().iter().map(String::as_str).chain([
        "train.max_steps=20",
        "checkpoint.every=0",
        device.as_str(),
    ]) {
        c.arg("--set").arg(s);
    }
    run_ok(c);
    run
}

fn convert_cmd(src: &Path, out: &Path, r: usize, d: usize, extra: &[&str]) -> Command {
    let mut c = mla();
    c.arg("convert")
        .arg(src)
        .args(["--kv-lora-rank", &r.to_string()])
        .args(["--qk-rope-head-dim", &d.to_string()])
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("convert.json")).unwrap()).unwrap()
}

fn fails_with(mut c: Command, needle: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{c:?}: {err}");
    assert!(err.contains(needle), "{c:?}: expected {needle:?} in {err}");
}

/// The calibration loss never increases with the latent rank, and at full rank equals the
/// source's with the same partial RoPE; the converted directory evaluates, generates,
/// fine-tunes (a config without [model] takes the converted model), and refuses export where
/// HF cannot express its rotary frequencies.
#[test]
fn mha_converts_and_the_result_works_everywhere() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let src = train_standard(&data, tmp.path(), "mha", 4);
    let calib = [
        "--rope-select",
        "2norm",
        "--calib",
        &data.train,
        "--calib-tokens",
        "2048",
    ];
    // head_dim 16, D = 8: one pair per head rotary, 14 nope dims; full rank 4 x (14 + 16)
    let mut last = f64::INFINITY;
    let mut losses = vec![];
    for r in [4, 12, 32, 64, 120] {
        let out = tmp.path().join(format!("mla-{r}"));
        run_ok(convert_cmd(&src, &out, r, 8, &calib));
        let rep = report(&out);
        let l = &rep["calibration_loss"];
        let loss = l["converted"].as_f64().unwrap();
        // 1e-4: the f32 evaluation's noise
        assert!(loss <= last + 1e-4, "rank {r}: {loss} after {last}");
        last = loss;
        losses.push(loss);
        if r == 120 {
            let exact = l["partial_rope_shared_key"].as_f64().unwrap();
            assert!((loss - exact).abs() < 1e-4, "full rank {loss} vs {exact}");
            assert!(l["partial_rope_per_head"].as_f64().unwrap() > 0.0);
        }
        assert_eq!(rep["layers"].as_array().unwrap().len(), 2);
    }
    assert!(
        losses[0] > losses[4] + 0.01,
        "rank 4 should cost something: {losses:?}"
    );

    let dir = tmp.path().join("mla-32");
    let cfg = mla_train::RunConfig::from_resolved_file(&dir.join("config.toml")).unwrap();
    assert_eq!(cfg.model.kind(), mla_model::AttentionKind::Mla);
    assert!(Path::new(&cfg.data.tokenizer).starts_with(std::path::absolute(&dir).unwrap()));
    assert!(dir.join("tokenizer.json").is_file());

    let out = run_ok({
        let mut c = mla();
        c.arg("eval")
            .arg(&dir)
            .args(["--data", &data.val, "--json"]);
        c
    });
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(eval["loss"].as_f64().unwrap() < 5.0, "{eval}");
    run_ok({
        let mut c = mla();
        c.arg("generate").arg(&dir).args([
            "--prompt",
            "The king",
            "--max-new-tokens",
            "5",
            "--seed",
            "1",
        ]);
        c
    });
    let export = tmp.path().join("hf");
    fails_with(
        {
            let mut c = mla();
            c.arg("export").arg(&dir).arg("--out").arg(&export);
            c
        },
        "partial RoPE",
    );
    assert!(!export.exists());

    // Fine-tune from it with a config that has no [model].
    let ft_cfg = data.dir.path().join("ft.toml");
    let mut table: toml::Table = std::fs::read_to_string(debug_config())
        .unwrap()
        .parse()
        .unwrap();
    table.remove("model");
    std::fs::write(&ft_cfg, toml::to_string(&table).unwrap()).unwrap();
    let ft = tmp.path().join("ft");
    let device = format!("train.device={}", test_device());
    let mut c = mla();
    c.arg("finetune")
        .arg(&ft_cfg)
        .arg("--from")
        .arg(&dir)
        .arg("--run-dir")
        .arg(&ft);
    for s in data.sets().iter().map(String::as_str).chain([
        "train.max_steps=3",
        "schedule.warmup_steps=0",
        device.as_str(),
    ]) {
        c.arg("--set").arg(s);
    }
    run_ok(c);
    let first = f32::from_bits(train_losses(&ft)[0].1) as f64;
    assert!(
        (first - losses[2]).abs() < 0.5,
        "fine-tune starts at {first}, the converted model's calibration loss is {}",
        losses[2]
    );
}

/// GQA and MQA sources convert; an MQA source with uniform pairs at D = head_dim / 2 has the
/// standard rotary frequencies of its rope slice, so it exports to HF.
#[test]
fn gqa_and_mqa_convert() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let gqa = train_standard(&data, tmp.path(), "gqa", 2);
    let out = tmp.path().join("from-gqa");
    let opts = [
        "--rope-select",
        "high",
        "--balance-kv",
        "--calib",
        &data.train,
        "--calib-tokens",
        "1024",
    ];
    run_ok(convert_cmd(&gqa, &out, 24, 8, &opts));
    let rep = report(&out);
    assert_eq!(rep["pairs"], serde_json::json!([[0, 1], [0, 1]]));
    assert!(rep["layers"][0]["kv_balance"].as_f64().unwrap() != 1.0);
    // The same model exported as an HF Llama directory (rotate-half weights) converts to the
    // same function.
    let hf_dir = tmp.path().join("gqa-hf");
    run_ok({
        let mut c = mla();
        c.arg("export").arg(&gqa).arg("--out").arg(&hf_dir);
        c
    });
    let from_hf = tmp.path().join("from-gqa-hf");
    run_ok(convert_cmd(&hf_dir, &from_hf, 24, 8, &opts));
    let loss = |dir: &Path| {
        report(dir)["calibration_loss"]["converted"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (loss(&out) - loss(&from_hf)).abs() < 1e-4,
        "{} vs {}",
        loss(&out),
        loss(&from_hf)
    );
    assert!(
        report(&from_hf)["source"]
            .as_str()
            .unwrap()
            .contains("HF Llama")
    );

    let mqa = train_standard(&data, tmp.path(), "mqa", 1);
    let out = tmp.path().join("from-mqa");
    run_ok(convert_cmd(
        &mqa,
        &out,
        24,
        8,
        &["--rope-select", "uniform"],
    ));
    let cfg = mla_train::RunConfig::from_resolved_file(&out.join("config.toml")).unwrap();
    assert_eq!(
        cfg.model.partial_rope, None,
        "uniform at D = 8 of 16 is the standard RoPE"
    );
    run_ok({
        let mut c = mla();
        c.arg("export")
            .arg(&out)
            .arg("--out")
            .arg(tmp.path().join("hf"));
        c
    });
    assert!(tmp.path().join("hf/config.json").is_file());
}

/// An MLA source, ranks and rope widths out of range, 2norm without calibration, a missing
/// tokenizer and an existing output: one clear error each, nothing written.
#[test]
fn bad_inputs_write_nothing() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let mla_run = tmp.path().join("mla");
    run_ok(train_cmd(
        &data,
        &mla_run,
        &["train.max_steps=2", "schedule.warmup_steps=0"],
    ));
    let mha = train_standard(&data, tmp.path(), "mha", 4);
    let out = tmp.path().join("out");
    fails_with(
        convert_cmd(&mla_run, &out, 8, 8, &[]),
        "already an MLA model",
    );
    fails_with(convert_cmd(&mha, &out, 0, 8, &[]), "must be in 1..=120");
    fails_with(convert_cmd(&mha, &out, 121, 8, &[]), "must be in 1..=120");
    fails_with(
        convert_cmd(&mha, &out, 8, 6, &[]),
        "multiple of 2 x n_kv_heads = 8",
    );
    fails_with(convert_cmd(&mha, &out, 8, 64, &[]), "leaving no nope dims");
    fails_with(
        convert_cmd(&mha, &out, 8, 8, &["--rope-select", "2norm"]),
        "give --calib",
    );
    fails_with(
        convert_cmd(&mha, &out, 8, 8, &["--to", "gqa"]),
        "only target is mla",
    );
    // The source run's tokenizer is gone.
    let moved = data.tokenizer.with_extension("moved");
    std::fs::rename(&data.tokenizer, &moved).unwrap();
    fails_with(convert_cmd(&mha, &out, 8, 8, &[]), "needs its tokenizer");
    std::fs::rename(&moved, &data.tokenizer).unwrap();
    assert!(!out.exists(), "nothing written");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // An existing, non-empty output is never touched.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    fails_with(convert_cmd(&mha, &out, 8, 8, &[]), "not empty");
    assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"x");
}
