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
    /// Sequence length (default: the run's).
    #[arg(long)]
    seq_len: Option<usize>,
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
    anyhow::ensure!(
        seq_len >= 1 && seq_len <= cfg.model.max_seq_len,
        "--seq-len must be in 1..={} (the model's max_seq_len)",
        cfg.model.max_seq_len
    );
    let device = mla_train::device::parse(&args.device)?.device()?;
    let model = ckpt.load_model(&cfg.model, &device)?;
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
                "windows": n, "tokens": n * seq_len, "loss": loss, "perplexity": loss.exp(),
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
        println!("loss        {loss:.4}");
        println!("perplexity  {:.3}", loss.exp());
        println!("time        {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
