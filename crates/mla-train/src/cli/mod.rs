//! One file per subcommand; each holds its clap `Args` and a `run` function.

use clap::{Parser, Subcommand};

mod ablate;
mod bench;
mod compare;
mod convert;
mod data;
mod eval;
mod export;
mod generate;
mod inspect;
mod tokenizer;
mod train;

#[derive(Parser)]
#[command(
    name = "mla",
    version,
    about = "Train and study small language models with multi-head latent attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML run config.
    Train(train::TrainArgs),
    /// Train starting from another run's weights (model weights only).
    Finetune(train::FinetuneArgs),
    /// Convert an mha/gqa/mqa checkpoint (or HF Llama directory) to MLA (partial RoPE + joint
    /// low-rank K/V), for fine-tuning with `mla finetune --from`.
    Convert(convert::Args),
    /// Loss and perplexity of a checkpoint on token shards.
    Eval(eval::EvalArgs),
    /// Export a checkpoint as a HuggingFace transformers model directory.
    Export(export::ExportArgs),
    /// Write the logits of a prompt to a safetensors file (to compare implementations).
    Logits(export::LogitsArgs),
    /// Parameters, KV cache and FLOPs per token of a model config.
    Inspect(inspect::InspectArgs),
    /// Generate text from a checkpoint, streaming it as it is produced.
    Generate(generate::Args),
    /// Benchmarks (decode speed and KV-cache size per attention type).
    Bench(bench::Args),
    /// Plot and tabulate runs against each other.
    Compare(compare::Args),
    /// Train one run per attention type (and seed) from a base config, then compare them.
    Ablate(ablate::Args),
    /// Tokenizer training and quick encode/decode checks.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Corpus preparation into token shards.
    #[command(subcommand)]
    Data(data::DataCommand),
}

/// A TOML file as a table; errors name the file.
pub fn read_toml(path: &std::path::Path) -> anyhow::Result<toml::Table> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse().with_context(|| format!("{}", path.display()))
}

/// The `[model]` section of a config table (`mla inspect` and `mla bench decode` read only
/// it); `missing` is the error when there is none. Type errors name the key.
pub fn model_section(
    table: &toml::Table,
    missing: impl FnOnce() -> String,
) -> anyhow::Result<mla_model::ModelSection> {
    let model = table
        .get("model")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!(missing()))?;
    serde_path_to_error::deserialize(model)
        .map_err(|e| anyhow::anyhow!("model.{}: {}", e.path(), e.inner()))
}

/// `[data] tokenizer` of a config table, if given.
pub fn data_tokenizer(table: &toml::Table) -> Option<&str> {
    table
        .get("data")
        .and_then(|d| d.get("tokenizer"))
        .and_then(|t| t.as_str())
}

/// A run stopped by a signal after its checkpoint: `main` prints the message and exits with
/// `code` (128 + the signal, as a shell reports it).
#[derive(Debug)]
pub struct Stopped {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(a) => train::run(a),
        Command::Finetune(a) => train::run_finetune(a),
        Command::Convert(a) => convert::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run_export(a),
        Command::Logits(a) => export::run_logits(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Ablate(a) => ablate::run(a),
        Command::Tokenizer(c) => tokenizer::run(c),
        Command::Data(c) => data::run(c),
    }
}
