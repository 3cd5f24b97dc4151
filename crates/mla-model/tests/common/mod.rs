//! Shared helpers for the model crate's integration tests.
#![allow(dead_code)]

use burn::tensor::Device;
use mla_model::{ModelConfig, ModelSection};

/// The device the suite runs on: burn's flex CPU backend, or libtorch's CPU device when
/// `MLA_TEST_DEVICE=tch-cpu` (a build with `--features tch`; scripts/test.sh does this).
#[allow(deprecated)] // burn-tch, deprecated in burn 0.22 but our libtorch path (see device.rs)
pub fn device() -> Device {
    match std::env::var("MLA_TEST_DEVICE").as_deref() {
        Err(_) | Ok("" | "cpu") => Device::flex(),
        #[cfg(feature = "tch")]
        Ok("tch-cpu") => Device::libtorch(),
        Ok(other) => panic!(
            "MLA_TEST_DEVICE={other} is not available in this build (cpu, or tch-cpu with --features tch)"
        ),
    }
}

/// Keys every small test model shares.
pub const BASE: &str = "vocab_size = 53\nd_model = 32\nn_layers = 2\nd_ff = 48\nmax_seq_len = 24\n";

pub fn model(extra: &str) -> ModelConfig {
    let s: ModelSection = toml::from_str(&format!("{BASE}{extra}")).unwrap();
    s.resolve().unwrap()
}

/// One small config per attention variant and MLA option.
pub fn variants() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("mha", model("attention = 'mha'\nn_heads = 4")),
        (
            "gqa",
            model("attention = 'gqa'\nn_heads = 4\nn_kv_heads = 2"),
        ),
        ("mqa", model("attention = 'mqa'\nn_heads = 4")),
        (
            "mha-half-tied",
            model("attention = 'mha'\nn_heads = 2\nrope_style = 'half'\ntie_embeddings = true"),
        ),
        (
            "mla-q-lora",
            model(
                "attention = 'mla'\nn_heads = 4\nq_lora_rank = 16\nkv_lora_rank = 12\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\nv_head_dim = 6",
            ),
        ),
        (
            "mla-plain-q",
            model(
                "attention = 'mla'\nn_heads = 4\nkv_lora_rank = 12\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\nv_head_dim = 6",
            ),
        ),
        (
            "mla-half",
            model(
                "attention = 'mla'\nn_heads = 2\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 8\nv_head_dim = 8\nrope_style = 'half'",
            ),
        ),
        (
            "mla-yarn",
            model(
                "attention = 'mla'\nn_heads = 4\nq_lora_rank = 8\nkv_lora_rank = 12\nqk_nope_head_dim = 8\nqk_rope_head_dim = 4\nv_head_dim = 6\nrope_scaling = { type = 'yarn', factor = 4.0, original_max_position_embeddings = 6, mscale = 0.707, mscale_all_dim = 0.707 }",
            ),
        ),
    ]
}
