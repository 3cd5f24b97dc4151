//! `mla compare`: loss curves of runs against each other, and a table of what they reached.

use std::path::PathBuf;

use anyhow::Context;
use mla_train::compare::{self, Comparison};

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (each with config.toml and metrics.jsonl), or a directory of runs such
    /// as `mla ablate` writes.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Where compare.png, compare.svg and compare.json go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Print the table as JSON (on stdout; messages go to stderr).
    #[arg(long)]
    json: bool,
    /// Fail when the runs did not use the same data and tokenizer.
    #[arg(long)]
    strict: bool,
    /// Print the table only; write no files.
    #[arg(long)]
    no_plot: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runs = compare::load_runs(&args.runs)?;
    let cmp = compare::compare(runs);
    report(&cmp, &args.out, args.json, args.strict, !args.no_plot)
}

/// Check, write the figure, print the table: shared with `mla ablate`.
pub fn report(
    cmp: &Comparison,
    out: &std::path::Path,
    json: bool,
    strict: bool,
    write: bool,
) -> anyhow::Result<()> {
    if strict {
        cmp.check_strict()?;
    }
    if let Some(w) = cmp.warning() {
        eprintln!("{w}");
    }
    if write {
        let files = cmp
            .write_outputs(out)
            .with_context(|| format!("writing the comparison into {}", out.display()))?;
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        eprintln!("wrote {}", names.join(", "));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&cmp.to_json())?);
    } else {
        print!("{}", cmp.table());
    }
    Ok(())
}
