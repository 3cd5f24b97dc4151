//! The throughput benchmark behind `mla bench throughput`: generation tokens/s at a fixed
//! KV-cache memory budget, the measurement behind DeepSeek-V2's "5.76x maximum generation
//! throughput".
//!
//! A smaller cache per token lets more sequences share the same memory. For every arm
//! (parameter-matched as in `mla bench decode`) the largest batch whose cache fits the budget
//! at context `T` is `budget / (T * cache bytes per token)` (from the accounting). The arm is
//! then decoded at that batch and at a few smaller ones, through the batched cache generation
//! uses ([`mla_model::KvCache::batched`]): every slot is prefilled with `T - N` tokens (one to
//! four random prompts, cycled over the slots: decode cost does not depend on the values), then
//! `N` greedy tokens are decoded per slot, so that the cache ends holding `T` tokens a slot.
//! The bytes the cache tensors really hold are checked against the accounting before and after
//! (a mismatch is an error), and its buffers, room included, against the budget. Each point is
//! the fastest of `repeats` runs from the same prefilled cache (cut back between runs).
//!
//! Batches are measured from the largest down, so that memory freed by one measurement is
//! what the next reuses (the allocator keeps freed memory, see `keep_freed_memory` in
//! main.rs). The peak resident memory of the process is read around each arm (Linux: `VmHWM`,
//! reset per arm through `/proc/self/clear_refs`). It must stay within the memory at the
//! arm's start plus the budget plus its weights plus [`OVERHEAD_BYTES`] (activations, the
//! prefilled prompts, the allocator); the report says whether it did. Memory an earlier arm
//! freed stays resident, so `mla bench throughput` runs each arm in a process of its own
//! ([`ThroughputOptions::only`], [`ThroughputReport::merge`]): each arm's peak is then the
//! whole footprint of a process that serves that batch.
//!
//! Outputs: a text table, `throughput.json`, `throughput.md`, and `throughput.png` / `.svg`
//! (tokens/s against batch, one curve per arm, each ending at its budget).

use std::path::Path;
use std::time::Instant;

use mla_model::accounting::{self, CacheMode};
use mla_model::{DType, KvCache, Lm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Arm, ArmWeights, BenchError, int_tensor, next_tokens, process_cpu_s, random_tokens};
use crate::config::TrainDType;

/// What peak memory may exceed the budget and the weights by: activations of a decode step
/// and of the prefill, the prefill's temporary cache, the logits on the host, the allocator's
/// slack.
pub const OVERHEAD_BYTES: usize = 256 << 20;

/// Distinct random prompts prefilled per arm and cycled over the slots.
const PROMPTS: usize = 4;

#[derive(Clone, Debug)]
pub struct ThroughputOptions {
    /// KV-cache memory budget in bytes.
    pub budget: usize,
    /// Tokens each sequence's cache holds at the end (`context - new_tokens` prefilled).
    pub context: usize,
    /// Tokens decoded per sequence, timed.
    pub new_tokens: usize,
    /// Batches to measure besides each arm's maximum (those above it are skipped); `None`:
    /// powers of two below the maximum, and the MHA arm's maximum batch.
    pub batches: Option<Vec<usize>>,
    /// Decode runs per batch; the fastest counts.
    pub repeats: usize,
    /// Seeds the random prompts.
    pub seed: u64,
    /// Measure only the arm of this name (every arm is still sized, so that the batches are
    /// those of the whole run): one arm per process.
    pub only: Option<String>,
}

/// Parse a memory size: a number of bytes, or with a unit (`K`, `M`, `G`: powers of 1000 with
/// `B`/`KB`/`MB`/`GB`, of 1024 with `KiB`/`MiB`/`GiB`; a bare `K`/`M`/`G` is binary).
pub fn parse_size(s: &str) -> Result<usize, BenchError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    let value: f64 = num.parse().unwrap_or(f64::NAN);
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(BenchError::Invalid(format!(
            "--kv-budget {s:?}: give a size such as 64MiB, 500MB, 2GiB or a number of bytes"
        )));
    }
    Ok(bytes as usize)
}

/// One arm at one batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchPoint {
    pub batch: usize,
    /// Bytes the cache tensors hold at the end (`batch * context` tokens), equal to the
    /// accounting's.
    pub cache_bytes_held: usize,
    /// Bytes of the cache buffers (room for `context` tokens a slot).
    pub cache_bytes_reserved: usize,
    /// Time of the fastest decode run.
    pub decode_ms: f64,
    /// `batch * new_tokens / decode_ms`, the fastest run.
    pub tokens_per_s: f64,
    /// `batch * new_tokens` per second of CPU time of the process (the least over the runs);
    /// Linux only.
    pub tokens_per_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputArm {
    pub name: String,
    pub attention: String,
    pub cache_mode: CacheMode,
    pub dtype: String,
    pub params: usize,
    pub weight_bytes: usize,
    /// The arm's `[model]` section (for a peer implementation to build the same model).
    pub model: mla_model::ModelSection,
    /// All layers, at the model dtype (from the accounting, checked against the tensors).
    pub cache_bytes_per_token: usize,
    /// One sequence's cache at the context.
    pub bytes_per_sequence: usize,
    /// The largest batch whose cache fits the budget at the context.
    pub max_batch: usize,
    /// By increasing batch; the last is `max_batch`.
    pub points: Vec<BatchPoint>,
    /// Resident memory when the arm started (before its model) and its peak during the arm
    /// (Linux).
    pub rss_start_bytes: Option<usize>,
    pub rss_peak_bytes: Option<usize>,
    /// `rss_start + budget + weights + overhead`, and whether the peak stayed within it.
    pub memory_limit_bytes: Option<usize>,
    pub within_memory: Option<bool>,
}

impl ThroughputArm {
    pub fn at_max(&self) -> &BatchPoint {
        self.points
            .last()
            .expect("the max batch is always measured")
    }

    fn at_batch(&self, batch: usize) -> Option<&BatchPoint> {
        self.points.iter().find(|p| p.batch == batch)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputReport {
    pub source: String,
    pub device: String,
    /// The CPU, from /proc/cpuinfo (model name, cores, AVX-512 or not), when known.
    pub cpu: Option<String>,
    pub cpu_avx512_flags: Vec<String>,
    /// Threads of the CPU backend's pool (`RAYON_NUM_THREADS`, default one per core).
    pub threads: usize,
    pub budget_bytes: usize,
    pub context: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    /// The MHA arm's max batch, when there is one: every arm is also measured there.
    pub mha_max_batch: Option<usize>,
    pub overhead_bytes: usize,
    /// Whether each arm ran in a process of its own.
    pub isolated: bool,
    pub arms: Vec<ThroughputArm>,
}

/// The largest batch whose cache holds `context` tokens a sequence within `budget` bytes.
pub fn max_batch(budget: usize, context: usize, bytes_per_token: usize) -> usize {
    budget / (context * bytes_per_token).max(1)
}

/// The batches to measure for an arm whose max is `max`: the given ones or the powers of two
/// below it, MHA's max, and `max` itself; sorted, none above `max`.
fn batches_for(max: usize, wanted: Option<&[usize]>, mha_max: Option<usize>) -> Vec<usize> {
    let mut b: Vec<usize> = match wanted {
        Some(w) => w.to_vec(),
        None => (0..)
            .map(|i| 1usize << i)
            .take_while(|&p| p < max)
            .collect(),
    };
    b.extend(mha_max);
    b.push(max);
    b.retain(|&x| x >= 1 && x <= max);
    b.sort_unstable();
    b.dedup();
    b
}

/// Resident memory now and its peak since the last reset, from /proc/self/status (Linux).
fn rss() -> Option<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset the peak-RSS counter (Linux 4.0+); ignored where unsupported (the peak then counts
/// from the process start, still an upper bound).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The CPU's model name, core count and whether it has AVX-512 (Linux), e.g. "Intel(R)
/// Xeon(R) Processor, 2 cores, AVX-512", and its AVX-512 flags.
pub fn cpu_name() -> Option<(String, Vec<String>)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))?
        .split(':')
        .nth(1)?
        .trim()
        .to_string();
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let mut avx512: Vec<String> = flags
        .split_whitespace()
        .filter(|f| f.starts_with("avx512"))
        .map(String::from)
        .collect();
    avx512.sort_unstable();
    avx512.dedup();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let simd = if avx512.is_empty() {
        "no AVX-512"
    } else {
        "AVX-512"
    };
    Some((format!("{name}, {cores} cores, {simd}"), avx512))
}

/// The arm's model, in its inference precision.
fn load(arm: &Arm, device: &burn::tensor::Device) -> Result<Lm, BenchError> {
    let model = match &arm.weights {
        ArmWeights::Random { seed } => {
            device.seed(*seed);
            Lm::new(&arm.config, device)
        }
        ArmWeights::Checkpoint(c) => c.load_model(&arm.config, device)?,
    };
    Ok(match arm.config.dtype {
        DType::F32 => model,
        DType::Bf16 => crate::precision::compute_view(&model, TrainDType::Bf16),
    })
}

fn mismatch(arm: &Arm, cache: &KvCache, tokens: usize, batch: usize) -> BenchError {
    let per_token = accounting::kv_cache(&arm.config, arm.mode).bytes_per_token;
    BenchError::CacheMismatch {
        arm: arm.name.clone(),
        tokens,
        cached: cache.len(),
        batch,
        held: cache.bytes_held(),
        elements: cache.elements_held(),
        expected: per_token * tokens * batch,
        per_token,
        dtype: arm.config.dtype.as_str(),
    }
}

/// Every slot of `cache` holds `tokens` tokens and the tensors hold what the accounting says.
fn check_held(arm: &Arm, cache: &KvCache, tokens: usize, batch: usize) -> Result<(), BenchError> {
    let per_token = accounting::kv_cache(&arm.config, arm.mode).bytes_per_token;
    let lens_ok = cache
        .slot_lens()
        .is_some_and(|l| l.len() == batch && l.iter().all(|&n| n == tokens));
    if !lens_ok || cache.bytes_held() != per_token * tokens * batch {
        return Err(mismatch(arm, cache, tokens, batch));
    }
    Ok(())
}

/// Each arm's cache bytes per token and max batch; an error when the new tokens do not fit
/// the context, the context does not fit an arm, or the budget holds no sequence of it.
pub fn check_budget(
    arms: &[Arm],
    opts: &ThroughputOptions,
) -> Result<Vec<(usize, usize)>, BenchError> {
    let (t, n) = (opts.context, opts.new_tokens);
    if n == 0 || n >= t {
        return Err(BenchError::Invalid(format!(
            "--new-tokens must be at least 1 and below --context ({t}): the cache holds \
             context - new-tokens prefilled tokens, then the new ones; got {n}"
        )));
    }
    arms.iter()
        .map(|arm| {
            if t > arm.config.max_seq_len {
                return Err(BenchError::Invalid(format!(
                    "{}: --context {t} is more than the model's max_seq_len {}",
                    arm.name, arm.config.max_seq_len
                )));
            }
            let per_token = accounting::kv_cache(&arm.config, arm.mode).bytes_per_token;
            let max = max_batch(opts.budget, t, per_token);
            if max == 0 {
                return Err(BenchError::BudgetTooSmall {
                    arm: arm.name.clone(),
                    budget: opts.budget,
                    context: t,
                    per_token,
                    needed: per_token * t,
                });
            }
            Ok((per_token, max))
        })
        .collect()
}

/// Run the benchmark over `arms` (see the module docs). `progress` gets one line per point.
pub fn run_throughput(
    source: &str,
    arms: &[Arm],
    opts: &ThroughputOptions,
    device: &burn::tensor::Device,
    device_name: &str,
    mut progress: impl FnMut(&str),
) -> Result<ThroughputReport, BenchError> {
    let (t, n) = (opts.context, opts.new_tokens);
    let sized = check_budget(arms, opts)?;
    let mha_max = arms
        .iter()
        .zip(&sized)
        .find(|(a, _)| a.name == "mha")
        .map(|(_, &(_, max))| max);

    let mut reports = Vec::with_capacity(arms.len());
    for (arm, &(per_token, max)) in arms.iter().zip(&sized) {
        if opts.only.as_ref().is_some_and(|only| *only != arm.name) {
            continue;
        }
        reset_peak_rss();
        let rss_start = rss().map(|(now, _)| now);
        let model = load(arm, device)?;
        let batches = batches_for(max, opts.batches.as_deref(), mha_max);
        let points = measure_arm(arm, &model, &batches, opts, device, &mut progress)?;
        drop(model);
        let params = accounting::param_counts(&arm.config).total;
        let weight_bytes = params * arm.config.dtype.bytes();
        let rss_peak = rss().map(|(_, peak)| peak);
        let limit = rss_start.map(|s| s + opts.budget + weight_bytes + OVERHEAD_BYTES);
        reports.push(ThroughputArm {
            name: arm.name.clone(),
            attention: arm.config.kind().to_string(),
            cache_mode: arm.mode,
            dtype: arm.config.dtype.as_str().to_string(),
            params,
            weight_bytes,
            model: arm.config.to_section(),
            cache_bytes_per_token: per_token,
            bytes_per_sequence: per_token * t,
            max_batch: max,
            points,
            rss_start_bytes: rss_start,
            rss_peak_bytes: rss_peak,
            memory_limit_bytes: limit,
            within_memory: rss_peak.zip(limit).map(|(p, l)| p <= l),
        });
    }
    if reports.is_empty() {
        return Err(BenchError::Invalid(format!(
            "no arm is named {:?}",
            opts.only.as_deref().unwrap_or_default()
        )));
    }
    let (cpu, cpu_avx512_flags) = cpu_name().unzip();
    Ok(ThroughputReport {
        source: source.to_string(),
        device: device_name.to_string(),
        cpu,
        cpu_avx512_flags: cpu_avx512_flags.unwrap_or_default(),
        threads: rayon::current_num_threads(),
        budget_bytes: opts.budget,
        context: t,
        new_tokens: n,
        repeats: opts.repeats.max(1),
        mha_max_batch: mha_max,
        overhead_bytes: OVERHEAD_BYTES,
        isolated: false,
        arms: reports,
    })
}

/// Prefill a few prompts once, then time the decode at each batch.
fn measure_arm(
    arm: &Arm,
    model: &Lm,
    batches: &[usize],
    opts: &ThroughputOptions,
    device: &burn::tensor::Device,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<BatchPoint>, BenchError> {
    let (t, n) = (opts.context, opts.new_tokens);
    let prompt = t - n;
    // The prefilled prompts stay held through the arm: at most an eighth of the largest batch.
    let k = (batches[batches.len() - 1] / 8).clamp(1, PROMPTS);
    // One prompt per forward pass: the prefill's activations are those of one sequence.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut prefilled = Vec::with_capacity(k);
    let mut first = Vec::with_capacity(k);
    for _ in 0..k {
        let ids = random_tokens(&mut rng, 1, prompt, arm.config.vocab_size);
        let mut cache = model.new_cache(arm.mode).with_capacity(prompt);
        first.extend(next_tokens(
            model.forward_cached_last(int_tensor(ids, 1, device), &mut cache),
        ));
        prefilled.push(cache);
    }

    // Largest batch first: the allocator keeps freed memory for reuse (purge off), so a small
    // cache measured first would stay resident next to the large one.
    let mut points = Vec::with_capacity(batches.len());
    for &batch in batches.iter().rev() {
        let mut cache = model.new_batched_cache(arm.mode, batch, t);
        for slot in 0..batch {
            cache.insert(slot, &prefilled[slot % k], 0, prompt);
        }
        check_held(arm, &cache, prompt, batch)?;
        let start: Vec<i64> = (0..batch).map(|s| first[s % k]).collect();
        let (mut wall, mut cpu) = (f64::INFINITY, None::<f64>);
        for run in 0..opts.repeats.max(1) {
            if run > 0 {
                for slot in 0..batch {
                    cache.truncate_slot(slot, prompt);
                }
            }
            let mut next = start.clone();
            let cpu_started = process_cpu_s();
            let started = Instant::now();
            for _ in 0..n {
                next = next_tokens(
                    model.forward_cached_last(int_tensor(next, batch, device), &mut cache),
                );
            }
            wall = wall.min(started.elapsed().as_secs_f64());
            if let Some(c) = cpu_started.zip(process_cpu_s()).map(|(a, b)| b - a) {
                cpu = Some(cpu.map_or(c, |x: f64| x.min(c)));
            }
            check_held(arm, &cache, t, batch)?;
        }
        let reserved = cache.bytes_reserved();
        if reserved > opts.budget {
            return Err(BenchError::Invalid(format!(
                "{}: the cache buffers of batch {batch} take {reserved} bytes, more than the \
                 budget of {} bytes",
                arm.name, opts.budget
            )));
        }
        let tokens = (batch * n) as f64;
        let point = BatchPoint {
            batch,
            cache_bytes_held: cache.bytes_held(),
            cache_bytes_reserved: reserved,
            decode_ms: wall * 1e3,
            tokens_per_s: tokens / wall,
            tokens_per_cpu_s: cpu.filter(|&c| c > 0.0).map(|c| tokens / c),
        };
        progress(&format!(
            "{:<10} batch {:>5}: cache {:>9.3} MB, {:>9.1} tok/s",
            arm.name,
            batch,
            point.cache_bytes_held as f64 / 1e6,
            point.tokens_per_s
        ));
        points.push(point);
    }
    points.reverse();
    Ok(points)
}

fn mb(bytes: usize) -> String {
    let m = bytes as f64 / 1e6;
    if m >= 100.0 {
        format!("{m:.0}")
    } else if m >= 1.0 {
        format!("{m:.1}")
    } else {
        format!("{m:.3}")
    }
}

impl ThroughputReport {
    fn mha(&self) -> Option<&ThroughputArm> {
        self.arms.iter().find(|a| a.name == "mha")
    }

    /// Header cells and one row per arm.
    fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut head: Vec<String> = [
            "arm",
            "params",
            "cache B/token",
            "max batch",
            "cache MB held",
            "tok/s @max",
            "x MHA",
        ]
        .map(String::from)
        .to_vec();
        if let Some(b) = self.mha_max_batch {
            head.push(format!("tok/s @{b}"));
        }
        head.push("peak RSS MB".into());
        head.push("RSS limit MB".into());
        let mha_speed = self.mha().map(|m| m.at_max().tokens_per_s);
        let rows = self
            .arms
            .iter()
            .map(|a| {
                let top = a.at_max();
                let mut row = vec![
                    a.name.clone(),
                    crate::compare::human_count(a.params as f64),
                    a.cache_bytes_per_token.to_string(),
                    a.max_batch.to_string(),
                    mb(top.cache_bytes_held),
                    format!("{:.0}", top.tokens_per_s),
                    mha_speed.map_or("-".into(), |m| format!("{:.2}", top.tokens_per_s / m)),
                ];
                if let Some(b) = self.mha_max_batch {
                    row.push(
                        a.at_batch(b)
                            .map_or("-".into(), |p| format!("{:.0}", p.tokens_per_s)),
                    );
                }
                row.push(a.rss_peak_bytes.map_or("-".into(), mb));
                row.push(a.memory_limit_bytes.map_or("-".into(), mb));
                row
            })
            .collect();
        (head, rows)
    }

    fn caption(&self) -> String {
        format!(
            "throughput at a KV-cache budget of {} MB, context {} ({} prefilled + {} decoded per \
             sequence), fastest of {} runs | {} | {} | {} threads",
            mb(self.budget_bytes),
            self.context,
            self.context - self.new_tokens,
            self.new_tokens,
            self.repeats,
            self.device,
            self.cpu.as_deref().unwrap_or("unknown CPU"),
            self.threads,
        )
    }

    /// Whether every arm stayed within its memory limit (`None`: not measured here).
    pub fn within_memory(&self) -> Option<bool> {
        let each: Option<Vec<bool>> = self.arms.iter().map(|a| a.within_memory).collect();
        each.map(|w| w.iter().all(|&x| x))
    }

    fn memory_line(&self) -> String {
        let how = if self.isolated {
            "each arm in a process of its own"
        } else {
            "arms in one process"
        };
        let above: Vec<&str> = self
            .arms
            .iter()
            .filter(|a| a.within_memory == Some(false))
            .map(|a| a.name.as_str())
            .collect();
        let limit = format!(
            "memory at its start + budget + weights + {} MB overhead ({how})",
            mb(self.overhead_bytes)
        );
        match self.within_memory() {
            Some(true) => format!("peak RSS within every arm's limit: {limit}"),
            Some(false) => format!("peak RSS ABOVE the limit for {}: {limit}", above.join(", ")),
            None => "peak RSS not measured on this system".into(),
        }
    }

    /// One report from those of runs that each measured one arm (in input order).
    pub fn merge(parts: Vec<ThroughputReport>) -> Option<ThroughputReport> {
        let mut parts = parts.into_iter();
        let mut report = parts.next()?;
        for p in parts {
            report.arms.extend(p.arms);
        }
        report.isolated = true;
        Some(report)
    }

    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let (head, rows) = self.cells();
        format!(
            "{}\n{}\n{}{}\n",
            self.caption(),
            self.source,
            super::text_table(&head, &rows),
            self.memory_line()
        )
    }

    /// The table in Markdown, with the caption and the memory check under it.
    pub fn markdown(&self) -> String {
        let (head, rows) = self.cells();
        format!(
            "{}\n{} ({}). {}.\n",
            super::markdown_table(&head, &rows),
            self.caption(),
            self.source,
            self.memory_line()
        )
    }

    /// Write `throughput.json`, `.md`, `.png` and `.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        super::write_report(
            dir,
            "throughput",
            self,
            &self.markdown(),
            &plot::ThroughputFigure(self),
        )
    }
}

/// The figure: tokens/s against batch (log2 axis), one curve per arm ending at its budget.
mod plot {
    use plotters::coord::{CoordTranslate, Shift};
    use plotters::prelude::*;

    use super::ThroughputReport;
    use crate::figure::text::{HAlign, Label, VAlign};
    use crate::figure::{self, nice_ticks};

    const WIDTH: u32 = 1000;
    const HEIGHT: u32 = 640;
    const INK: (u8, u8, u8) = (30, 30, 30);

    pub struct ThroughputFigure<'a>(pub &'a ThroughputReport);

    fn e<E: std::fmt::Debug>(e: E) -> String {
        format!("{e:?}")
    }

    fn label(text: &str, (x, y): (i32, i32), size: f64, h: HAlign, v: VAlign) -> Label {
        Label::new(text, (x as f64, y as f64), size)
            .align(h, v)
            .color(INK)
    }

    impl figure::Figure for ThroughputFigure<'_> {
        fn size(&self) -> (u32, u32) {
            (WIDTH, HEIGHT)
        }

        fn draw<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> Result<Vec<Label>, String> {
            let r = self.0;
            root.fill(&WHITE).map_err(e)?;
            let mut labels = vec![
                label(
                    &format!(
                        "Decode tokens/s against batch at a {} MB KV-cache budget, context {}",
                        super::mb(r.budget_bytes),
                        r.context
                    ),
                    (WIDTH as i32 / 2, 22),
                    19.0,
                    HAlign::Center,
                    VAlign::Center,
                ),
                label(
                    &format!(
                        "{} | {} | {} threads",
                        r.device,
                        r.cpu.as_deref().unwrap_or(""),
                        r.threads
                    ),
                    (WIDTH as i32 / 2, 44),
                    13.0,
                    HAlign::Center,
                    VAlign::Center,
                ),
            ];
            let top_batch = r.arms.iter().map(|a| a.max_batch).max().unwrap_or(1).max(2);
            let x_hi = (top_batch as f64).log2();
            let pad = (x_hi * 0.05).max(0.3);
            let y_top = r
                .arms
                .iter()
                .flat_map(|a| a.points.iter().map(|p| p.tokens_per_s))
                .fold(0.0, f64::max)
                .max(1e-9)
                * 1.12;
            let (ml, mr, mt, mb) = (90i32, 30i32, 84i32, 64i32);
            let mut chart = ChartBuilder::on(root)
                .margin_left(ml)
                .margin_right(mr)
                .margin_top(mt)
                .margin_bottom(mb)
                .build_cartesian_2d(-pad..x_hi + pad, 0.0..y_top)
                .map_err(e)?;
            // Pixel positions from a copy of the coordinates, so that drawing can borrow `chart`.
            let coord = chart.as_coord_spec().clone();
            let at = move |x: f64, y: f64| coord.translate(&(x, y));
            let (x0, y0) = at(-pad, 0.0);
            let (x1, y1) = at(x_hi + pad, y_top);
            let grid = RGBColor(225, 225, 225);
            let (yticks, decimals) = nice_ticks(0.0, y_top, 6);
            let mut lines = Vec::new();
            let mut b = 1usize;
            while b <= top_batch {
                let x = (b as f64).log2();
                lines.push(vec![(x, 0.0), (x, y_top)]);
                let (px, py) = at(x, 0.0);
                labels.push(label(
                    &b.to_string(),
                    (px, py + 8),
                    13.0,
                    HAlign::Center,
                    VAlign::Top,
                ));
                b *= 2;
            }
            for &y in &yticks {
                lines.push(vec![(-pad, y), (x_hi + pad, y)]);
                let (px, py) = at(-pad, y);
                labels.push(label(
                    &format!("{y:.decimals$}"),
                    (px - 8, py),
                    13.0,
                    HAlign::Right,
                    VAlign::Center,
                ));
            }
            chart
                .draw_series(lines.into_iter().map(|l| PathElement::new(l, grid)))
                .map_err(e)?;
            root.draw(&Rectangle::new([(x0, y1), (x1, y0)], RGBColor(60, 60, 60)))
                .map_err(e)?;
            for (i, a) in r.arms.iter().enumerate() {
                let colour = figure::attention_colour(&a.name)
                    .unwrap_or(figure::PALETTE[i % figure::PALETTE.len()]);
                let pts: Vec<(f64, f64)> = a
                    .points
                    .iter()
                    .map(|p| ((p.batch as f64).log2(), p.tokens_per_s))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                    .map_err(e)?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(e)?;
                // The end of the curve: the budget's batch, marked and named.
                let &(bx, by) = pts.last().expect("a point");
                let (px, py) = at(bx, by);
                root.draw(&Rectangle::new(
                    [(px - 6, py - 6), (px + 6, py + 6)],
                    colour.filled(),
                ))
                .map_err(e)?;
                labels.push(label(
                    &format!("{} (max batch {})", a.name, a.max_batch),
                    (px - 10, py - 14),
                    14.0,
                    HAlign::Right,
                    VAlign::Bottom,
                ));
            }
            let (_, h) = root.dim_in_pixel();
            labels.push(label(
                "batch (sequences decoded together, log2 scale); each curve ends at the largest \
                 batch its cache fits in the budget",
                ((x0 + x1) / 2, h as i32 - 22),
                14.0,
                HAlign::Center,
                VAlign::Center,
            ));
            labels.push(label(
                "decode tokens/s, all sequences together",
                (x0, y1 - 8),
                14.0,
                HAlign::Left,
                VAlign::Bottom,
            ));
            Ok(labels)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("2kb").unwrap(), 2000);
        for bad in ["", "lots", "-3MB", "12 parsecs", "0"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("--kv-budget"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn batches_end_at_the_max_and_include_mha_s() {
        assert_eq!(batches_for(1, None, Some(4)), vec![1]);
        assert_eq!(batches_for(20, None, Some(5)), vec![1, 2, 4, 5, 8, 16, 20]);
        assert_eq!(batches_for(16, None, None), vec![1, 2, 4, 8, 16]);
        assert_eq!(batches_for(10, Some(&[3, 12, 0]), None), vec![3, 10]);
    }

    #[test]
    fn max_batch_is_the_floor() {
        assert_eq!(max_batch(1000, 10, 10), 10);
        assert_eq!(max_batch(999, 10, 10), 9);
        assert_eq!(max_batch(99, 10, 10), 0);
    }
}
