//! One file per subcommand; each holds its clap `Args` and a `run` function.

use clap::{Parser, Subcommand};

mod data;
mod tokenizer;

#[derive(Parser)]
#[command(name = "mla", version, about = "Train and study small language models with multi-head latent attention")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenizer training and quick encode/decode checks.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Corpus preparation into token shards.
    #[command(subcommand)]
    Data(data::DataCommand),
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tokenizer(c) => tokenizer::run(c),
        Command::Data(c) => data::run(c),
    }
}
