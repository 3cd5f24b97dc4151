//! Compare runs: loss curves against tokens and wall time, and a table of what each run cost
//! and reached.
//!
//! A run directory gives its resolved `config.toml`, `metrics.jsonl` and, once it ended,
//! `summary.json`. Runs whose resolved configs are equal apart from `train.seed` and the run
//! name form one group (the seeds of one config): the figure shows the group's mean curve
//! with a min-max band, and the table gives mean ± spread, where the spread is half the range,
//! `(max - min) / 2`, so that mean ± spread is exactly the band. Curves of a group are aligned
//! by step, keeping the steps that every run of the group logged.
//!
//! Runs that did not train on the same data (`data.train`, `data.val` globs) or tokenizer
//! (the file's content hash when the file exists, else its path) as the first run are flagged:
//! a warning names what differs and the table marks them with `!`.

mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mla_model::accounting::{self, CacheMode};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::metrics::{self, EvalRecord, Record, TrainRecord};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{dir}: {message}")]
    Run { dir: PathBuf, message: String },
    #[error("no runs to compare")]
    NoRuns,
    #[error("{0}")]
    Mismatch(String),
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// The fields of `summary.json` ([`crate::trainer::TrainSummary`]) a comparison uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: u64,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub interrupted: bool,
}

impl RunSummary {
    /// `dir/summary.json`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<RunSummary> {
        let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// One run directory, read.
#[derive(Clone, Debug)]
pub struct Run {
    pub dir: PathBuf,
    /// The directory's name: what the table and legend call the run.
    pub name: String,
    pub config: RunConfig,
    pub train: Vec<TrainRecord>,
    pub eval: Vec<EvalRecord>,
    pub summary: Option<RunSummary>,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Run, CompareError> {
        let err = |message: String| CompareError::Run {
            dir: dir.to_path_buf(),
            message,
        };
        let config = RunConfig::from_resolved_file(&dir.join("config.toml")).map_err(|e| {
            err(format!(
                "no readable config.toml ({e}); is it a run directory?"
            ))
        })?;
        let records = metrics::read(&dir.join("metrics.jsonl")).map_err(|e| err(e.to_string()))?;
        let mut train = vec![];
        let mut eval = vec![];
        for r in records {
            match r {
                Record::Train(t) => train.push(t),
                Record::Eval(e) => eval.push(e),
            }
        }
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map_or_else(|| config.name.clone(), |n| n.to_string_lossy().into_owned());
        Ok(Run {
            dir: dir.to_path_buf(),
            name,
            config,
            train,
            eval,
            summary: RunSummary::read(dir),
        })
    }

    /// The loss of the last train line.
    pub fn final_train_loss(&self) -> Option<f32> {
        self.train.last().map(|r| r.loss)
    }

    /// The lowest validation loss of any eval line.
    pub fn best_val_loss(&self) -> Option<f32> {
        self.eval.iter().map(|r| r.val_loss).reduce(f32::min)
    }

    /// The last step any line reached.
    pub fn last_step(&self) -> u64 {
        let t = self.train.last().map_or(0, |r| r.step);
        let e = self.eval.last().map_or(0, |r| r.step);
        t.max(e)
    }

    /// `summary.json` when it describes the run as far as its metrics go (not an older stop).
    fn current_summary(&self) -> Option<&RunSummary> {
        self.summary
            .as_ref()
            .filter(|s| s.steps >= self.last_step())
    }

    /// Training wall time in seconds: the summary's, else the last metrics line's.
    pub fn wall_time_s(&self) -> Option<f64> {
        if let Some(s) = self.current_summary() {
            return Some(s.elapsed_s);
        }
        let t = self.train.iter().map(|r| r.elapsed_s);
        let e = self.eval.iter().map(|r| r.elapsed_s);
        t.chain(e).reduce(f64::max)
    }

    /// Training tokens per second over the whole run (evaluation time included): the
    /// summary's, else the last train line's tokens over its elapsed time.
    pub fn tokens_per_s(&self) -> Option<f64> {
        if let Some(s) = self.current_summary() {
            return Some(s.tokens_per_s);
        }
        let last = self.train.last()?;
        (last.elapsed_s > 0.0).then(|| last.tokens as f64 / last.elapsed_s)
    }

    /// Trained all its steps and was not interrupted.
    pub fn finished(&self) -> bool {
        self.current_summary()
            .is_some_and(|s| !s.interrupted && s.steps == self.config.max_steps())
    }
}

/// Read every run directory. A directory without `config.toml` whose subdirectories are runs
/// (as `mla ablate` writes them) stands for those runs, in name order.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>, CompareError> {
    let mut runs = vec![];
    for dir in dirs {
        if !dir.join("config.toml").exists()
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            let mut subs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.toml").exists() && p.join("metrics.jsonl").exists())
                .collect();
            if !subs.is_empty() {
                subs.sort();
                for sub in subs {
                    runs.push(Run::load(&sub)?);
                }
                continue;
            }
        }
        runs.push(Run::load(dir)?);
    }
    if runs.is_empty() {
        return Err(CompareError::NoRuns);
    }
    Ok(runs)
}

/// Mean, spread (half the range) and range of one quantity over the runs of a group.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    /// `(max - min) / 2`.
    pub spread: f64,
    pub min: f64,
    pub max: f64,
    /// How many runs had a value.
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stat {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            spread: (max - min) / 2.0,
            min,
            max,
            n: v.len(),
        })
    }
}

/// One point of a group's curve: the runs' values at one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    pub step: u64,
    pub tokens: u64,
    /// Mean over the runs.
    pub elapsed_s: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// The runs of one config (differing only in seed), as a table row and a curve.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub label: String,
    pub attention: String,
    pub parameters: usize,
    pub kv_cache_bytes_per_token: usize,
    pub kv_cache_elements_per_token: usize,
    pub runs: Vec<String>,
    pub run_dirs: Vec<PathBuf>,
    pub seeds: Vec<u64>,
    /// Steps reached: the fewest over the runs, and the config's total.
    pub steps: u64,
    pub max_steps: u64,
    pub finished: bool,
    pub final_train_loss: Option<Stat>,
    pub best_val_loss: Option<Stat>,
    pub tokens_per_s: Option<Stat>,
    pub wall_time_s: Option<Stat>,
    /// Data or tokenizer differs from the first run's (see [`Comparison::mismatches`]).
    pub mismatch: bool,
    #[serde(skip)]
    pub train_curve: Vec<CurvePoint>,
    #[serde(skip)]
    pub val_curve: Vec<CurvePoint>,
}

/// A run that did not use the data or tokenizer of the reference (first) run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mismatch {
    pub run: String,
    pub field: String,
    pub value: String,
    pub reference_run: String,
    pub reference_value: String,
}

/// What a tokenizer is, for comparing runs: its content when the file can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerId {
    None,
    /// FNV-1a 64 of the file's bytes, and the path it was read from.
    Content(u64, String),
    /// The file is not here: only the path can be compared.
    Path(String),
}

impl TokenizerId {
    pub fn of(path: &str) -> TokenizerId {
        if path.is_empty() {
            return TokenizerId::None;
        }
        match std::fs::read(path) {
            Ok(bytes) => TokenizerId::Content(fnv1a64(&bytes), path.to_string()),
            Err(_) => TokenizerId::Path(path.to_string()),
        }
    }

    fn same(&self, other: &TokenizerId) -> bool {
        match (self, other) {
            (TokenizerId::Content(a, _), TokenizerId::Content(b, _)) => a == b,
            (TokenizerId::Content(_, a), TokenizerId::Path(b))
            | (TokenizerId::Path(a), TokenizerId::Content(_, b))
            | (TokenizerId::Path(a), TokenizerId::Path(b)) => a == b,
            (TokenizerId::None, TokenizerId::None) => true,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            TokenizerId::None => "(none)".into(),
            TokenizerId::Content(h, p) => format!("{p} (content fnv1a64 {h:016x})"),
            TokenizerId::Path(p) => format!("{p} (file not found; path compared)"),
        }
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs, grouped, with their mismatches.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub runs: Vec<Run>,
    pub groups: Vec<Group>,
    pub mismatches: Vec<Mismatch>,
}

/// `name` without a trailing seed suffix (`-s1337`, `_seed2`, ...), if it has one.
fn strip_seed(name: &str) -> &str {
    for sep in ["-seed", "_seed", "-s", "_s"] {
        if let Some(at) = name.rfind(sep) {
            let digits = &name[at + sep.len()..];
            if at > 0 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return &name[..at];
            }
        }
    }
    name
}

/// The config a group shares: everything but the seed and the name.
fn group_key(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.name = "run".into();
    c.train.seed = 0;
    c.to_toml()
}

fn curve<R>(
    runs: &[&Run],
    records: impl Fn(&Run) -> &[R],
    value: impl Fn(&R) -> (u64, u64, f64, f64),
) -> Vec<CurvePoint> {
    // Per run: step -> (tokens, elapsed, value); a step logged twice keeps its last line.
    let per_run: Vec<BTreeMap<u64, (u64, f64, f64)>> = runs
        .iter()
        .map(|run| {
            records(run)
                .iter()
                .map(|r| {
                    let (step, tokens, elapsed, v) = value(r);
                    (step, (tokens, elapsed, v))
                })
                .collect()
        })
        .collect();
    // The steps every run logged.
    per_run[0]
        .iter()
        .filter_map(|(&step, &(tokens, _, _))| {
            let at: Vec<(u64, f64, f64)> = per_run
                .iter()
                .map(|m| m.get(&step).copied())
                .collect::<Option<_>>()?;
            let s = Stat::of(at.iter().map(|p| p.2)).expect("non-empty");
            Some(CurvePoint {
                step,
                tokens,
                elapsed_s: at.iter().map(|p| p.1).sum::<f64>() / at.len() as f64,
                mean: s.mean,
                min: s.min,
                max: s.max,
            })
        })
        .collect()
}

/// Group the runs and check that they trained on the same data.
pub fn compare(runs: Vec<Run>) -> Comparison {
    // Groups in order of first appearance.
    let mut keys: Vec<String> = vec![];
    let mut members: Vec<Vec<usize>> = vec![];
    for (i, run) in runs.iter().enumerate() {
        let key = group_key(&run.config);
        match keys.iter().position(|k| *k == key) {
            Some(g) => members[g].push(i),
            None => {
                keys.push(key);
                members.push(vec![i]);
            }
        }
    }

    // Data and tokenizer against the first run.
    let mut mismatches = vec![];
    let reference = &runs[0];
    let ref_tok = TokenizerId::of(&reference.config.data.tokenizer);
    for run in &runs[1..] {
        let d = &run.config.data;
        let r = &reference.config.data;
        for (field, a, b) in [
            ("data.train", &d.train, &r.train),
            ("data.val", &d.val, &r.val),
        ] {
            if a != b {
                mismatches.push(Mismatch {
                    run: run.name.clone(),
                    field: field.into(),
                    value: a.clone(),
                    reference_run: reference.name.clone(),
                    reference_value: b.clone(),
                });
            }
        }
        let tok = TokenizerId::of(&d.tokenizer);
        if !tok.same(&ref_tok) {
            mismatches.push(Mismatch {
                run: run.name.clone(),
                field: "data.tokenizer".into(),
                value: tok.describe(),
                reference_run: reference.name.clone(),
                reference_value: ref_tok.describe(),
            });
        }
    }

    let groups = members
        .iter()
        .map(|idx| {
            let rs: Vec<&Run> = idx.iter().map(|&i| &runs[i]).collect();
            let cfg = &rs[0].config;
            let names: Vec<String> = rs.iter().map(|r| r.name.clone()).collect();
            let label = if rs.len() == 1 {
                names[0].clone()
            } else {
                let stems: Vec<&str> = names.iter().map(|n| strip_seed(n)).collect();
                let stem = if stems.iter().all(|s| *s == stems[0]) {
                    stems[0].to_string()
                } else {
                    names.join("+")
                };
                format!("{stem} [{} seeds]", rs.len())
            };
            let kv = accounting::kv_cache(&cfg.model, CacheMode::Latent);
            Group {
                label,
                attention: cfg.model.kind().as_str().to_string(),
                parameters: accounting::param_counts(&cfg.model).total,
                kv_cache_bytes_per_token: kv.bytes_per_token,
                kv_cache_elements_per_token: kv.elements_per_token,
                mismatch: mismatches.iter().any(|m| names.contains(&m.run)),
                run_dirs: rs.iter().map(|r| r.dir.clone()).collect(),
                seeds: rs.iter().map(|r| r.config.train.seed).collect(),
                steps: rs.iter().map(|r| r.last_step()).min().unwrap_or(0),
                max_steps: cfg.max_steps(),
                finished: rs.iter().all(|r| r.finished()),
                final_train_loss: Stat::of(
                    rs.iter()
                        .filter_map(|r| r.final_train_loss())
                        .map(f64::from),
                ),
                best_val_loss: Stat::of(rs.iter().filter_map(|r| r.best_val_loss()).map(f64::from)),
                tokens_per_s: Stat::of(rs.iter().filter_map(|r| r.tokens_per_s())),
                wall_time_s: Stat::of(rs.iter().filter_map(|r| r.wall_time_s())),
                train_curve: curve(
                    &rs,
                    |r| &r.train,
                    |t| (t.step, t.tokens, t.elapsed_s, t.loss as f64),
                ),
                val_curve: curve(
                    &rs,
                    |r| &r.eval,
                    |e| (e.step, e.tokens, e.elapsed_s, e.val_loss as f64),
                ),
                runs: names,
            }
        })
        .collect();
    Comparison {
        runs,
        groups,
        mismatches,
    }
}

/// `1.23M`, `45.6K`, `789`.
pub fn human_count(n: f64) -> String {
    match n.abs() {
        a if a >= 1e9 => format!("{:.2}G", n / 1e9),
        a if a >= 1e6 => format!("{:.2}M", n / 1e6),
        a if a >= 1e3 => format!("{:.1}K", n / 1e3),
        _ => format!("{n:.0}"),
    }
}

fn stat_text(s: Option<Stat>, decimals: usize, scale: f64) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.*}", decimals, s.mean * scale),
        Some(s) => format!(
            "{:.*} ± {:.*}",
            decimals,
            s.mean * scale,
            decimals,
            s.spread * scale
        ),
    }
}

impl Comparison {
    /// The warning to print when runs did not use the same data or tokenizer, if any did not.
    pub fn warning(&self) -> Option<String> {
        if self.mismatches.is_empty() {
            return None;
        }
        let mut w = format!(
            "warning: not every run used the data and tokenizer of {} (marked ! in the table); \
             their losses are not comparable:",
            self.mismatches[0].reference_run
        );
        for m in &self.mismatches {
            w.push_str(&format!(
                "\n  {}: {} is {} (not {})",
                m.run, m.field, m.value, m.reference_value
            ));
        }
        Some(w)
    }

    /// `--strict`: mismatched data or tokenizers are an error.
    pub fn check_strict(&self) -> Result<(), CompareError> {
        match self.warning() {
            None => Ok(()),
            Some(w) => Err(CompareError::Mismatch(
                w.replacen("warning: ", "", 1) + "\n(--strict)",
            )),
        }
    }

    /// The table as aligned text.
    pub fn table(&self) -> String {
        let wall_max = self
            .groups
            .iter()
            .filter_map(|g| g.wall_time_s.map(|s| s.max))
            .fold(0.0, f64::max);
        let (wall_head, wall_scale) = if wall_max >= 120.0 {
            ("wall (min)", 1.0 / 60.0)
        } else {
            ("wall (s)", 1.0)
        };
        let header = [
            "",
            "run",
            "attention",
            "params",
            "KV B/token",
            "steps",
            "train loss",
            "best val loss",
            "tokens/s",
            wall_head,
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for g in &self.groups {
            rows.push(vec![
                if g.mismatch { "!" } else { "" }.into(),
                g.label.clone(),
                g.attention.clone(),
                human_count(g.parameters as f64),
                g.kv_cache_bytes_per_token.to_string(),
                if g.finished {
                    g.max_steps.to_string()
                } else {
                    format!("{}/{}", g.steps, g.max_steps)
                },
                stat_text(g.final_train_loss, 4, 1.0),
                stat_text(g.best_val_loss, 4, 1.0),
                stat_text(g.tokens_per_s, 0, 1.0),
                stat_text(g.wall_time_s, 1, wall_scale),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                // Text columns left-aligned, numbers right-aligned.
                if c <= 2 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if self.groups.iter().any(|g| g.runs.len() > 1) {
            out.push_str(
                "± is half the range over seeds, (max - min) / 2: the band in the figure.\n",
            );
        }
        if self.groups.iter().any(|g| !g.finished) {
            out.push_str("steps a/b: the run has not finished (the fewest steps of its seeds).\n");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "spread": "half the range over seeds: (max - min) / 2",
            "groups": self.groups,
            "mismatches": self.mismatches,
        })
    }

    /// Write the figure as PNG and SVG.
    pub fn plot(&self, png: &Path, svg: &Path) -> Result<(), CompareError> {
        plot::write(self, png, svg)
    }

    /// Write `compare.png`, `compare.svg` and `compare.json` into `dir`; returns their paths.
    pub fn write_outputs(&self, dir: &Path) -> Result<[PathBuf; 3], CompareError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| CompareError::Write {
                path,
                message: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(werr(dir))?;
        let png = dir.join("compare.png");
        let svg = dir.join("compare.svg");
        let json = dir.join("compare.json");
        self.plot(&png, &svg)?;
        let text = serde_json::to_string_pretty(&self.to_json()).expect("serialises") + "\n";
        std::fs::write(&json, text).map_err(werr(&json))?;
        Ok([png, svg, json])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_suffixes_are_stripped() {
        assert_eq!(strip_seed("mla-s1337"), "mla");
        assert_eq!(strip_seed("mla_seed2"), "mla");
        assert_eq!(strip_seed("gqa-kv2-s0"), "gqa-kv2");
        assert_eq!(strip_seed("mha"), "mha");
        assert_eq!(strip_seed("runs-small"), "runs-small");
        assert_eq!(strip_seed("-s1"), "-s1");
    }

    #[test]
    fn spread_is_half_the_range() {
        let s = Stat::of([1.0, 4.0, 2.5]).unwrap();
        assert_eq!(
            (s.mean, s.spread, s.min, s.max, s.n),
            (2.5, 1.5, 1.0, 4.0, 3)
        );
        assert!(Stat::of([]).is_none());
    }
}
