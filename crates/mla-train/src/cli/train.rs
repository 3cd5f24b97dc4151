//! `mla train` and `mla finetune`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use mla_train::checkpoint::Checkpoint;
use mla_train::config::{self, RunConfig};
use mla_train::trainer::{self, TrainOptions, TrainSummary};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Run config (TOML).
    config: PathBuf,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Override any config field, e.g. --set train.max_steps=100 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run from its latest valid checkpoint (optionally naming the run directory).
    #[arg(long, value_name = "RUN_DIR", num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Run config for the fine-tune (data, LR, schedule...). Without a [model] section it
    /// trains the source's model; a model that differs from the source's may change only
    /// max_seq_len, rope_scaling and rope_theta (a context extension).
    config: PathBuf,
    /// Run directory or checkpoint whose model weights to start from.
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

/// The vocabulary size of a tokenizer file (for `[model] vocab_size`).
pub fn tokenizer_vocab(path: &Path) -> Result<usize, String> {
    mla_data::Tokenizer::from_file(path)
        .map(|t| t.vocab_size())
        .map_err(|e| e.to_string())
}

pub fn load_config(path: &Path, set: &[String]) -> anyhow::Result<RunConfig> {
    config::load(path, set, &tokenizer_vocab)
        .with_context(|| format!("invalid config {}", path.display()))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.config, &args.set)?;
    let resume = args.resume.is_some();
    let run_dir = match (args.resume.flatten(), args.run_dir) {
        (Some(dir), _) | (None, Some(dir)) => dir,
        (None, None) => PathBuf::from("runs").join(&cfg.name),
    };
    train(&cfg, run_dir, resume)
}

pub fn run_finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let mut set = args.set;
    set.push(format!(
        "checkpoint.init_from={:?}",
        args.from.display().to_string()
    ));
    // A config without [model] fine-tunes the source's model (a converted one, or one whose
    // context `--set model.max_seq_len=...` extends).
    let source = Checkpoint::open(&args.from)?;
    let stored = source
        .config()
        .with_context(|| format!("reading the config of {}", source.dir.display()))?;
    let cfg = config::load_inheriting(
        &args.config,
        &set,
        &tokenizer_vocab,
        Some(&stored.model.to_section()),
    )
    .with_context(|| format!("invalid config {}", args.config.display()))?;
    let (context, other) = cfg.model.context_extension_of(&stored.model);
    if !context.is_empty() && other.is_empty() {
        eprintln!("context extension: {}", context.join(", "));
    }
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    train(&cfg, run_dir, false)
}

fn train(cfg: &RunConfig, run_dir: PathBuf, resume: bool) -> anyhow::Result<()> {
    let interrupt = super::interrupt_flag()?;

    let params = mla_model::accounting::param_counts(&cfg.model).total;
    eprintln!(
        "run {} | {} | {:.2}M parameters | {} steps x {} tokens | device {} ({:?})",
        run_dir.display(),
        cfg.model.kind(),
        params as f64 / 1e6,
        cfg.max_steps(),
        cfg.tokens_per_step(),
        cfg.train.device,
        cfg.train.dtype,
    );
    let summary = trainer::train(
        cfg,
        &TrainOptions {
            run_dir,
            resume,
            interrupt,
        },
    )?;
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &TrainSummary) {
    let opt = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!("{}", if s.interrupted { "interrupted" } else { "done" });
    println!("  steps            {}", s.steps);
    println!("  tokens           {}", s.tokens);
    println!("  train loss       {}", opt(s.final_train_loss));
    println!(
        "  val loss         {} (best {})",
        opt(s.final_val_loss),
        opt(s.best_val_loss)
    );
    println!(
        "  time             {:.1} s ({:.0} tokens/s)",
        s.elapsed_s, s.tokens_per_s
    );
    if let Some(c) = &s.last_checkpoint {
        println!("  checkpoint       {}", c.display());
    }
    println!("  run directory    {}", s.run_dir.display());
}
