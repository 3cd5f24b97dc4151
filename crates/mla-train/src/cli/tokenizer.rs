//! `mla tokenizer train | encode | decode`: train a byte-level BPE tokenizer and check one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use mla_data::{EOT, Tokenizer, TrainOptions};

#[derive(clap::Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (as GPT-2's) and save it as a HuggingFace tokenizer.json.
    Train(TrainArgs),
    /// Print the token ids of a text (no special tokens added).
    Encode(EncodeArgs),
    /// Print the text of token ids.
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Vocabulary size, 256 byte tokens and the special tokens included.
    #[arg(long)]
    vocab_size: usize,
    /// Where to write tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    /// A special token (repeatable); giving any replaces the default.
    #[arg(long = "special", value_name = "TOKEN", default_values_t = [EOT.to_string()])]
    special: Vec<String>,
    /// Learn no merge of a pair seen fewer times than this.
    #[arg(long, default_value_t = 0)]
    min_frequency: u64,
    /// JSON field holding the text of .jsonl inputs.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Corpus files, directories (*.txt, *.md, *.jsonl inside) or globs.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// A tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// The text to encode.
    text: String,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// A tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Token ids.
    #[arg(required = true)]
    ids: Vec<u32>,
}

pub fn run(c: TokenizerCommand) -> anyhow::Result<()> {
    match c {
        TokenizerCommand::Train(a) => {
            let t0 = Instant::now();
            let opts = TrainOptions {
                vocab_size: a.vocab_size,
                special_tokens: a.special,
                min_frequency: a.min_frequency,
                text_field: a.text_field,
                show_progress: true,
            };
            let tok = Tokenizer::train(&a.inputs, &opts).context("training the tokenizer")?;
            tok.save(&a.out)?;
            println!(
                "wrote {} (vocab size {}) in {:.1} s",
                a.out.display(),
                tok.vocab_size(),
                t0.elapsed().as_secs_f64()
            );
        }
        TokenizerCommand::Encode(a) => {
            let tok = Tokenizer::from_file(&a.tokenizer)?;
            let ids = tok.encode(&a.text)?;
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{}", ids.join(" "));
        }
        TokenizerCommand::Decode(a) => {
            let tok = Tokenizer::from_file(&a.tokenizer)?;
            println!("{}", tok.decode(&a.ids)?);
        }
    }
    Ok(())
}
