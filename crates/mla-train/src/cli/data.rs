//! `mla data ...` (placeholder, to be written).

#[derive(clap::Subcommand)]
pub enum DataCommand {}

pub fn run(c: DataCommand) -> anyhow::Result<()> {
    match c {}
}
