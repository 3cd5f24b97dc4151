//! The decode benchmark behind `mla bench decode`: for each attention type, the KV cache a
//! model actually holds and how fast it decodes, against the context length.
//!
//! Arms are derived from one model config at matched size (same d_model, layers, heads and
//! vocabulary, MLP width adjusted to match the config's parameter count; see
//! [`arms_from_config`]) or are one checkpoint's model. For every arm and
//! context the benchmark prefills `context` random tokens with one cached forward pass (timed),
//! checks the bytes the cache tensors hold against [`accounting::kv_cache`] (they must be equal:
//! a mismatch is an error), then decodes `decode_tokens` greedy tokens one at a time from that
//! cache, `repeats` times, and reports the fastest run (other load on a shared machine only
//! slows runs down). The runs go round-robin over the arms, so that a slow spell hits every
//! arm alike. Weights are random but seeded: timing does not depend on their values.
//!
//! Outputs: a text table, `decode.json`, `decode.md` (the table for a README), and `decode.png`
//! / `decode.svg` (decode tokens/s and cache MB against context, one colour per arm).
//!
//! [`throughput`] is the other benchmark: tokens/s at a fixed KV-cache memory budget, where a
//! smaller cache means a larger batch.

pub mod throughput;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use mla_model::accounting::{self, CacheMode};
use mla_model::{AttentionKind, DType, Lm, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::ablate;
use crate::checkpoint::Checkpoint;
use crate::config::TrainDType;
use crate::generate::argmax;

pub const DEFAULT_CONTEXTS: [usize; 4] = [512, 1024, 2048, 4096];

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{arm}: the cache holds {held} bytes ({elements} elements, {cached} tokens) after \
         {tokens} tokens x batch {batch}, but the accounting says {expected} ({per_token} bytes \
         per token at {dtype}); the cache or mla_model::accounting::kv_cache is wrong"
    )]
    CacheMismatch {
        arm: String,
        tokens: usize,
        cached: usize,
        batch: usize,
        held: usize,
        elements: usize,
        expected: usize,
        per_token: usize,
        dtype: &'static str,
    },
    #[error(
        "{arm}: a KV-cache budget of {budget} bytes holds no sequence at context {context}: one \
         needs {needed} bytes ({per_token} bytes per token); raise --kv-budget or lower --context"
    )]
    BudgetTooSmall {
        arm: String,
        budget: usize,
        context: usize,
        per_token: usize,
        needed: usize,
    },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// The benchmark's arms: MLA with its latent (absorbed) cache, the same MLA model with the
/// decompressed (naive) cache, and the MHA / GQA / MQA baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmKind {
    Mla,
    MlaNaive,
    Mha,
    Gqa,
    Mqa,
}

impl ArmKind {
    pub const ALL: [ArmKind; 5] = [Self::Mla, Self::MlaNaive, Self::Mha, Self::Gqa, Self::Mqa];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mla => "mla",
            Self::MlaNaive => "mla-naive",
            Self::Mha => "mha",
            Self::Gqa => "gqa",
            Self::Mqa => "mqa",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BenchError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                BenchError::Invalid(format!(
                    "unknown arm {s:?}; use any of mla, mla-naive, mha, gqa, mqa"
                ))
            })
    }

    pub fn mode(self) -> CacheMode {
        match self {
            Self::MlaNaive => CacheMode::Naive,
            _ => CacheMode::Latent,
        }
    }

    fn attention(self) -> AttentionKind {
        match self {
            Self::Mla | Self::MlaNaive => AttentionKind::Mla,
            Self::Mha => AttentionKind::Mha,
            Self::Gqa => AttentionKind::Gqa,
            Self::Mqa => AttentionKind::Mqa,
        }
    }
}

/// Where an arm's weights come from.
#[derive(Clone, Debug)]
pub enum ArmWeights {
    /// Random, from `Lm::new` on a device seeded with this.
    Random {
        seed: u64,
    },
    Checkpoint(Checkpoint),
}

/// One model and cache mode to benchmark.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    pub config: ModelConfig,
    pub mode: CacheMode,
    pub weights: ArmWeights,
    /// How the arm was sized ("d_ff 1408 -> 1728 to match ..."), or "" for a checkpoint.
    pub change: String,
}

/// One arm per kind at matched size: the attention types are derived from `base` as
/// `mla ablate` derives its arms ([`ablate::derive_arms`]: the other attention dims from the
/// paper's ratios, GQA with [`ablate::default_gqa_kv_heads`] K/V heads), and every arm's MLP
/// width is set so that its parameter count is closest to `base`'s. `max_seq_len` becomes
/// `max_seq_len`. Each arm carries what matching changed.
pub fn arms_from_config(
    base: &ModelConfig,
    kinds: &[ArmKind],
    max_seq_len: usize,
    seed: u64,
) -> Result<Vec<Arm>, BenchError> {
    let mut s = base.to_section();
    s.max_seq_len = Some(max_seq_len);
    let base = s
        .resolve()
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    // The base's own attention first: the size the others are matched to.
    let mut attentions = vec![base.kind()];
    for k in kinds {
        if !attentions.contains(&k.attention()) {
            attentions.push(k.attention());
        }
    }
    let spec = ablate::AblationSpec {
        arms: attentions,
        seeds: 1,
        match_params: ablate::MatchParams::DFf,
        gqa_kv_heads: None,
    };
    let derived =
        ablate::derive_arms(&base, &spec).map_err(|e| BenchError::Invalid(e.to_string()))?;
    Ok(kinds
        .iter()
        .map(|&kind| {
            let d = derived
                .iter()
                .find(|d| d.kind == kind.attention())
                .expect("every kind was derived");
            Arm {
                name: kind.as_str().to_string(),
                config: d.model.clone(),
                mode: kind.mode(),
                weights: ArmWeights::Random { seed },
                change: d.change.clone(),
            }
        })
        .collect())
}

/// The arms of one checkpoint: an MLA model with both caches, any other with its K/V cache.
pub fn arms_from_checkpoint(ckpt: &Checkpoint, config: &ModelConfig) -> Vec<Arm> {
    let arm = |kind: ArmKind| Arm {
        name: kind.as_str().to_string(),
        config: config.clone(),
        mode: kind.mode(),
        weights: ArmWeights::Checkpoint(ckpt.clone()),
        change: String::new(),
    };
    match config.kind() {
        AttentionKind::Mla => vec![arm(ArmKind::Mla), arm(ArmKind::MlaNaive)],
        AttentionKind::Mha => vec![arm(ArmKind::Mha)],
        AttentionKind::Gqa => vec![arm(ArmKind::Gqa)],
        AttentionKind::Mqa => vec![arm(ArmKind::Mqa)],
    }
}

#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub contexts: Vec<usize>,
    /// Single-token steps timed after each prefill.
    pub decode_tokens: usize,
    /// Decode runs from the same prefilled cache; the fastest counts.
    pub repeats: usize,
    pub batch: usize,
    /// Seeds the random prompt tokens.
    pub seed: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            contexts: DEFAULT_CONTEXTS.to_vec(),
            decode_tokens: 32,
            repeats: 3,
            batch: 1,
            seed: 0,
        }
    }
}

/// One arm at one context length.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub context: usize,
    /// Bytes the cache tensors hold after the prefill (equal to the accounting's).
    pub cache_bytes: usize,
    pub cache_mb: f64,
    pub prefill_ms: f64,
    /// Time of the fastest of the decode runs.
    pub decode_ms: f64,
    /// `decode_tokens * batch / decode_ms` (the fastest run).
    pub decode_tokens_per_s: f64,
    /// Median time of one decode step over all runs.
    pub decode_step_ms_median: f64,
    /// `decode_tokens * batch` per second of CPU time of this process (all threads; the
    /// least over the runs). Other load on the machine disturbs it much less than wall time.
    /// Linux only.
    pub decode_tokens_per_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArmReport {
    pub name: String,
    pub attention: String,
    pub cache_mode: CacheMode,
    /// Precision of weights and cache (`[model] dtype`).
    pub dtype: String,
    pub params: usize,
    /// All layers, at the model dtype (from the accounting, checked against the tensors).
    pub cache_bytes_per_token: usize,
    pub points: Vec<Point>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DecodeReport {
    /// What was benchmarked (config path, preset or checkpoint).
    pub source: String,
    pub device: String,
    pub batch: usize,
    pub decode_tokens: usize,
    /// Decode runs per point (the fastest is reported).
    pub repeats: usize,
    pub contexts: Vec<usize>,
    pub arms: Vec<ArmReport>,
}

fn random_tokens(rng: &mut ChaCha8Rng, batch: usize, t: usize, vocab: usize) -> Vec<i64> {
    (0..batch * t)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect()
}

fn int_tensor(ids: Vec<i64>, batch: usize, device: &Device) -> Tensor<2, Int> {
    let t = ids.len() / batch;
    Tensor::from_data(TensorData::new(ids, [batch, t]), device)
}

/// Greedy next token of each row from the last position's logits, read back to the host
/// (which also waits for the computation to finish).
fn next_tokens(logits: Tensor<2>) -> Vec<i64> {
    let [b, v] = logits.dims();
    let last = logits
        .reshape([b * v])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits");
    last.chunks(v).map(|row| i64::from(argmax(row))).collect()
}

/// CPU time of this process so far, all threads, in seconds (Linux: the sum of
/// `/proc/self/task/*/schedstat`, nanosecond resolution). `None` elsewhere.
fn process_cpu_s() -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn check_cache(
    arm: &Arm,
    cache: &mla_model::KvCache,
    tokens: usize,
    batch: usize,
) -> Result<(), BenchError> {
    let per_token = accounting::kv_cache(&arm.config, arm.mode).bytes_per_token;
    let expected = per_token * tokens * batch;
    let held = cache.bytes_held();
    if held != expected || cache.len() != tokens {
        return Err(BenchError::CacheMismatch {
            arm: arm.name.clone(),
            tokens,
            cached: cache.len(),
            batch,
            held,
            elements: cache.elements_held(),
            expected,
            per_token,
            dtype: arm.config.dtype.as_str(),
        });
    }
    Ok(())
}

fn same_weights(a: &Arm, b: &Arm) -> bool {
    a.config == b.config
        && match (&a.weights, &b.weights) {
            (ArmWeights::Random { seed: x }, ArmWeights::Random { seed: y }) => x == y,
            (ArmWeights::Checkpoint(x), ArmWeights::Checkpoint(y)) => x.dir == y.dir,
            _ => false,
        }
}

/// Decode runs of one arm at one context.
#[derive(Clone, Debug)]
struct Timing {
    /// Fastest run, seconds.
    wall: f64,
    /// Least CPU time of a run, seconds.
    cpu: Option<f64>,
    /// Every step of every run, seconds.
    steps: Vec<f64>,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            wall: f64::INFINITY,
            cpu: None,
            steps: Vec::new(),
        }
    }
}

impl Timing {
    fn add_run(&mut self, wall: f64, cpu: Option<f64>) {
        self.wall = self.wall.min(wall);
        if let Some(c) = cpu {
            self.cpu = Some(self.cpu.map_or(c, |x| x.min(c)));
        }
    }
}

/// Run the benchmark. All arms' models are held at once; for each context every arm is
/// prefilled, then the decode runs go round-robin over the arms. `progress` gets one line per
/// measurement (for stderr).
pub fn run_decode(
    source: &str,
    arms: &[Arm],
    opts: &DecodeOptions,
    device: &Device,
    device_name: &str,
    mut progress: impl FnMut(&str),
) -> Result<DecodeReport, BenchError> {
    if opts.contexts.is_empty() || opts.contexts.contains(&0) {
        return Err(BenchError::Invalid(
            "--context needs one or more positive lengths".into(),
        ));
    }
    if opts.batch == 0 || opts.decode_tokens == 0 {
        return Err(BenchError::Invalid(
            "--batch and --decode-tokens must be positive".into(),
        ));
    }
    let mut contexts = opts.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    let longest = contexts[contexts.len() - 1] + opts.decode_tokens;
    for arm in arms {
        if longest > arm.config.max_seq_len {
            return Err(BenchError::Invalid(format!(
                "{}: context {} + {} decode tokens = {longest} is more than the model's \
                 max_seq_len {}; lower --context or --decode-tokens",
                arm.name,
                contexts[contexts.len() - 1],
                opts.decode_tokens,
                arm.config.max_seq_len
            )));
        }
    }

    // Every arm's model at once, so that each context's decode runs can go round-robin
    // over the arms: a slow spell caused by other load on the machine then hits every arm
    // alike instead of the one that happened to be running.
    let mut models = Vec::with_capacity(arms.len());
    for (i, arm) in arms.iter().enumerate() {
        // MLA latent and naive arms share one model.
        if let Some(j) = arms[..i].iter().position(|a| same_weights(a, arm)) {
            let model: &Lm = &models[j];
            models.push(model.clone());
            continue;
        }
        let model = match &arm.weights {
            ArmWeights::Random { seed } => {
                device.seed(*seed);
                Lm::new(&arm.config, device)
            }
            ArmWeights::Checkpoint(c) => c.load_model(&arm.config, device)?,
        };
        // `[model] dtype` is the inference precision of weights and cache (and what the
        // accounting counts): bf16 runs through a bf16 copy of the weights.
        let model = match arm.config.dtype {
            DType::F32 => model,
            DType::Bf16 => crate::precision::compute_view(&model, TrainDType::Bf16),
        };
        // Warm-up: first-use allocations and the absorbed weights' first computation.
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut cache = model.new_cache(arm.mode);
        let ids = random_tokens(
            &mut rng,
            opts.batch,
            8.min(contexts[0]),
            arm.config.vocab_size,
        );
        let next =
            next_tokens(model.forward_cached_last(int_tensor(ids, opts.batch, device), &mut cache));
        next_tokens(model.forward_cached_last(int_tensor(next, opts.batch, device), &mut cache));
        models.push(model);
    }

    let mut points: Vec<Vec<Point>> = vec![Vec::new(); arms.len()];
    for &context in &contexts {
        // Prefill every arm (the same tokens where the vocabularies agree).
        let mut prefilled = Vec::with_capacity(arms.len());
        for (arm, model) in arms.iter().zip(&models) {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ context as u64);
            let ids = random_tokens(&mut rng, opts.batch, context, arm.config.vocab_size);
            let tokens = int_tensor(ids, opts.batch, device);
            // Room for the decode steps too, as `mla generate` reserves prompt + new tokens.
            let mut cache = model
                .new_cache(arm.mode)
                .with_capacity(context + opts.decode_tokens);
            let started = Instant::now();
            let next = next_tokens(model.forward_cached_last(tokens, &mut cache));
            let prefill = started.elapsed().as_secs_f64();
            check_cache(arm, &cache, context, opts.batch)?;
            prefilled.push((cache, next, prefill));
        }
        // Decode `repeats` rounds over the arms, each run from a copy of the prefilled cache,
        // and keep each arm's fastest run: other load only ever slows a run down.
        let mut timing = vec![Timing::default(); arms.len()];
        for _ in 0..opts.repeats.max(1) {
            for (i, (arm, model)) in arms.iter().zip(&models).enumerate() {
                let (cache, first, _) = &prefilled[i];
                let mut cache = cache.clone();
                let mut next = first.clone();
                let started = Instant::now();
                let cpu_started = process_cpu_s();
                for _ in 0..opts.decode_tokens {
                    let step_started = Instant::now();
                    let step = int_tensor(next, opts.batch, device);
                    next = next_tokens(model.forward_cached_last(step, &mut cache));
                    timing[i].steps.push(step_started.elapsed().as_secs_f64());
                }
                let wall = started.elapsed().as_secs_f64();
                let cpu = cpu_started.zip(process_cpu_s()).map(|(a, b)| b - a);
                timing[i].add_run(wall, cpu);
                check_cache(arm, &cache, context + opts.decode_tokens, opts.batch)?;
            }
        }
        for (i, arm) in arms.iter().enumerate() {
            let (cache, _, prefill) = &prefilled[i];
            let t = &mut timing[i];
            t.steps.sort_by(f64::total_cmp);
            let tokens = (opts.decode_tokens * opts.batch) as f64;
            let point = Point {
                context,
                cache_bytes: cache.bytes_held(),
                cache_mb: cache.bytes_held() as f64 / 1e6,
                prefill_ms: prefill * 1e3,
                decode_ms: t.wall * 1e3,
                decode_tokens_per_s: tokens / t.wall,
                decode_step_ms_median: t.steps[t.steps.len() / 2] * 1e3,
                decode_tokens_per_cpu_s: t.cpu.filter(|&c| c > 0.0).map(|c| tokens / c),
            };
            progress(&format!(
                "{:<10} context {:>6}: cache {:>9.3} MB, prefill {:>9.1} ms, decode {:>8.1} tok/s",
                arm.name, context, point.cache_mb, point.prefill_ms, point.decode_tokens_per_s
            ));
            points[i].push(point);
        }
    }
    let reports = arms
        .iter()
        .zip(points)
        .map(|(arm, points)| ArmReport {
            name: arm.name.clone(),
            attention: arm.config.kind().to_string(),
            cache_mode: arm.mode,
            dtype: arm.config.dtype.as_str().to_string(),
            params: accounting::param_counts(&arm.config).total,
            cache_bytes_per_token: accounting::kv_cache(&arm.config, arm.mode).bytes_per_token,
            points,
        })
        .collect();
    Ok(DecodeReport {
        source: source.to_string(),
        device: device_name.to_string(),
        batch: opts.batch,
        decode_tokens: opts.decode_tokens,
        repeats: opts.repeats.max(1),
        contexts,
        arms: reports,
    })
}

fn fmt_mb(mb: f64) -> String {
    if mb >= 100.0 {
        format!("{mb:.0}")
    } else if mb >= 1.0 {
        format!("{mb:.1}")
    } else {
        format!("{mb:.3}")
    }
}

impl DecodeReport {
    /// Header cells and one row of cells per arm.
    fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut head = vec!["arm".into(), "params".into(), "cache B/token".into()];
        for c in &self.contexts {
            head.push(format!("MB @{c}"));
            head.push(format!("prefill ms @{c}"));
            head.push(format!("tok/s @{c}"));
        }
        let rows = self
            .arms
            .iter()
            .map(|a| {
                let mut row = vec![
                    a.name.clone(),
                    crate::compare::human_count(a.params as f64),
                    a.cache_bytes_per_token.to_string(),
                ];
                for p in &a.points {
                    row.push(fmt_mb(p.cache_mb));
                    row.push(if p.prefill_ms < 100.0 {
                        format!("{:.1}", p.prefill_ms)
                    } else {
                        format!("{:.0}", p.prefill_ms)
                    });
                    row.push(format!("{:.1}", p.decode_tokens_per_s));
                }
                row
            })
            .collect();
        (head, rows)
    }

    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let (head, rows) = self.cells();
        format!(
            "decode benchmark: {} | device {} | batch {} | {} decode tokens after a prefill of \
             `context` tokens, fastest of {} runs\n{}",
            self.source,
            self.device,
            self.batch,
            self.decode_tokens,
            self.repeats,
            text_table(&head, &rows)
        )
    }

    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let (head, rows) = self.cells();
        markdown_table(&head, &rows)
    }

    /// Write `decode.json`, `decode.md`, `decode.png` and `decode.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        write_report(
            dir,
            "decode",
            self,
            &self.markdown(),
            &plot::DecodeFigure(self),
        )
    }
}

/// Rows under a header, columns padded to their widest cell: the first left-aligned, the
/// others right-aligned; one line each.
pub(crate) fn text_table(head: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = String::new();
    for cells in std::iter::once(head).chain(rows.iter().map(Vec::as_slice)) {
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

/// The same table in Markdown, numeric columns right-aligned.
pub(crate) fn markdown_table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", head.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        (0..head.len())
            .map(|i| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// Writes a report's `<stem>.json`, `<stem>.md`, `<stem>.png` and `<stem>.svg` into `dir`.
pub(crate) fn write_report(
    dir: &Path,
    stem: &str,
    report: &impl Serialize,
    markdown: &str,
    figure: &impl crate::figure::Figure,
) -> Result<(), BenchError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| BenchError::Write {
            path,
            message: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let json = dir.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(report).expect("report serialises");
    std::fs::write(&json, text + "\n").map_err(werr(&json))?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown).map_err(werr(&md))?;
    let (png, svg) = (
        dir.join(format!("{stem}.png")),
        dir.join(format!("{stem}.svg")),
    );
    crate::figure::write(figure, &png, &svg).map_err(|e| BenchError::Write {
        path: e.path,
        message: e.message,
    })
}

/// The figure: two panels sharing a log2 context axis.
mod plot {
    use plotters::coord::Shift;
    use plotters::prelude::*;

    use super::{DecodeReport, Point};
    use crate::figure::text::{HAlign, Label, VAlign};
    use crate::figure::{self, nice_ticks};

    const WIDTH: u32 = 1400;
    const HEIGHT: u32 = 580;
    const INK: (u8, u8, u8) = (30, 30, 30);

    pub struct DecodeFigure<'a>(pub &'a DecodeReport);

    /// One arm's line: `(log2 context, value)` points.
    struct Series {
        name: String,
        colour: RGBColor,
        points: Vec<(f64, f64)>,
    }

    fn e<E: std::fmt::Debug>(e: E) -> String {
        format!("{e:?}")
    }

    /// A label anchored at `pos` in `area`'s own pixels.
    fn label<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        text: &str,
        (x, y): (i32, i32),
        size: f64,
        h: HAlign,
        v: VAlign,
    ) -> Label {
        let (bx, by) = area.get_base_pixel();
        Label::new(text, ((bx + x) as f64, (by + y) as f64), size)
            .align(h, v)
            .color(INK)
    }

    impl figure::Figure for DecodeFigure<'_> {
        fn size(&self) -> (u32, u32) {
            (WIDTH, HEIGHT)
        }

        fn draw<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> Result<Vec<Label>, String> {
            let report = self.0;
            root.fill(&WHITE).map_err(e)?;
            let mut labels = vec![];
            // Two lines: the model source can be long (a preset and its overrides).
            let (top, body) = root.split_vertically(60);
            let title = format!(
                "Decoding with a KV cache: batch {}, {} tokens after each prefill, {}",
                report.batch, report.decode_tokens, report.device
            );
            let (w, _) = top.dim_in_pixel();
            labels.push(label(
                &top,
                &title,
                (w as i32 / 2, 20),
                20.0,
                HAlign::Center,
                VAlign::Center,
            ));
            labels.push(label(
                &top,
                &report.source,
                (w as i32 / 2, 44),
                14.0,
                HAlign::Center,
                VAlign::Center,
            ));
            let panels = body.split_evenly((1, 2));
            let series = |f: &dyn Fn(&Point) -> f64| -> Vec<Series> {
                report
                    .arms
                    .iter()
                    .enumerate()
                    .map(|(i, a)| Series {
                        name: format!("{} ({} B/token)", a.name, a.cache_bytes_per_token),
                        colour: figure::attention_colour(&a.name)
                            .unwrap_or(figure::PALETTE[i % figure::PALETTE.len()]),
                        points: a
                            .points
                            .iter()
                            .map(|p| ((p.context as f64).log2(), f(p)))
                            .collect(),
                    })
                    .collect()
            };
            let speed = series(&|p| p.decode_tokens_per_s);
            let cache = series(&|p| p.cache_mb);
            let contexts = &report.contexts;
            panel(
                &panels[0],
                contexts,
                &speed,
                "decode tokens/s (higher is better)",
                false,
                &mut labels,
            )?;
            panel(
                &panels[1],
                contexts,
                &cache,
                "KV cache held (MB)",
                true,
                &mut labels,
            )?;
            Ok(labels)
        }
    }

    fn panel<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        contexts: &[usize],
        series: &[Series],
        title: &str,
        legend: bool,
        labels: &mut Vec<Label>,
    ) -> Result<(), String> {
        let (ml, mr, mt, mb) = (86, 24, 40, 60);
        let (_, h) = area.dim_in_pixel();
        let y_top = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.08;
        let (yticks, decimals) = nice_ticks(0.0, y_top, 5);
        let lo = (contexts[0] as f64).log2();
        let hi = (contexts[contexts.len() - 1] as f64).log2();
        let pad = ((hi - lo) * 0.06).max(0.5);
        let mut chart = ChartBuilder::on(area)
            .margin_left(ml)
            .margin_right(mr)
            .margin_top(mt)
            .margin_bottom(mb)
            .build_cartesian_2d(lo - pad..hi + pad, 0.0..y_top)
            .map_err(e)?;
        // Pixel positions in `area` of data points, computed before drawing borrows `chart`.
        let base = area.get_base_pixel();
        let at = |x: f64, y: f64| {
            let (px, py) = chart.backend_coord(&(x, y));
            (px - base.0, py - base.1)
        };
        let (x0, y0) = at(lo - pad, 0.0);
        let (x1, y1) = at(hi + pad, y_top);
        for &c in contexts {
            let (x, y) = at((c as f64).log2(), 0.0);
            labels.push(label(
                area,
                &c.to_string(),
                (x, y + 8),
                14.0,
                HAlign::Center,
                VAlign::Top,
            ));
        }
        for &v in &yticks {
            let (x, y) = at(lo - pad, v);
            labels.push(label(
                area,
                &format!("{v:.decimals$}"),
                (x - 8, y),
                14.0,
                HAlign::Right,
                VAlign::Center,
            ));
        }
        let grid = RGBColor(225, 225, 225);
        let mut lines = Vec::new();
        for &c in contexts {
            let x = (c as f64).log2();
            lines.push(vec![(x, 0.0), (x, y_top)]);
        }
        for &y in &yticks {
            lines.push(vec![(lo - pad, y), (hi + pad, y)]);
        }
        chart
            .draw_series(lines.into_iter().map(|l| PathElement::new(l, grid)))
            .map_err(e)?;
        area.draw(&Rectangle::new([(x0, y1), (x1, y0)], RGBColor(60, 60, 60)))
            .map_err(e)?;
        for s in series {
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    s.colour.stroke_width(2),
                ))
                .map_err(e)?;
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 4, s.colour.filled())),
                )
                .map_err(e)?;
        }
        let mid = (x0 + x1) / 2;
        labels.push(label(
            area,
            "context (tokens, log2 scale)",
            (mid, h as i32 - 20),
            16.0,
            HAlign::Center,
            VAlign::Center,
        ));
        labels.push(label(
            area,
            title,
            (mid, 20),
            17.0,
            HAlign::Center,
            VAlign::Center,
        ));
        if legend {
            let row = 22;
            let size = 15.0;
            let longest = series
                .iter()
                .map(|s| crate::figure::text::width(&s.name, size))
                .fold(0.0, f64::max) as i32;
            let (bx, by) = (x0 + 14, y1 + 12);
            let bw = 56 + longest;
            let bh = row * series.len() as i32 + 10;
            area.draw(&Rectangle::new(
                [(bx, by), (bx + bw, by + bh)],
                WHITE.filled(),
            ))
            .map_err(e)?;
            area.draw(&Rectangle::new(
                [(bx, by), (bx + bw, by + bh)],
                RGBColor(160, 160, 160),
            ))
            .map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let y = by + 5 + row * i as i32 + row / 2;
                area.draw(&PathElement::new(
                    vec![(bx + 8, y), (bx + 36, y)],
                    s.colour.stroke_width(2),
                ))
                .map_err(e)?;
                area.draw(&Circle::new((bx + 22, y), 4, s.colour.filled()))
                    .map_err(e)?;
                labels.push(label(
                    area,
                    &s.name,
                    (bx + 44, y),
                    size,
                    HAlign::Left,
                    VAlign::Center,
                ));
            }
        }
        Ok(())
    }
}
