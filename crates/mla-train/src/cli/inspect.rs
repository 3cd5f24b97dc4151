//! `mla inspect`: parameters, KV cache per token and FLOPs per token of a model config.

use std::path::{Path, PathBuf};

use anyhow::bail;
use mla_model::accounting::{self, CacheMode};
use mla_model::{AttentionConfig, ModelConfig};
use serde_json::json;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A run config or a file with a [model] section.
    config: Option<PathBuf>,
    /// Inspect a named preset instead (see `--list-presets`).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    #[arg(long)]
    list_presets: bool,
    /// Context length for the attention FLOPs (default: max_seq_len, or [train] seq_len).
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// The model config of a file: its `[model]` section, with the vocabulary taken from
/// `[data] tokenizer` when left out. Other sections are not needed (nor checked) here.
fn model_from_file(path: &Path) -> anyhow::Result<(ModelConfig, Option<usize>)> {
    let table = super::read_toml(path)?;
    let mut section = super::model_section(&table, || {
        format!("{} has no [model] section", path.display())
    })?;
    if section.with_preset()?.vocab_size.is_none()
        && let Some(t) = super::data_tokenizer(&table)
    {
        section.vocab_size =
            Some(super::train::tokenizer_vocab(t.as_ref()).map_err(anyhow::Error::msg)?);
    }
    let seq_len = table
        .get("train")
        .and_then(|t| t.get("seq_len"))
        .and_then(|v| v.as_integer())
        .map(|v| v as usize);
    Ok((section.resolve()?, seq_len))
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    if args.list_presets {
        for (name, about) in mla_model::config::PRESETS {
            println!("{name:<24} {about}");
        }
        return Ok(());
    }
    let (cfg, train_seq, source) = match (&args.config, &args.preset) {
        (Some(p), _) => {
            let (c, s) = model_from_file(p)?;
            (c, s, p.display().to_string())
        }
        (None, Some(name)) => (ModelConfig::preset(name)?, None, format!("preset {name}")),
        (None, None) => bail!("give a config file or --preset NAME (see --list-presets)"),
    };
    let seq_len = args.seq_len.or(train_seq).unwrap_or(cfg.max_seq_len);
    let report = report(&cfg, seq_len, &source);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&cfg, &report);
    }
    Ok(())
}

fn report(cfg: &ModelConfig, seq_len: usize, source: &str) -> serde_json::Value {
    let p = accounting::param_counts(cfg);
    let kv = accounting::kv_cache(cfg, CacheMode::Latent);
    let mha = accounting::kv_cache_mha_reference(cfg);
    let flops = accounting::flops_per_token(cfg, seq_len);
    let mut r = json!({
        "source": source,
        "attention": cfg.kind().as_str(),
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "dtype": cfg.dtype.as_str(),
        "parameters": p,
        "kv_cache_per_token": kv,
        "mha_reference_kv_cache_per_token": mha,
        "kv_cache_ratio_to_mha": kv.elements_per_token as f64 / mha.elements_per_token as f64,
        "flops_per_token": { "seq_len": seq_len, "dense": flops.dense, "attention": flops.attention, "total": flops.total },
    });
    if matches!(cfg.attention, AttentionConfig::Latent(_)) {
        r["kv_cache_per_token_naive"] = json!(accounting::kv_cache(cfg, CacheMode::Naive));
    }
    r
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e12 => format!("{:.2} T", n / 1e12),
        n if n >= 1e9 => format!("{:.2} G", n / 1e9),
        n if n >= 1e6 => format!("{:.2} M", n / 1e6),
        n if n >= 1e3 => format!("{:.2} K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn print_table(cfg: &ModelConfig, r: &serde_json::Value) {
    let p = accounting::param_counts(cfg);
    let kv = accounting::kv_cache(cfg, CacheMode::Latent);
    let mha = accounting::kv_cache_mha_reference(cfg);
    let seq_len = r["flops_per_token"]["seq_len"].as_u64().unwrap_or(0) as usize;
    let f = accounting::flops_per_token(cfg, seq_len);
    let dims = match cfg.attention {
        AttentionConfig::Standard(a) => format!(
            "{} heads x {}, {} kv heads",
            cfg.n_heads, a.head_dim, a.n_kv_heads
        ),
        AttentionConfig::Latent(l) => format!(
            "{} heads, kv_lora_rank {}, q_lora_rank {}, nope {}, rope {}, v {}",
            cfg.n_heads,
            l.kv_lora_rank,
            l.q_lora_rank.map_or("none".into(), |r| r.to_string()),
            l.qk_nope_head_dim,
            l.qk_rope_head_dim,
            l.v_head_dim
        ),
    };
    println!("{}", r["source"].as_str().unwrap_or(""));
    println!(
        "  {} | {} layers | d_model {} | {}",
        cfg.kind(),
        cfg.n_layers,
        cfg.d_model,
        dims
    );
    println!();
    println!("parameters");
    for (name, n) in [
        ("total", p.total),
        ("attention", p.attention),
        ("embedding", p.embedding),
        ("lm head", p.lm_head),
        ("mlp", p.mlp),
        ("norms", p.norm),
    ] {
        println!("  {name:<12} {:>10}  {:>15}", human(n as f64), n);
    }
    println!();
    println!(
        "KV cache per token ({})      elements        bytes",
        cfg.dtype.as_str()
    );
    println!(
        "  per layer              {:>12} {:>12}",
        kv.elements_per_token_per_layer, kv.bytes_per_token_per_layer
    );
    let all = format!("all {} layers", cfg.n_layers);
    println!(
        "  {all:<22} {:>12} {:>12}",
        kv.elements_per_token, kv.bytes_per_token
    );
    if let AttentionConfig::Latent(_) = cfg.attention {
        let naive = accounting::kv_cache(cfg, CacheMode::Naive);
        println!(
            "  naive (decompressed)   {:>12} {:>12}  (per layer: {})",
            naive.elements_per_token, naive.bytes_per_token, naive.elements_per_token_per_layer
        );
    }
    println!(
        "  vs MHA ({} heads x {})  {:>11.1}%              ({} elements per token per layer)",
        cfg.n_heads,
        mha.elements_per_token_per_layer / (2 * cfg.n_heads),
        100.0 * kv.elements_per_token as f64 / mha.elements_per_token as f64,
        mha.elements_per_token_per_layer
    );
    println!();
    println!("training FLOPs per token (context {seq_len})");
    println!("  6N          {:>10}", human(f.dense as f64));
    println!("  attention   {:>10}", human(f.attention as f64));
    println!("  total       {:>10}", human(f.total as f64));
}
