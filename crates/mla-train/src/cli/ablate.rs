//! `mla ablate`: one run per attention type and seed from a base config, then `mla compare`.

use std::path::PathBuf;

use anyhow::Context;
use mla_model::AttentionKind;
use mla_train::ablate::{self, AblationSpec, MatchParams};
use mla_train::compare;
use serde_json::json;

fn parse_attn(s: &str) -> Result<AttentionKind, String> {
    AttentionKind::parse(s).ok_or_else(|| format!("{s:?}: expected mla, mha, gqa or mqa"))
}

#[derive(clap::Args)]
pub struct Args {
    /// Base run config (TOML): data, schedule, and the model every arm starts from.
    base: PathBuf,
    /// Attention types to train, comma-separated; the first is the parameter-count reference.
    #[arg(long, value_delimiter = ',', value_parser = parse_attn, default_value = "mla,mha,gqa,mqa")]
    attn: Vec<AttentionKind>,
    /// Runs per arm, with seeds base seed, base seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Match the first arm's parameter count by changing `d_ff` (multiples of 8) or
    /// `n_layers` of the other arms, or not at all: d_ff, layers or none.
    #[arg(long, default_value = "d_ff")]
    match_params: MatchParams,
    /// Key/value heads of the gqa arm (default n_heads / 4, at least 2).
    #[arg(long)]
    gqa_kv_heads: Option<usize>,
    /// Directory of the runs and the comparison (default runs/ablation-<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override any base config field, e.g. --set train.max_steps=100 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Print the arms and runs, train nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the final comparison table as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let base = super::train::load_config(&args.base, &args.set)?;
    let spec = AblationSpec {
        arms: args.attn,
        seeds: args.seeds,
        match_params: args.match_params,
        gqa_kv_heads: args.gqa_kv_heads,
    };
    let arms = ablate::derive_arms(&base.model, &spec)?;
    let out = args.out.unwrap_or_else(|| ablate::default_out(&base));
    let runs = ablate::plan(&base, &arms, spec.seeds, &out);

    eprintln!(
        "ablation of {} | {} arm(s) x {} seed(s) = {} runs of {} steps x {} tokens | \
         parameter matching: {} | into {}",
        args.base.display(),
        arms.len(),
        spec.seeds,
        runs.len(),
        base.max_steps(),
        base.tokens_per_step(),
        spec.match_params.as_str(),
        out.display()
    );
    eprint!("{}", ablate::arms_table(&arms));
    for run in &runs {
        let st = ablate::state(run)?;
        let st = match st {
            ablate::RunState::Finished => "finished".to_string(),
            ablate::RunState::Partial { step } => format!("resumes at step {step}"),
            ablate::RunState::New => "to train".to_string(),
        };
        eprintln!("  {} ({st})", run.dir.display());
    }
    if args.dry_run {
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let plan = json!({
        "base": args.base,
        "overrides": args.set,
        "seeds": runs.iter().map(|r| r.seed).collect::<std::collections::BTreeSet<_>>(),
        "match_params": spec.match_params.as_str(),
        "arms": arms.iter().map(|a| json!({
            "attention": a.name(),
            "n_layers": a.model.n_layers,
            "d_ff": a.model.d_ff,
            "parameters": a.params,
            "kv_cache_bytes_per_token": a.kv_bytes_per_token,
            "change": a.change,
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(|r| &r.dir).collect::<Vec<_>>(),
    });
    let plan_path = out.join("ablation.json");
    std::fs::write(&plan_path, serde_json::to_string_pretty(&plan)? + "\n")
        .with_context(|| format!("writing {}", plan_path.display()))?;

    let stop = mla_train::stop::StopSignal::install()
        .context("cannot install the SIGINT/SIGTERM handlers")?;
    let report = ablate::execute(&runs, &arms, stop, &mut |line| eprintln!("{line}"))?;
    if report.interrupted {
        eprintln!("interrupted; run the same command again to continue where it stopped");
        return Ok(());
    }
    eprintln!(
        "{} run(s) trained, {} already finished",
        report.trained.len(),
        report.skipped.len()
    );
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.dir.clone()).collect();
    let cmp = compare::compare(compare::load_runs(&dirs)?);
    super::compare::report(&cmp, &out, args.json, false, true)
}
