//! `mla bench`: benchmarks. `mla bench decode` measures the KV cache held and decode speed of
//! each attention type against the context length (see `mla_train::bench`); `mla bench
//! throughput` the decode tokens/s each reaches at the largest batch a KV-cache budget holds
//! (see `mla_train::bench::throughput`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use mla_model::{ModelConfig, ModelSection};
use mla_train::bench::throughput::{self, ThroughputOptions};
use mla_train::bench::{self, Arm, ArmKind, DecodeOptions, arms_from_checkpoint, arms_from_config};
use mla_train::checkpoint::Checkpoint;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// KV-cache bytes held, prefill time and decode tokens/s of MLA (latent and naive cache),
    /// MHA, GQA and MQA at matched size, against the context length.
    Decode(DecodeArgs),
    /// Decode tokens/s at a fixed KV-cache memory budget: each arm at the largest batch whose
    /// cache fits the budget at the context, and at a few smaller batches.
    Throughput(ThroughputArgs),
}

#[derive(clap::Args)]
struct ThroughputArgs {
    /// A config with a [model] section (arms derived at matched size), or a checkpoint / run
    /// directory (only its model).
    source: Option<PathBuf>,
    /// Derive the arms from a named preset instead (see `mla inspect --list-presets`).
    #[arg(long, conflicts_with = "source")]
    preset: Option<String>,
    /// KV-cache memory budget: bytes, or with a unit (64MiB, 500MB, 2GiB).
    #[arg(long, value_name = "SIZE")]
    kv_budget: String,
    /// Tokens each sequence's cache holds: context - new-tokens prefilled, then new-tokens
    /// decoded.
    #[arg(long, value_name = "T")]
    context: usize,
    /// Arms (config only), comma-separated: mla, mla-naive, mha, gqa, mqa.
    #[arg(long, value_delimiter = ',', default_value = "mla,mha,gqa,mqa")]
    attn: Vec<String>,
    /// Tokens decoded per sequence, timed.
    #[arg(long, default_value_t = 16)]
    new_tokens: usize,
    /// Batches to measure besides each arm's max (default: powers of two below it and MHA's
    /// max batch), comma-separated.
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<usize>>,
    /// Decode runs per batch; the fastest is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Override a key of the config or preset, e.g. --set model.n_layers=6 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Vocabulary size when the config has none and its tokenizer is not at hand.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Output directory for throughput.{json,md,png,svg}.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, tch-cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run every arm in this process instead of one process per arm (peak memory then
    /// includes what earlier arms freed).
    #[arg(long)]
    in_process: bool,
    /// Internal: measure only this arm and print its report as JSON (what each per-arm
    /// process does).
    #[arg(long, hide = true)]
    only_arm: Option<String>,
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// A config with a [model] section (arms derived at matched size), or a checkpoint / run
    /// directory (only its model: MLA with both caches).
    source: Option<PathBuf>,
    /// Derive the arms from a named preset instead (see `mla inspect --list-presets`).
    #[arg(long, conflicts_with = "source")]
    preset: Option<String>,
    /// Context lengths (prefilled tokens), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096")]
    context: Vec<usize>,
    /// Single-token decode steps timed after each prefill.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Decode runs per context from the same prefilled cache; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Arms to run (config only), comma-separated: mla, mla-naive, mha, gqa, mqa.
    #[arg(long, value_delimiter = ',')]
    arms: Option<Vec<String>>,
    /// Override a key of the config or preset, e.g. --set model.n_layers=6 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Vocabulary size when the config has none and its tokenizer is not at hand.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Output directory for decode.json, decode.md, decode.png and decode.svg.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, tch-cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Decode(a) => decode(a),
        BenchCommand::Throughput(a) => throughput(a),
    }
}

/// The model of a config file (or of `preset = NAME` when `path` is `None`), after `--set`
/// overrides, with the vocabulary from `--vocab-size` or the `[data] tokenizer` when the
/// `[model]` section gives none. Other sections are not needed (nor checked) here.
fn model_config(
    path: Option<&Path>,
    preset: Option<&str>,
    overrides: &[String],
    vocab_size: Option<usize>,
) -> anyhow::Result<ModelConfig> {
    let mut table = match path {
        Some(path) => super::read_toml(path)?,
        None => {
            let mut t = toml::Table::new();
            t.insert(
                "model".into(),
                toml::Value::Table(toml::Table::from_iter([(
                    "preset".to_string(),
                    toml::Value::String(preset.unwrap_or_default().to_string()),
                )])),
            );
            t
        }
    };
    for o in overrides {
        mla_train::config::apply_override(&mut table, o)?;
    }
    let section = super::model_section(&table, || "the config has no [model] section".into())?;
    with_vocab(section, vocab_size, || {
        super::data_tokenizer(&table)
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
    })
}

fn with_vocab(
    mut section: ModelSection,
    vocab_size: Option<usize>,
    tokenizer: impl FnOnce() -> Option<PathBuf>,
) -> anyhow::Result<ModelConfig> {
    if let Some(v) = vocab_size {
        section.vocab_size = Some(v);
    } else if section.with_preset()?.vocab_size.is_none() {
        let path = tokenizer().context(
            "the config gives no vocab_size and names no tokenizer; pass --vocab-size N",
        )?;
        let tok = mla_data::Tokenizer::from_file(&path).with_context(|| {
            format!(
                "the config takes its vocabulary from {}; pass --vocab-size N if that file is not \
                 here",
                path.display()
            )
        })?;
        section.vocab_size = Some(tok.vocab_size());
    }
    Ok(section.resolve()?)
}

/// The source named in the report: the config or preset and the overrides given.
fn described(source: &str, overrides: &[String]) -> String {
    let mut s = source.to_string();
    for o in overrides {
        s.push_str(&format!(" {}", o.trim_start_matches("model.")));
    }
    s
}

fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    let kinds = match &args.arms {
        None => ArmKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| ArmKind::parse(n.trim()))
            .collect::<Result<_, _>>()?,
    };
    let longest = args.context.iter().copied().max().unwrap_or(0) + args.decode_tokens;
    anyhow::ensure!(
        args.arms.is_none() || !args.source.as_deref().is_some_and(Path::is_dir),
        "--arms and --set apply to a config; a checkpoint is benchmarked as it is"
    );
    let (source, arms, dtype) = arms_of(
        args.source.as_deref(),
        args.preset.as_deref(),
        &kinds,
        &args.set,
        args.vocab_size,
        longest,
        args.seed,
    )?;
    let device = mla_train::device::parse(&args.device)?.device()?;
    let device_name = format!("{} {}", args.device, dtype.as_str());
    for arm in &arms {
        eprintln!(
            "{:<10} {} | {:.2}M parameters | {} cache bytes per token{}",
            arm.name,
            arm.config.kind(),
            mla_model::accounting::param_counts(&arm.config).total as f64 / 1e6,
            mla_model::accounting::kv_cache(&arm.config, arm.mode).bytes_per_token,
            if arm.change.is_empty() {
                String::new()
            } else {
                format!(" | {}", arm.change)
            }
        );
    }
    let opts = DecodeOptions {
        contexts: args.context.clone(),
        decode_tokens: args.decode_tokens,
        repeats: args.repeat,
        batch: args.batch,
        seed: args.seed,
    };
    let report = bench::run_decode(&source, &arms, &opts, &device, &device_name, |line| {
        eprintln!("{line}")
    })?;
    report.write(&args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    eprintln!("wrote {}/decode.{{json,md,png,svg}}", args.out.display());
    Ok(())
}

/// The arms of a checkpoint (as it is), a config or a preset (derived at matched size, with
/// `max_seq_len` set to `longest`), and the name the report gives the source.
fn arms_of(
    source: Option<&Path>,
    preset: Option<&str>,
    kinds: &[ArmKind],
    overrides: &[String],
    vocab_size: Option<usize>,
    longest: usize,
    seed: u64,
) -> anyhow::Result<(String, Vec<Arm>, mla_model::DType)> {
    match (source, preset) {
        (Some(p), _) if p.is_dir() => {
            anyhow::ensure!(
                overrides.is_empty(),
                "--arms and --set apply to a config; a checkpoint is benchmarked as it is"
            );
            let ckpt = Checkpoint::open(p)?;
            let cfg = ckpt.config().context("reading the checkpoint's config")?;
            let arms = arms_from_checkpoint(&ckpt, &cfg.model);
            Ok((ckpt.dir.display().to_string(), arms, cfg.model.dtype))
        }
        (Some(p), _) => {
            let base = model_config(Some(p), None, overrides, vocab_size)
                .with_context(|| format!("reading the model of {}", p.display()))?;
            let arms = arms_from_config(&base, kinds, longest, seed)?;
            Ok((
                described(&p.display().to_string(), overrides),
                arms,
                base.dtype,
            ))
        }
        (None, Some(name)) => {
            let base = model_config(None, Some(name), overrides, vocab_size)?;
            let arms = arms_from_config(&base, kinds, longest, seed)?;
            Ok((described(name, overrides), arms, base.dtype))
        }
        (None, None) => {
            anyhow::bail!("give a config file, a checkpoint directory, or --preset NAME")
        }
    }
}

fn throughput(args: ThroughputArgs) -> anyhow::Result<()> {
    let budget = throughput::parse_size(&args.kv_budget)?;
    let kinds = args
        .attn
        .iter()
        .map(|n| ArmKind::parse(n.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let (source, arms, dtype) = arms_of(
        args.source.as_deref(),
        args.preset.as_deref(),
        &kinds,
        &args.set,
        args.vocab_size,
        args.context,
        args.seed,
    )?;
    let device = mla_train::device::parse(&args.device)?.device()?;
    let device_name = format!("{} {}", args.device, dtype.as_str());
    let opts = ThroughputOptions {
        budget,
        context: args.context,
        new_tokens: args.new_tokens,
        batches: args.batches.clone(),
        repeats: args.repeat,
        seed: args.seed,
        only: args.only_arm.clone(),
    };
    let progress = |l: &str| eprintln!("{l}");
    if args.only_arm.is_some() {
        // One arm of a run that gives each arm a process: the report goes to the parent.
        let report =
            throughput::run_throughput(&source, &arms, &opts, &device, &device_name, progress)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    for arm in &arms {
        eprintln!(
            "{:<10} {} | {:.2}M parameters | {} cache bytes per token{}",
            arm.name,
            arm.config.kind(),
            mla_model::accounting::param_counts(&arm.config).total as f64 / 1e6,
            mla_model::accounting::kv_cache(&arm.config, arm.mode).bytes_per_token,
            if arm.change.is_empty() {
                String::new()
            } else {
                format!(" | {}", arm.change)
            }
        );
    }
    let report = if args.in_process || arms.len() == 1 {
        throughput::run_throughput(&source, &arms, &opts, &device, &device_name, progress)?
    } else {
        // Sizing errors (a budget below one sequence) before any process starts.
        throughput::check_budget(&arms, &opts)?;
        let parts = arms
            .iter()
            .map(|arm| arm_in_own_process(&args, &arm.name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        throughput::ThroughputReport::merge(parts).context("no arms")?
    };
    report.write(&args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.within_memory() == Some(false) {
        eprintln!("warning: peak memory went above budget + weights + the stated overhead");
    }
    eprintln!(
        "wrote {}/throughput.{{json,md,png,svg}}",
        args.out.display()
    );
    Ok(())
}

/// Run this command again for one arm (`--only-arm`) and read back its report.
fn arm_in_own_process(
    args: &ThroughputArgs,
    arm: &str,
) -> anyhow::Result<throughput::ThroughputReport> {
    let mut c = std::process::Command::new(
        std::env::current_exe().context("finding this program to run an arm")?,
    );
    c.args(["bench", "throughput"]);
    if let Some(p) = &args.source {
        c.arg(p);
    }
    if let Some(p) = &args.preset {
        c.args(["--preset", p]);
    }
    c.args(["--kv-budget", &args.kv_budget]);
    c.args(["--context", &args.context.to_string()]);
    c.args(["--attn", &args.attn.join(",")]);
    c.args(["--new-tokens", &args.new_tokens.to_string()]);
    if let Some(b) = &args.batches {
        let b: Vec<String> = b.iter().map(usize::to_string).collect();
        c.args(["--batches", &b.join(",")]);
    }
    c.args(["--repeat", &args.repeat.to_string()]);
    for o in &args.set {
        c.args(["--set", o]);
    }
    if let Some(v) = args.vocab_size {
        c.args(["--vocab-size", &v.to_string()]);
    }
    c.args(["--seed", &args.seed.to_string()]);
    c.args(["--device", &args.device]);
    c.args(["--only-arm", arm]);
    c.stderr(std::process::Stdio::inherit());
    let out = c
        .output()
        .with_context(|| format!("running the {arm} arm"))?;
    anyhow::ensure!(
        out.status.success(),
        "the {arm} arm failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading the {arm} arm's report"))
}
