//! `mla tokenizer ...` (placeholder, to be written).

#[derive(clap::Subcommand)]
pub enum TokenizerCommand {}

pub fn run(c: TokenizerCommand) -> anyhow::Result<()> {
    match c {}
}
