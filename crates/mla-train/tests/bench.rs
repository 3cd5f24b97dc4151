//! The decode benchmark on tiny models: cache bytes equal the accounting and order as the
//! paper's Table 1 says, the outputs (JSON, Markdown, PNG, SVG) are well formed, and the
//! command runs on a preset and on a checkpoint.

mod common;

use std::path::Path;

use burn::tensor::Device;
use mla_model::accounting::{self, CacheMode};
use mla_model::{Lm, ModelConfig, ModelSection};
use mla_train::ablate::D_FF_STEP;
use mla_train::bench::{self, ArmKind, DecodeOptions, DecodeReport, arms_from_config};

/// 8 heads, so that GQA (n_heads / 4 = 2 K/V heads) sits strictly between MQA and MHA.
fn base() -> ModelConfig {
    let s: ModelSection = toml::from_str(
        "attention = 'mla'\nvocab_size = 64\nd_model = 64\nn_layers = 2\nn_heads = 8\nd_ff = 96\n\
         max_seq_len = 32\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\n\
         v_head_dim = 8",
    )
    .unwrap();
    s.resolve().unwrap()
}

fn opts() -> DecodeOptions {
    DecodeOptions {
        contexts: vec![16, 8],
        decode_tokens: 2,
        repeats: 2,
        batch: 2,
        seed: 3,
    }
}

fn run_tiny() -> DecodeReport {
    let arms = arms_from_config(&base(), &ArmKind::ALL, 18, 1).unwrap();
    bench::run_decode("tiny", &arms, &opts(), &Device::flex(), "cpu", |_| {}).unwrap()
}

fn arm<'a>(r: &'a DecodeReport, name: &str) -> &'a bench::ArmReport {
    r.arms.iter().find(|a| a.name == name).unwrap()
}

#[test]
fn arms_are_matched_and_cache_bytes_follow_the_accounting() {
    let arms = arms_from_config(&base(), &ArmKind::ALL, 18, 1).unwrap();
    let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["mla", "mla-naive", "mha", "gqa", "mqa"]);
    let base_params = accounting::param_counts(&base()).total;
    for a in &arms {
        let c = &a.config;
        assert_eq!(
            (
                c.vocab_size,
                c.d_model,
                c.n_layers,
                c.n_heads,
                c.max_seq_len
            ),
            (64, 64, 2, 8, 18),
            "{}",
            a.name
        );
        // Matched through d_ff: within half a d_ff step (3 d_model weights per layer each).
        let params = accounting::param_counts(c).total;
        let half_step = 3 * c.n_layers * c.d_model * D_FF_STEP / 2;
        assert!(
            params.abs_diff(base_params) <= half_step,
            "{}: {params} vs {base_params}: {}",
            a.name,
            a.change
        );
    }
    let mut want = base();
    want.max_seq_len = 18;
    assert_eq!(arms[0].config, want, "MLA keeps the config's dims");
    assert_eq!(arms[1].config, want, "MLA naive is the same model");
    let mla_model::AttentionConfig::Standard(gqa) = arms[3].config.attention else {
        panic!("gqa is standard attention")
    };
    assert_eq!(gqa.n_kv_heads, 2, "n_heads / 4");
    // Fewer K/V weights, wider MLP: mha <= gqa <= mqa.
    let d_ff: Vec<usize> = arms[2..].iter().map(|a| a.config.d_ff).collect();
    assert!(
        d_ff[0] <= d_ff[1] && d_ff[1] <= d_ff[2] && d_ff[0] < d_ff[2],
        "{d_ff:?}"
    );

    let r = run_tiny();
    assert_eq!(r.contexts, [8, 16], "sorted");
    for a in &r.arms {
        let cfg = &arms.iter().find(|x| x.name == a.name).unwrap().config;
        let mode = if a.name == "mla-naive" {
            CacheMode::Naive
        } else {
            CacheMode::Latent
        };
        assert_eq!(
            a.cache_bytes_per_token,
            accounting::kv_cache(cfg, mode).bytes_per_token
        );
        assert_eq!(a.params, accounting::param_counts(cfg).total);
        assert_eq!(a.points.len(), 2);
        for p in &a.points {
            assert_eq!(
                p.cache_bytes,
                a.cache_bytes_per_token * p.context * 2,
                "{}",
                a.name
            );
            assert!(p.decode_tokens_per_s.is_finite() && p.decode_tokens_per_s > 0.0);
            assert!(p.prefill_ms >= 0.0);
        }
    }
    let bytes = |n: &str| arm(&r, n).cache_bytes_per_token;
    assert!(bytes("mla") < bytes("mla-naive"));
    assert!(bytes("mqa") < bytes("gqa") && bytes("gqa") < bytes("mha"));
    // Table 1 of the paper, per token per layer at 4 bytes: MLA d_c + d_h^R, MHA 2 n_h d_h.
    assert_eq!(bytes("mla"), (16 + 4) * 2 * 4);
    assert_eq!(bytes("mha"), 2 * 8 * 8 * 2 * 4);
    assert_eq!(bytes("mla-naive"), 8 * (12 + 8) * 2 * 4);
    assert_eq!(arm(&r, "mla").params, arm(&r, "mla-naive").params);
}

#[test]
fn a_non_mla_config_gets_paper_default_mla_dims() {
    let s: ModelSection = toml::from_str(
        "attention = 'mha'\nvocab_size = 64\nd_model = 64\nn_layers = 2\nn_heads = 4\nd_ff = 96\nmax_seq_len = 32",
    )
    .unwrap();
    let arms =
        arms_from_config(&s.resolve().unwrap(), &[ArmKind::Mla, ArmKind::Mha], 40, 0).unwrap();
    let mla_model::AttentionConfig::Latent(l) = arms[0].config.attention else {
        panic!("not mla")
    };
    // d_h = 16: d_c = 4 d_h, d_h^R = d_h / 2.
    assert_eq!(
        (
            l.kv_lora_rank,
            l.qk_rope_head_dim,
            l.qk_nope_head_dim,
            l.q_lora_rank
        ),
        (64, 8, 16, None)
    );
    assert_eq!(arms[1].config.max_seq_len, 40);
}

/// A PNG: the signature, then chunks (length, type, data, CRC-32) up to IEND, the first being
/// IHDR. Returns (width, height).
fn check_png(path: &Path) -> (u32, u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let png = std::fs::read(path).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: not a PNG",
        path.display()
    );
    let mut at = 8;
    let mut types = Vec::new();
    let mut size = (0, 0);
    let mut idat = 0;
    while at < png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(
            crc,
            crc32(&png[at + 4..at + 8 + len]),
            "bad CRC in {:?}",
            String::from_utf8_lossy(kind)
        );
        if kind == b"IHDR" {
            size = (
                u32::from_be_bytes(data[0..4].try_into().unwrap()),
                u32::from_be_bytes(data[4..8].try_into().unwrap()),
            );
        }
        if kind == b"IDAT" {
            idat += len;
        }
        types.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    assert_eq!(types.first().map(String::as_str), Some("IHDR"));
    assert_eq!(types.last().map(String::as_str), Some("IEND"));
    assert_eq!(at, png.len());
    assert!(idat > 1000, "image data present");
    size
}

fn check_svg(path: &Path) -> String {
    let svg = std::fs::read_to_string(path).unwrap();
    let start = svg.trim_start();
    assert!(
        start.starts_with("<svg") || start.starts_with("<?xml"),
        "{}",
        &svg[..80]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    svg
}

#[test]
fn outputs_are_well_formed() {
    let r = run_tiny();
    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path()).unwrap();
    assert_eq!(check_png(&dir.path().join("decode.png")), (1400, 580));
    let svg = check_svg(&dir.path().join("decode.svg"));
    for label in [
        "mla-naive",
        "decode tokens/s",
        "KV cache held (MB)",
        "context (tokens, log2 scale)",
        ">16<",
    ] {
        assert!(svg.contains(label), "{label:?} missing from the SVG");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("decode.json")).unwrap())
            .unwrap();
    assert_eq!(json["arms"].as_array().unwrap().len(), 5);
    assert_eq!(json["arms"][1]["cache_mode"], "naive");
    assert_eq!(json["arms"][0]["points"][1]["context"], 16);
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 5);
    assert!(
        md.lines().all(|l| l.starts_with('|') && l.ends_with('|')),
        "{md}"
    );
    let table = r.table();
    assert!(
        table.contains("tok/s @16") && table.lines().count() == 2 + 5,
        "{table}"
    );
}

/// `[model] dtype = "bf16"`: weights and cache in bf16, 2 bytes per cached element.
#[test]
fn bf16_models_hold_a_bf16_cache() {
    let mut cfg = base();
    cfg.dtype = mla_model::DType::Bf16;
    let arms = arms_from_config(&cfg, &[ArmKind::Mla, ArmKind::Mqa], 18, 1).unwrap();
    let mut o = opts();
    o.contexts = vec![8];
    let r = bench::run_decode("bf16", &arms, &o, &Device::flex(), "cpu", |_| {}).unwrap();
    assert_eq!(arm(&r, "mla").cache_bytes_per_token, (16 + 4) * 2 * 2);
    assert_eq!(arm(&r, "mla").points[0].cache_bytes, 20 * 2 * 2 * 8 * 2);
    assert_eq!(arm(&r, "mqa").dtype, "bf16");
}

#[test]
fn contexts_beyond_the_model_and_unknown_arms_are_refused() {
    let arms = arms_from_config(&base(), &[ArmKind::Mha], 18, 1).unwrap();
    let mut o = opts();
    o.contexts = vec![17];
    let e = bench::run_decode("tiny", &arms, &o, &Device::flex(), "cpu", |_| {}).unwrap_err();
    assert!(e.to_string().contains("max_seq_len 18"), "{e}");
    let e = ArmKind::parse("mlx").unwrap_err();
    assert!(e.to_string().contains("mla-naive"), "{e}");
}

#[test]
fn cli_benches_a_preset_and_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = common::mla();
    c.args([
        "bench",
        "decode",
        "--preset",
        "tiny-mla",
        "--context",
        "8,16",
        "--decode-tokens",
        "2",
        "--json",
        "--out",
    ])
    .arg(&out);
    let o = common::run_ok(c);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["arms"].as_array().unwrap().len(), 5);
    assert_eq!(json["contexts"], serde_json::json!([8, 16]));
    for f in ["decode.json", "decode.md", "decode.png", "decode.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // A checkpoint written by hand: only its model is benchmarked, MLA with both caches.
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(
        &cfg_path,
        "[model]\npreset = 'tiny-mla'\n[data]\ntrain = 'none'\n[train]\nmax_steps = 1\n",
    )
    .unwrap();
    let cfg = mla_train::config::load(&cfg_path, &[], &|_| Err("no tokenizer".into())).unwrap();
    let device = Device::flex();
    device.seed(9);
    let model = Lm::new(&cfg.model, &device);
    let state = mla_train::checkpoint::TrainState {
        format: mla_train::checkpoint::FORMAT.into(),
        version: mla_train::checkpoint::VERSION,
        step: 1,
        tokens: 0,
        sampler: mla_data::SamplerState {
            seed: 0,
            epoch: 0,
            cursor: 0,
            seq_len: 64,
            tokens: 0,
        },
        schedule: mla_train::checkpoint::ScheduleState {
            next_step: 1,
            next_lr: 0.0,
        },
        elapsed_s: 0.0,
        best_val_loss: None,
        world_size: 1,
        device: "cpu".into(),
        dtype: "f32".into(),
    };
    let optim = mla_train::optim::build(&Default::default());
    let ckpt_dir = dir.path().join("run/checkpoints");
    mla_train::checkpoint::save(&ckpt_dir, &model, &optim, &state, &cfg.to_toml(), 1).unwrap();
    let mut c = common::mla();
    c.args(["bench", "decode"])
        .arg(dir.path().join("run"))
        .args(["--context", "8,32", "--decode-tokens", "4", "--out"])
        .arg(dir.path().join("out2"));
    let o = common::run_ok(c);
    let table = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].starts_with("mla ") && rows[1].starts_with("mla-naive"),
        "{table}"
    );
    // tiny-mla: 64 positions; 64 + 4 decode tokens do not fit.
    let mut c = common::mla();
    c.args(["bench", "decode"])
        .arg(dir.path().join("run"))
        .args(["--context", "64", "--out"])
        .arg(dir.path().join("out3"));
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("max_seq_len 64"));
}
