//! `mla train` and `mla finetune`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use mla_train::checkpoint::Checkpoint;
use mla_train::config::{self, RunConfig};
use mla_train::dist::Launch;
use mla_train::stop::StopSignal;
use mla_train::trainer::{self, Resume, TrainOptions, TrainSummary};

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
    /// `--resume auto`: continue if there is a checkpoint, start otherwise (the same command for
    /// the first start and every restart under torchrun --max-restarts or a requeued job).
    #[arg(long, value_name = "RUN_DIR|auto", num_args = 0..=1)]
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
    let cfg = config::load(path, set, &tokenizer_vocab)
        .with_context(|| format!("invalid config {}", path.display()))?;
    note_set_aside(&cfg);
    Ok(cfg)
}

/// One line naming the `[model]` keys of another attention type that were ignored (from rank 0
/// only, under torchrun).
fn note_set_aside(cfg: &RunConfig) {
    let rank0 = std::env::var("RANK").map_or(true, |r| r.trim() == "0");
    if rank0 && !cfg.set_aside.is_empty() {
        eprintln!(
            "model: ignoring {} (not used with attention = \"{}\")",
            cfg.set_aside.join(", "),
            cfg.model.kind()
        );
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.config, &args.set)?;
    let (resume, dir) = match args.resume {
        None => (Resume::Never, None),
        Some(None) => (Resume::Required, None),
        Some(Some(dir)) if dir.as_os_str() == "auto" => (Resume::Auto, None),
        Some(Some(dir)) => (Resume::Required, Some(dir)),
    };
    let run_dir = match (dir, args.run_dir) {
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
    note_set_aside(&cfg);
    let (context, other) = cfg.model.context_extension_of(&stored.model);
    if !context.is_empty() && other.is_empty() {
        eprintln!("context extension: {}", context.join(", "));
    }
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    // A restarted fine-tune (torchrun --max-restarts) continues its own checkpoints.
    train(&cfg, run_dir, Resume::Auto)
}

fn train(cfg: &RunConfig, run_dir: PathBuf, resume: Resume) -> anyhow::Result<()> {
    let stop = StopSignal::install().context("cannot install the SIGINT/SIGTERM handlers")?;
    let launch = Launch::from_env()?;
    let rank = launch.as_ref().map_or(0, |l| l.rank);
    let launched = launch.is_some();

    if rank == 0 {
        let params = mla_model::accounting::param_counts(&cfg.model).total;
        eprintln!(
            "run {} | {} | {:.2}M parameters | {} steps x {} tokens | device {} ({:?}){}",
            run_dir.display(),
            cfg.model.kind(),
            params as f64 / 1e6,
            cfg.max_steps(),
            cfg.tokens_per_step(),
            cfg.train.device,
            cfg.train.dtype,
            launch
                .as_ref()
                .map_or(String::new(), |l| format!(" | {} ranks", l.world)),
        );
    }
    let summary = trainer::train(
        cfg,
        &TrainOptions {
            run_dir,
            resume,
            stop: stop.clone(),
            launch,
        },
    )
    .map_err(|e| {
        let e = anyhow::Error::new(e);
        if launched {
            e.context(format!("rank {rank}"))
        } else {
            e
        }
    })?;
    if rank == 0 {
        print_summary(&summary);
    }
    if summary.interrupted {
        return Err(super::Stopped {
            code: stop.exit_code(),
            message: format!(
                "{}stopped by {} at step {}{}; continue with --resume",
                if launched {
                    format!("rank {rank}: ")
                } else {
                    String::new()
                },
                summary.stopped_by.as_deref().unwrap_or("a signal"),
                summary.steps,
                summary
                    .last_checkpoint
                    .as_ref()
                    .map_or(String::new(), |c| format!(" (checkpoint {})", c.display())),
            ),
        }
        .into());
    }
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
        "  time             {:.1} s ({:.0} tokens/s{})",
        s.elapsed_s,
        s.tokens_per_s,
        if s.world_size > 1 {
            format!(" over {} ranks", s.world_size)
        } else {
            String::new()
        }
    );
    if let Some(m) = s.mfu {
        println!("  MFU              {:.1}%", 100.0 * m);
    }
    if let Some(b) = s.peak_memory_bytes {
        println!(
            "  peak memory      {:.2} GiB",
            b as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(c) = &s.last_checkpoint {
        println!("  checkpoint       {}", c.display());
    }
    println!("  run directory    {}", s.run_dir.display());
}
