//! Ablations: one run per attention type ("arm") and seed from a base config, parameter
//! counts matched across arms, trained one after another, resumable.
//!
//! Each arm keeps the base's model apart from the attention: `mla` takes the base's MLA
//! dimensions when the base is an MLA config, else the paper's defaults (`resolve` fills
//! them); `mha`/`gqa`/`mqa` drop the MLA keys and use the base's head width (d_model / n_heads
//! unless the base is a standard-attention config with its own `head_dim`), `gqa` with
//! `gqa_kv_heads` key/value heads. The first arm is the reference: with
//! [`MatchParams::DFf`] every other arm's MLP width (a multiple of 8), with
//! [`MatchParams::Layers`] its depth, is chosen to bring its parameter count closest to the
//! reference's, and the arm says what changed.
//!
//! Arm `a` with seed `s` (base seed + i) trains in `<out>/<a>-s<s>/`. A run whose
//! `summary.json` says it finished is skipped; one with checkpoints resumes; the others start.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use mla_model::accounting::{self, CacheMode};
use mla_model::{AttentionConfig, AttentionKind, ModelConfig};

use crate::checkpoint;
use crate::compare::{RunSummary, human_count};
use crate::config::RunConfig;
use crate::stop::StopSignal;
use crate::trainer::{self, Resume, TrainOptions, TrainSummary};

#[derive(Debug, thiserror::Error)]
pub enum AblateError {
    #[error("{0}")]
    Spec(String),
    #[error("arm {arm}: {message}")]
    Arm { arm: String, message: String },
    #[error("{dir}: {message}")]
    Run { dir: PathBuf, message: String },
    // The cause in the message, not as a `source()`: `{:#}` would print it twice.
    #[error("training {}: {cause}", dir.display())]
    Train {
        dir: PathBuf,
        cause: crate::error::TrainError,
    },
}

/// How arms are brought to the reference arm's parameter count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatchParams {
    /// Leave every arm as derived.
    None,
    /// Change the number of layers.
    Layers,
    /// Change the SwiGLU hidden width (in steps of [`D_FF_STEP`]).
    #[default]
    DFf,
}

/// `d_ff` is matched in multiples of this.
pub const D_FF_STEP: usize = 8;

impl FromStr for MatchParams {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "layers" | "n_layers" => Ok(Self::Layers),
            "d_ff" | "dff" => Ok(Self::DFf),
            _ => Err(format!("{s:?}: expected none, layers or d_ff")),
        }
    }
}

impl MatchParams {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Layers => "layers",
            Self::DFf => "d_ff",
        }
    }
}

/// What to ablate.
#[derive(Clone, Debug)]
pub struct AblationSpec {
    /// The arms in order; the first is the parameter-count reference.
    pub arms: Vec<AttentionKind>,
    /// Runs per arm, with seeds `base seed + i`.
    pub seeds: u64,
    pub match_params: MatchParams,
    /// Key/value heads of the `gqa` arm (default: [`default_gqa_kv_heads`]).
    pub gqa_kv_heads: Option<usize>,
}

/// `n_heads / 4`, at least 2 (so that gqa is neither mqa nor, from 4 heads up, mha), lowered to
/// a divisor of `n_heads`.
pub fn default_gqa_kv_heads(n_heads: usize) -> usize {
    let mut k = (n_heads / 4).max(2).min(n_heads);
    while !n_heads.is_multiple_of(k) {
        k -= 1;
    }
    k
}

/// One derived arm.
#[derive(Clone, Debug)]
pub struct Arm {
    pub kind: AttentionKind,
    pub model: ModelConfig,
    pub params: usize,
    pub kv_bytes_per_token: usize,
    /// What parameter matching changed, in words ("d_ff 512 -> 448 to match ...").
    pub change: String,
}

impl Arm {
    pub fn name(&self) -> &'static str {
        self.kind.as_str()
    }
}

fn arm_err(kind: AttentionKind, message: impl Into<String>) -> AblateError {
    AblateError::Arm {
        arm: kind.to_string(),
        message: message.into(),
    }
}

/// The base model with another attention type, before parameter matching.
pub fn with_attention(
    base: &ModelConfig,
    kind: AttentionKind,
    gqa_kv_heads: Option<usize>,
) -> Result<ModelConfig, AblateError> {
    if kind == base.kind() && (kind != AttentionKind::Gqa || gqa_kv_heads.is_none()) {
        return Ok(base.clone());
    }
    let mut s = base.to_section();
    s.attention = Some(kind);
    s.q_lora_rank = None;
    s.kv_lora_rank = None;
    s.qk_nope_head_dim = None;
    s.qk_rope_head_dim = None;
    s.v_head_dim = None;
    s.n_kv_heads = None;
    s.head_dim = match base.attention {
        AttentionConfig::Standard(a) if kind != AttentionKind::Mla => Some(a.head_dim),
        _ => None,
    };
    if kind == AttentionKind::Gqa {
        s.n_kv_heads = Some(gqa_kv_heads.unwrap_or_else(|| default_gqa_kv_heads(base.n_heads)));
    }
    s.resolve().map_err(|e| arm_err(kind, e.to_string()))
}

fn total(m: &ModelConfig) -> usize {
    accounting::param_counts(m).total
}

fn percent(a: usize, reference: usize) -> String {
    format!(
        "{:+.1}%",
        100.0 * (a as f64 - reference as f64) / reference as f64
    )
}

/// Derive every arm from the base model, matching parameter counts to the first arm.
pub fn derive_arms(base: &ModelConfig, spec: &AblationSpec) -> Result<Vec<Arm>, AblateError> {
    if spec.arms.is_empty() {
        return Err(AblateError::Spec(
            "no arms: give --attn, e.g. mla,mha".into(),
        ));
    }
    for (i, a) in spec.arms.iter().enumerate() {
        if spec.arms[..i].contains(a) {
            return Err(AblateError::Spec(format!("arm {a} is listed twice")));
        }
    }
    if spec.seeds == 0 {
        return Err(AblateError::Spec("--seeds must be at least 1".into()));
    }
    let reference = with_attention(base, spec.arms[0], spec.gqa_kv_heads)?;
    let ref_params = total(&reference);
    let ref_name = spec.arms[0].as_str();
    let mut arms = vec![Arm {
        kind: spec.arms[0],
        kv_bytes_per_token: accounting::kv_cache(&reference, CacheMode::Latent).bytes_per_token,
        params: ref_params,
        model: reference,
        change: format!("reference ({} parameters)", human_count(ref_params as f64)),
    }];
    for &kind in &spec.arms[1..] {
        let derived = with_attention(base, kind, spec.gqa_kv_heads)?;
        let before = total(&derived);
        let (model, change) = match spec.match_params {
            MatchParams::None => {
                let change = format!(
                    "unchanged ({} parameters, {} vs {ref_name})",
                    human_count(before as f64),
                    percent(before, ref_params)
                );
                (derived, change)
            }
            MatchParams::DFf => {
                let m = match_d_ff(&derived, ref_params);
                let change = resized(
                    "d_ff",
                    derived.d_ff,
                    m.d_ff,
                    total(&m),
                    ref_params,
                    ref_name,
                );
                (m, change)
            }
            MatchParams::Layers => {
                let m = match_layers(&derived, ref_params);
                let change = resized(
                    "n_layers",
                    derived.n_layers,
                    m.n_layers,
                    total(&m),
                    ref_params,
                    ref_name,
                );
                (m, change)
            }
        };
        arms.push(Arm {
            kind,
            params: total(&model),
            kv_bytes_per_token: accounting::kv_cache(&model, CacheMode::Latent).bytes_per_token,
            model,
            change,
        });
    }
    Ok(arms)
}

/// What parameter matching did to `key` (`before` -> `after`), in words, with the arm's
/// resulting count against the reference's.
fn resized(
    key: &str,
    before: usize,
    after: usize,
    params: usize,
    ref_params: usize,
    ref_name: &str,
) -> String {
    let verb = if after == before {
        format!("{key} {after} kept: closest to")
    } else {
        format!("{key} {before} -> {after} to match")
    };
    format!(
        "{verb} the {} parameters of {ref_name} ({}, {})",
        human_count(ref_params as f64),
        human_count(params as f64),
        percent(params, ref_params)
    )
}

/// The `d_ff` (a positive multiple of [`D_FF_STEP`]) whose total parameter count is closest to
/// `target`; the model's own `d_ff` when nothing is closer.
fn match_d_ff(m: &ModelConfig, target: usize) -> ModelConfig {
    let per_unit = 3 * m.n_layers * m.d_model;
    let exact = m.d_ff as f64 + (target as f64 - total(m) as f64) / per_unit as f64;
    let k = (exact / D_FF_STEP as f64).floor().max(1.0) as usize;
    let mut best = m.clone();
    for cand in [k * D_FF_STEP, (k + 1) * D_FF_STEP] {
        let mut c = m.clone();
        c.d_ff = cand;
        if total(&c).abs_diff(target) < total(&best).abs_diff(target) {
            best = c;
        }
    }
    best
}

/// The `n_layers` (at least 1) whose total parameter count is closest to `target`.
fn match_layers(m: &ModelConfig, target: usize) -> ModelConfig {
    let mut one = m.clone();
    one.n_layers = 1;
    let mut two = m.clone();
    two.n_layers = 2;
    let per_layer = total(&two) - total(&one);
    let fixed = total(&one) - per_layer;
    let exact = (target as f64 - fixed as f64) / per_layer as f64;
    let k = exact.floor().max(1.0) as usize;
    let mut best = m.clone();
    for cand in [k, k + 1] {
        let mut c = m.clone();
        c.n_layers = cand;
        if total(&c).abs_diff(target) < total(&best).abs_diff(target) {
            best = c;
        }
    }
    best
}

/// The arms as an aligned table: attention, layers, d_ff, parameters, KV cache, what changed.
pub fn arms_table(arms: &[Arm]) -> String {
    let mut rows = vec![[
        "arm".to_string(),
        "layers".into(),
        "d_ff".into(),
        "kv heads".into(),
        "params".into(),
        "KV B/token".into(),
        "parameter matching".into(),
    ]];
    for a in arms {
        let kv_heads = match a.model.attention {
            AttentionConfig::Standard(s) => s.n_kv_heads.to_string(),
            AttentionConfig::Latent(l) => format!("latent {}", l.kv_lora_rank),
        };
        rows.push([
            a.name().into(),
            a.model.n_layers.to_string(),
            a.model.d_ff.to_string(),
            kv_heads,
            human_count(a.params as f64),
            a.kv_bytes_per_token.to_string(),
            a.change.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if (1..=5).contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One run of the ablation.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Index into the arms.
    pub arm: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub config: RunConfig,
}

/// `runs/ablation-<base name>` (`runs/<base name>` when that already starts with "ablation").
pub fn default_out(base: &RunConfig) -> PathBuf {
    if base.name.starts_with("ablation") {
        PathBuf::from("runs").join(&base.name)
    } else {
        PathBuf::from("runs").join(format!("ablation-{}", base.name))
    }
}

/// Every arm x seed as a run config and directory, seed-major (all arms of the first seed,
/// then the next), so that an interrupted ablation already compares every arm.
pub fn plan(base: &RunConfig, arms: &[Arm], seeds: u64, out: &Path) -> Vec<PlannedRun> {
    let mut runs = vec![];
    for i in 0..seeds {
        let seed = base.train.seed + i;
        for (a, arm) in arms.iter().enumerate() {
            let mut cfg = base.clone();
            cfg.model = arm.model.clone();
            cfg.train.seed = seed;
            cfg.name = format!("{}-{}-s{seed}", base.name, arm.name());
            // Every run keeps its checkpoints in its own directory.
            cfg.checkpoint.dir = None;
            runs.push(PlannedRun {
                arm: a,
                seed,
                dir: out.join(format!("{}-s{seed}", arm.name())),
                config: cfg,
            });
        }
    }
    runs
}

/// Where a planned run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// `summary.json` says it trained all its steps.
    Finished,
    /// Has checkpoints: continues from this step.
    Partial {
        step: u64,
    },
    New,
}

/// The sections in which two configs differ.
fn config_diff(a: &RunConfig, b: &RunConfig) -> Vec<String> {
    let mut d: Vec<String> = a
        .model
        .differing_fields(&b.model)
        .into_iter()
        .map(|f| format!("model.{f}"))
        .collect();
    let sections = [
        ("data", a.data != b.data),
        ("train", a.train != b.train),
        ("optim", a.optim != b.optim),
        ("schedule", a.schedule != b.schedule),
        ("eval", a.eval != b.eval),
        ("checkpoint", a.checkpoint != b.checkpoint),
        ("log", a.log != b.log),
    ];
    d.extend(
        sections
            .iter()
            .filter(|s| s.1)
            .map(|s| format!("[{}]", s.0)),
    );
    d
}

/// Whether `run` is done, half done or not started. A directory that holds another config's
/// run is an error, not something to overwrite or resume.
pub fn state(run: &PlannedRun) -> Result<RunState, AblateError> {
    let err = |message: String| AblateError::Run {
        dir: run.dir.clone(),
        message,
    };
    let stored = run.dir.join("config.toml");
    if stored.exists() {
        let old = RunConfig::from_resolved_file(&stored).map_err(|e| err(e.to_string()))?;
        let mut a = old.clone();
        let mut b = run.config.clone();
        a.name = String::new();
        b.name = String::new();
        if a != b {
            return Err(err(format!(
                "holds a run of another config (differs in {}); use another --out, or remove \
                 the directory to retrain it",
                config_diff(&old, &run.config).join(", ")
            )));
        }
    }
    if let Some(s) = RunSummary::read(&run.dir)
        && !s.interrupted
        && s.steps == run.config.max_steps()
    {
        return Ok(RunState::Finished);
    }
    let ckpt = trainer::checkpoint_dir(&run.config, &run.dir);
    match checkpoint::latest(&ckpt).map_err(|e| err(e.to_string()))? {
        Some(c) => Ok(RunState::Partial { step: c.state.step }),
        None => Ok(RunState::New),
    }
}

/// What [`execute`] did.
#[derive(Debug, Default)]
pub struct ExecuteReport {
    pub skipped: Vec<PathBuf>,
    pub trained: Vec<TrainSummary>,
    /// Stopped by the interrupt flag; the ablation continues when run again.
    pub interrupted: bool,
}

/// Train the planned runs one after another, skipping finished ones and resuming half-done
/// ones. `say` gets one line per run before it starts.
pub fn execute(
    runs: &[PlannedRun],
    arms: &[Arm],
    stop: StopSignal,
    say: &mut dyn FnMut(String),
) -> Result<ExecuteReport, AblateError> {
    // Check every directory first: a conflict should stop the ablation before hours of work.
    let states = runs.iter().map(state).collect::<Result<Vec<_>, _>>()?;
    let mut report = ExecuteReport::default();
    for (i, (run, st)) in runs.iter().zip(states).enumerate() {
        let arm = &arms[run.arm];
        let what = format!(
            "[{}/{}] {} seed {} ({}, {} parameters) in {}",
            i + 1,
            runs.len(),
            arm.name(),
            run.seed,
            arm.model.kind(),
            human_count(arm.params as f64),
            run.dir.display()
        );
        let resume = match st {
            RunState::Finished => {
                say(format!("{what}: finished, skipped"));
                report.skipped.push(run.dir.clone());
                continue;
            }
            RunState::Partial { step } => {
                say(format!("{what}: resuming from step {step}"));
                Resume::Required
            }
            RunState::New => {
                say(format!("{what}: training {} steps", run.config.max_steps()));
                Resume::Never
            }
        };
        let summary = trainer::train(
            &run.config,
            &TrainOptions {
                run_dir: run.dir.clone(),
                resume,
                stop: stop.clone(),
                // Arms run one after another in this process.
                launch: None,
            },
        )
        .map_err(|cause| AblateError::Train {
            dir: run.dir.clone(),
            cause,
        })?;
        let stopped = summary.interrupted;
        report.trained.push(summary);
        if stopped {
            report.interrupted = true;
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_default_kv_heads_divide() {
        for (h, k) in [
            (4, 2),
            (8, 2),
            (12, 3),
            (16, 4),
            (6, 2),
            (2, 2),
            (1, 1),
            (32, 8),
        ] {
            assert_eq!(default_gqa_kv_heads(h), k, "{h} heads");
        }
    }

    #[test]
    fn match_params_parse() {
        assert_eq!("d_ff".parse::<MatchParams>(), Ok(MatchParams::DFf));
        assert_eq!("layers".parse::<MatchParams>(), Ok(MatchParams::Layers));
        assert!("width".parse::<MatchParams>().is_err());
    }
}
