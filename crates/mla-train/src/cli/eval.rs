//! `mla eval`: loss and perplexity of a checkpoint on token shards.

use std::path::PathBuf;

use anyhow::Context;
use mla_data::{ShardSet, ValWindows};
use mla_train::checkpoint::Checkpoint;
use mla_train::eval::evaluate;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    /// Glob of token shards to evaluate on.
    #[arg(long)]
    data: String,
    /// Sequences per batch (default: the run's micro_batch).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Evaluate only the first N batches (default: all windows).
    #[arg(long)]
    batches: Option<usize>,
    /// Sequence length (default: the run's). Past the model's max_seq_len the model is
    /// extended to it: RoPE extrapolates, unless --set gives it a rope_scaling.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Evaluate the weights in a context-extended model: model.max_seq_len, model.rope_theta or
    /// model.rope_scaling, e.g. --set 'model.rope_scaling={type="yarn", factor=4.0,
    /// original_max_position_embeddings=128}' (repeatable).
    #[arg(long = "set", value_name = "model.KEY=VALUE")]
    set: Vec<String>,
    /// cpu, tch-cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let cfg = ckpt.config().context("reading the checkpoint's config")?;
    let seq_len = args.seq_len.unwrap_or(cfg.seq_len());
    anyhow::ensure!(seq_len >= 1, "--seq-len must be positive");
    let mut model_cfg = extended(&cfg.model, &args.set)?;
    if seq_len > model_cfg.max_seq_len {
        model_cfg.max_seq_len = seq_len;
    }
    let device = mla_train::device::parse(&args.device)?.device()?;
    let (model, context) = ckpt.load_model_extending(&model_cfg, &device)?;
    if !context.is_empty() {
        eprintln!("context extension: {}", context.join(", "));
    }
    let shards = ShardSet::open_glob(&args.data, Some(cfg.model.vocab_size))?;
    let windows = ValWindows::new(shards, seq_len)?;
    let batch = args.batch_size.unwrap_or(cfg.train.micro_batch).max(1);
    let started = std::time::Instant::now();
    let loss = evaluate(&model, &windows, batch, args.batches, &device);
    let n = args.batches.map_or(windows.num_windows(), |b| {
        (b * batch).min(windows.num_windows())
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": ckpt.dir, "step": ckpt.state.step, "data": args.data,
                "windows": n, "tokens": n * seq_len, "seq_len": seq_len, "context": context,
                "loss": loss, "perplexity": loss.exp(),
            })
        );
    } else {
        println!(
            "checkpoint  {} (step {})",
            ckpt.dir.display(),
            ckpt.state.step
        );
        println!(
            "data        {} ({} windows of {} tokens)",
            args.data, n, seq_len
        );
        if !context.is_empty() {
            println!("model       {}", context.join(", "));
        }
        println!("loss        {loss:.4}");
        println!("perplexity  {:.3}", loss.exp());
        println!("time        {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `model` with `--set model.KEY=VALUE` overrides applied (validated as a `[model]` section;
/// the checkpoint then refuses any change beyond a context extension).
fn extended(
    model: &mla_model::ModelConfig,
    set: &[String],
) -> anyhow::Result<mla_model::ModelConfig> {
    if set.is_empty() {
        return Ok(model.clone());
    }
    let mut table = toml::Table::new();
    table.insert("model".into(), toml::Value::try_from(model.to_section())?);
    for s in set {
        anyhow::ensure!(
            s.starts_with("model."),
            "--set {s}: eval takes model.max_seq_len, model.rope_theta or model.rope_scaling"
        );
        mla_train::config::apply_override(&mut table, s)?;
    }
    let section = super::model_section(&table, || unreachable!("inserted above"))?;
    Ok(section.resolve()?)
}
