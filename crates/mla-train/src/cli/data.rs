//! `mla data prepare`: corpus files -> llm.c token shards `DIR/train_*.bin`, `DIR/val_*.bin`.

use std::path::PathBuf;

use anyhow::Context;
use mla_data::{PrepareOptions, prepare};

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Tokenize a corpus into train/val token shards (llm.c .bin format).
    Prepare(PrepareArgs),
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// A HuggingFace tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output directory for train_*.bin and val_*.bin.
    #[arg(long)]
    out: PathBuf,
    /// Share of documents held out for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of the train/val document split.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Maximum tokens per shard.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// JSON field holding the text of .jsonl inputs.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Do not precede documents with <|endoftext|>.
    #[arg(long)]
    no_eot: bool,
    /// Corpus files (one document per file; .jsonl: one per line), directories or globs.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

pub fn run(c: DataCommand) -> anyhow::Result<()> {
    match c {
        DataCommand::Prepare(a) => {
            let opts = PrepareOptions {
                val_fraction: a.val_fraction,
                seed: a.seed,
                shard_tokens: a.shard_tokens,
                text_field: a.text_field,
                eot: !a.no_eot,
                progress: true,
                ..PrepareOptions::new(a.inputs, a.tokenizer, a.out.clone())
            };
            let s = prepare(&opts).context("preparing the corpus")?;
            println!(
                "{:<12} {:>12} {:>14} {:>7}",
                "split", "documents", "tokens", "shards"
            );
            println!(
                "{:<12} {:>12} {:>14} {:>7}",
                "train",
                s.train_documents,
                s.train_tokens,
                s.train_shards.len()
            );
            println!(
                "{:<12} {:>12} {:>14} {:>7}",
                "val",
                s.val_documents,
                s.val_tokens,
                s.val_shards.len()
            );
            println!(
                "{} files, {:.2} MB of text, {:.2} bytes/token, vocab {} ({:?} shards), \
                 {:.1} s, {:.2} MB/s",
                s.files,
                s.bytes as f64 / 1e6,
                s.bytes_per_token(),
                s.vocab_size,
                s.dtype,
                s.seconds,
                s.mb_per_s()
            );
            if s.empty_documents > 0 {
                println!("skipped {} empty documents", s.empty_documents);
            }
            println!("wrote {}", a.out.display());
        }
    }
    Ok(())
}
