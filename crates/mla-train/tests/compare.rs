//! `mla compare` on synthetic run directories (config.toml + metrics.jsonl + summary.json, no
//! training): valid PNG and SVG files, exact table values, seeds grouped with mean and spread,
//! and runs on other data or tokenizers flagged (an error with --strict).

mod common;

use std::path::{Path, PathBuf};

use common::{mla, run_ok};
use mla_train::compare::{self, Comparison};
use mla_train::config::{self, RunConfig};
use mla_train::metrics::{EvalRecord, Record, TrainRecord};

const BASE: &str = r#"
[model]
attention = "mla"
vocab_size = 300
d_model = 64
n_layers = 2
n_heads = 4
d_ff = 160
max_seq_len = 64
[data]
train = "data/x/train_*.bin"
val = "data/x/val_*.bin"
[train]
seq_len = 64
micro_batch = 4
max_steps = 200
"#;

/// A resolved config: BASE with `--set` overrides.
fn config(dir: &Path, sets: &[String]) -> RunConfig {
    let path = dir.join("base.toml");
    std::fs::write(&path, BASE).unwrap();
    config::load(&path, sets, &|_| Ok(300)).unwrap()
}

/// The synthetic loss of a run at a step: a decaying curve, shifted per seed.
fn loss_at(step: u64, seed: u64, offset: f32) -> f32 {
    offset + 2.0 + 4.0 * (-(step as f32) / 40.0).exp() + 0.01 * (seed % 7) as f32
}

/// Write a run directory with one train line per `log_every` steps and an eval line every
/// 50 steps, up to `steps`; `summary.json` when `finished`.
fn write_run(dir: &Path, cfg: &RunConfig, offset: f32, steps: u64, finished: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
    let seed = cfg.train.seed;
    let tps = cfg.tokens_per_step();
    let secs_per_step = 0.05 + 0.001 * (seed % 5) as f64;
    let mut lines = String::new();
    for step in 1..=steps {
        let r = Record::Train(TrainRecord {
            step,
            tokens: step * tps,
            loss: loss_at(step, seed, offset),
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: tps as f64 / secs_per_step,
            elapsed_s: step as f64 * secs_per_step,
            mfu: None,
            peak_memory_bytes: None,
        });
        lines.push_str(&serde_json::to_string(&r).unwrap());
        lines.push('\n');
        if step % 50 == 0 {
            let v = loss_at(step, seed, offset) + 0.1 + 0.002 * (step % 100) as f32;
            let r = Record::Eval(EvalRecord {
                step,
                tokens: step * tps,
                val_loss: v,
                val_ppl: v.exp(),
                elapsed_s: step as f64 * secs_per_step + 0.01,
            });
            lines.push_str(&serde_json::to_string(&r).unwrap());
            lines.push('\n');
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    if finished {
        let elapsed = steps as f64 * secs_per_step + 0.5;
        let summary = serde_json::json!({
            "run_dir": dir,
            "steps": steps,
            "tokens": steps * tps,
            "final_train_loss": loss_at(steps, seed, offset),
            "final_val_loss": null,
            "best_val_loss": null,
            "elapsed_s": elapsed,
            "tokens_per_s": (steps * tps) as f64 / elapsed,
            "last_checkpoint": null,
            "interrupted": false,
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }
}

fn sets(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// mla with 2 seeds, mha with 2 seeds, gqa with 1: five run directories under `root`.
fn ablation_like(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![];
    let arms: [(&str, Vec<String>, f32, usize); 3] = [
        ("mla", sets(&[]), 0.0, 2),
        (
            "mha",
            sets(&["model.attention=\"mha\"", "model.d_ff=176"]),
            0.05,
            2,
        ),
        (
            "gqa",
            sets(&["model.attention=\"gqa\"", "model.n_kv_heads=2"]),
            0.1,
            1,
        ),
    ];
    for (arm, arm_sets, offset, seeds) in arms {
        for i in 0..seeds as u64 {
            let mut s = arm_sets.clone();
            s.push(format!("train.seed={}", 1337 + i));
            let cfg = config(root, &s);
            let dir = root.join(format!("{arm}-s{}", 1337 + i));
            write_run(&dir, &cfg, offset, 200, true);
            dirs.push(dir);
        }
    }
    dirs
}

fn load(dirs: &[PathBuf]) -> Comparison {
    compare::compare(compare::load_runs(dirs).unwrap())
}

/// Walk a PNG's chunks, checking each CRC; returns (width, height, chunk types).
fn png_chunks(bytes: &[u8]) -> (u32, u32, Vec<String>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let crc = |data: &[u8]| {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    };
    let mut at = 8;
    let mut types = vec![];
    let (mut w, mut h) = (0, 0);
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        let stored = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(
            crc(&bytes[at + 4..at + 8 + len]),
            stored,
            "CRC of chunk {kind:?}"
        );
        if kind == b"IHDR" {
            w = u32::from_be_bytes(data[0..4].try_into().unwrap());
            h = u32::from_be_bytes(data[4..8].try_into().unwrap());
        }
        types.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "trailing bytes after the last chunk");
    (w, h, types)
}

#[test]
fn compare_writes_a_valid_png_and_svg_and_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ablation_like(tmp.path());
    let out = tmp.path().join("out");
    let mut c = mla();
    c.arg("compare").args(&dirs).arg("--out").arg(&out);
    let o = run_ok(c);
    let stdout = String::from_utf8_lossy(&o.stdout);

    let png = std::fs::read(out.join("compare.png")).unwrap();
    let (w, h, chunks) = png_chunks(&png);
    assert_eq!((w, h), (1600, 640));
    assert_eq!(chunks.first().map(String::as_str), Some("IHDR"));
    assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
    assert!(chunks.iter().any(|c| c == "IDAT"));
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    // The legend names attention type and KV cache per token; axes are labelled.
    let cmp = load(&dirs);
    for g in &cmp.groups {
        let entry = format!(
            "{} ({}, {} B/token)",
            g.label, g.attention, g.kv_cache_bytes_per_token
        );
        assert!(svg.contains(&entry), "legend entry {entry:?} missing");
    }
    assert!(svg.contains("tokens seen") && svg.contains("wall time (s)"));
    assert!(svg.contains("loss (nats/token)"));
    assert!(out.join("compare.json").exists());

    // Text table: a header and one row per group, seeds as mean ± spread.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].contains("run") && lines[0].contains("best val loss"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("mla [2 seeds]") && lines[1].contains('±'),
        "{stdout}"
    );
    assert!(lines[2].contains("mha [2 seeds]"), "{stdout}");
    assert!(
        lines[3].contains("gqa-s1337") && !lines[3].contains('±'),
        "{stdout}"
    );
    assert!(stdout.contains("half the range"), "{stdout}");
    // Columns line up: "attention" starts at the same place in every row.
    let col = lines[0].find("attention").unwrap();
    for (line, kind) in lines[1..4].iter().zip(["mla", "mha", "gqa"]) {
        assert!(line[col..].starts_with(kind), "{stdout}");
    }
}

#[test]
fn table_values_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ablation_like(tmp.path());
    let cmp = load(&dirs);
    assert_eq!(cmp.groups.len(), 3);
    assert!(cmp.mismatches.is_empty());
    let g_mla = &cmp.groups[0];
    assert_eq!(g_mla.runs, vec!["mla-s1337", "mla-s1338"]);
    assert_eq!(g_mla.seeds, vec![1337, 1338]);
    assert!(g_mla.finished);

    // Final train loss = the last train line; best val = the lowest eval line.
    let finals: Vec<f64> = [1337u64, 1338]
        .iter()
        .map(|&s| loss_at(200, s, 0.0) as f64)
        .collect();
    let s = g_mla.final_train_loss.unwrap();
    assert_eq!(s.mean, (finals[0] + finals[1]) / 2.0);
    assert_eq!(s.spread, (finals[1] - finals[0]).abs() / 2.0);
    assert_eq!((s.min, s.max, s.n), (finals[0], finals[1], 2));
    let best = |seed: u64| {
        (1..=4)
            .map(|k| loss_at(50 * k, seed, 0.0) + 0.1 + 0.002 * ((50 * k) % 100) as f32)
            .fold(f32::INFINITY, f32::min) as f64
    };
    let v = g_mla.best_val_loss.unwrap();
    assert_eq!(v.min, best(1337).min(best(1338)));
    assert_eq!(v.mean, (best(1337) + best(1338)) / 2.0);

    // Tokens/s and wall time from summary.json.
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    let (a, b) = (summary(&dirs[0]), summary(&dirs[1]));
    let t = g_mla.wall_time_s.unwrap();
    let (ea, eb) = (
        a["elapsed_s"].as_f64().unwrap(),
        b["elapsed_s"].as_f64().unwrap(),
    );
    assert_eq!(t.mean, (ea + eb) / 2.0);
    assert_eq!(t.spread, (ea - eb).abs() / 2.0);
    let tps = g_mla.tokens_per_s.unwrap();
    let (ta, tb) = (
        a["tokens_per_s"].as_f64().unwrap(),
        b["tokens_per_s"].as_f64().unwrap(),
    );
    assert_eq!(tps.mean, (ta + tb) / 2.0);

    // Parameters and KV cache from the accounting of the resolved model.
    let run = &cmp.runs[0];
    let p = mla_model::accounting::param_counts(&run.config.model).total;
    let kv = mla_model::accounting::kv_cache(
        &run.config.model,
        mla_model::accounting::CacheMode::Latent,
    );
    assert_eq!(g_mla.parameters, p);
    assert_eq!(g_mla.kv_cache_bytes_per_token, kv.bytes_per_token);
    assert_eq!(cmp.groups[2].attention, "gqa");

    // The mean curve is the mean of the seeds at each step; the band is their range.
    let p100 = g_mla.train_curve.iter().find(|p| p.step == 100).unwrap();
    let (l1, l2) = (
        loss_at(100, 1337, 0.0) as f64,
        loss_at(100, 1338, 0.0) as f64,
    );
    assert_eq!(
        (p100.mean, p100.min, p100.max),
        ((l1 + l2) / 2.0, l1.min(l2), l1.max(l2))
    );
    assert_eq!(g_mla.train_curve.len(), 200);
    assert_eq!(g_mla.val_curve.len(), 4);

    // --json prints the same numbers.
    let mut c = mla();
    c.arg("compare").args(&dirs).arg("--json").arg("--no-plot");
    let o = run_ok(c);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g0 = &j["groups"][0];
    assert_eq!(g0["label"], "mla [2 seeds]");
    assert_eq!(g0["final_train_loss"]["mean"].as_f64().unwrap(), s.mean);
    assert_eq!(g0["best_val_loss"]["min"].as_f64().unwrap(), v.min);
    assert_eq!(g0["parameters"].as_u64().unwrap() as usize, p);
    assert!(j["spread"].as_str().unwrap().contains("(max - min) / 2"));
}

#[test]
fn only_seeds_are_grouped_and_steps_align() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Same config, two seeds, one unfinished at step 120; a third run with another LR.
    let a = config(root, &sets(&["train.seed=1"]));
    let b = config(root, &sets(&["train.seed=2"]));
    let c = config(root, &sets(&["train.seed=1", "optim.lr=3e-4"]));
    write_run(&root.join("a-s1"), &a, 0.0, 200, true);
    write_run(&root.join("a-s2"), &b, 0.0, 120, false);
    write_run(&root.join("lr"), &c, 0.0, 200, true);
    // A directory of runs stands for the runs in it.
    let cmp = load(&[root.to_path_buf()]);
    assert_eq!(cmp.groups.len(), 2);
    let g = &cmp.groups[0];
    assert_eq!(g.label, "a [2 seeds]");
    assert!(!g.finished);
    assert_eq!((g.steps, g.max_steps), (120, 200));
    // Only the steps both seeds logged.
    assert_eq!(g.train_curve.last().unwrap().step, 120);
    assert_eq!(g.val_curve.len(), 2);
    // The unfinished run has no summary: its final loss is its last line.
    let f = g.final_train_loss.unwrap();
    let (x, y) = (loss_at(200, 1, 0.0) as f64, loss_at(120, 2, 0.0) as f64);
    assert_eq!((f.min, f.max), (x.min(y), x.max(y)));
    assert!(cmp.table().contains("120/200"), "{}", cmp.table());
    assert_eq!(cmp.groups[1].label, "lr");
}

#[test]
fn other_data_or_tokenizer_is_flagged_and_strict_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tok = |name: &str, content: &str| {
        let p = root.join(name);
        std::fs::write(&p, content).unwrap();
        format!("data.tokenizer={}", p.display())
    };
    let (t1, t1_copy, t2) = (
        tok("t1.json", "{\"v\": 1}"),
        tok("t1-copy.json", "{\"v\": 1}"),
        tok("t2.json", "{\"v\": 2}"),
    );
    let runs = [
        ("ref", sets(&[&t1])),
        // Same content under another path: the same tokenizer.
        ("copy", sets(&[&t1_copy, "train.seed=5"])),
        ("otherdata", sets(&[&t1, "data.train=data/y/train_*.bin"])),
        ("othertok", sets(&[&t2])),
    ];
    let mut dirs = vec![];
    for (name, s) in &runs {
        let cfg = config(root, s);
        let dir = root.join(name);
        write_run(&dir, &cfg, 0.0, 100, true);
        dirs.push(dir);
    }
    let cmp = load(&dirs);
    let flagged: Vec<(&str, &str)> = cmp
        .mismatches
        .iter()
        .map(|m| (m.run.as_str(), m.field.as_str()))
        .collect();
    assert_eq!(
        flagged,
        vec![("otherdata", "data.train"), ("othertok", "data.tokenizer")]
    );
    let marked: Vec<bool> = cmp.groups.iter().map(|g| g.mismatch).collect();
    assert_eq!(cmp.groups.len(), 4);
    assert_eq!(marked, vec![false, false, true, true]);
    let warning = cmp.warning().unwrap();
    assert!(
        warning.contains("otherdata: data.train is data/y/train_*.bin"),
        "{warning}"
    );
    assert!(warning.contains("othertok: data.tokenizer"), "{warning}");
    for line in cmp.table().lines().filter(|l| l.contains("other")) {
        assert!(line.starts_with('!'), "{line}");
    }
    assert!(cmp.check_strict().is_err());

    // The CLI warns on stderr, and --strict makes it an error.
    let mut c = mla();
    c.arg("compare").args(&dirs).arg("--no-plot");
    let o = run_ok(c);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: not every run"));
    let mut c = mla();
    c.arg("compare")
        .args(&dirs)
        .arg("--no-plot")
        .arg("--strict");
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("othertok") && err.contains("--strict"),
        "{err}"
    );
    // Without the mismatched runs, --strict passes.
    let mut c = mla();
    c.arg("compare")
        .args(&dirs[..2])
        .arg("--no-plot")
        .arg("--strict");
    run_ok(c);
}

#[test]
fn not_a_run_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = mla();
    c.arg("compare").arg(tmp.path()).arg("--no-plot");
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.toml"), "{err}");
}
