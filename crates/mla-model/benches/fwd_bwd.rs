//! Forward + backward tokens/s of each attention variant at matched model size, on burn's flex
//! CPU backend. A benchmark, not a test: `cargo bench --workspace --bench fwd_bwd`.
//!
//! Every variant has d_model 256, 4 layers, 4 heads, d_ff 704, vocab 4096 and trains on
//! batches of 8 x 256 tokens; MLA uses the Shakespeare recipe's dims (latent 128, rope 32,
//! nope 64, v 64, no query compression), GQA 2 K/V heads. Variants are timed round-robin (so
//! that load from elsewhere hits all alike), each reporting its fastest round.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use mla_model::{Lm, ModelSection, accounting};

const ROUNDS: usize = 3;
const STEPS: usize = 5;
const BATCH: usize = 8;
const SEQ: usize = 256;

fn config(extra: &str) -> mla_model::ModelConfig {
    let s: ModelSection = toml::from_str(&format!(
        "vocab_size = 4096\nd_model = 256\nn_layers = 4\nn_heads = 4\nd_ff = 704\n\
         max_seq_len = {SEQ}\n{extra}"
    ))
    .expect("valid TOML");
    s.resolve().expect("valid config")
}

fn main() {
    let device = Device::flex().autodiff();
    let variants = [
        (
            "mla",
            config(
                "attention = 'mla'\nkv_lora_rank = 128\nqk_nope_head_dim = 64\nqk_rope_head_dim = 32\nv_head_dim = 64",
            ),
        ),
        ("mha", config("attention = 'mha'")),
        ("gqa", config("attention = 'gqa'\nn_kv_heads = 2")),
        ("mqa", config("attention = 'mqa'")),
    ];
    let models: Vec<Lm> = variants
        .iter()
        .map(|(_, c)| {
            device.seed(0);
            Lm::new(c, &device)
        })
        .collect();
    let ids: Vec<i64> = (0..BATCH * (SEQ + 1))
        .map(|i| (i * 7919 % 4096) as i64)
        .collect();
    let window = |from: usize| {
        let rows: Vec<i64> = (0..BATCH)
            .flat_map(|b| ids[b * (SEQ + 1) + from..b * (SEQ + 1) + from + SEQ].to_vec())
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(rows, [BATCH, SEQ]), &device)
    };
    let (inputs, targets) = (window(0), window(1));
    let step = |m: &Lm| {
        let loss = m.loss(inputs.clone(), targets.clone());
        let grads = loss.backward();
        drop(grads);
    };
    for m in &models {
        step(m); // warm-up: first-use allocations
    }
    let mut best = vec![f64::INFINITY; models.len()];
    for _ in 0..ROUNDS {
        for (i, m) in models.iter().enumerate() {
            let t0 = Instant::now();
            for _ in 0..STEPS {
                step(m);
            }
            best[i] = best[i].min(t0.elapsed().as_secs_f64() / STEPS as f64);
        }
    }
    let tokens = (BATCH * SEQ) as f64;
    let mha = tokens / best[1];
    println!(
        "forward + backward, flex, {BATCH} x {SEQ} tokens, fastest of {ROUNDS} rounds of {STEPS} steps"
    );
    println!("| variant | params | KV B/token | tokens/s | vs MHA |");
    println!("|---|---:|---:|---:|---:|");
    for ((name, cfg), s) in variants.iter().zip(&best) {
        let p = accounting::param_counts(cfg).total;
        let kv = accounting::kv_cache(cfg, accounting::CacheMode::Latent).bytes_per_token;
        println!(
            "| {name} | {:.2}M | {kv} | {:.0} | {:.2} |",
            p as f64 / 1e6,
            tokens / s,
            tokens / s / mha
        );
    }
}
