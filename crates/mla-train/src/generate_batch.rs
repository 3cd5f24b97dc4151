//! Batched generation with continuous batching: many prompts decoded `batch` at a time from
//! one batched cache ([`KvCache::batched`]).
//!
//! Each slot of the batch holds one sequence with its own length and positions. Prompts
//! waiting for a slot are prefilled together in one forward pass (padded on the right: the
//! causal mask keeps each real token from the padding after it) into an ordinary cache, whose
//! rows are then copied into the free slots. Every decode step feeds one token per slot; each
//! sequence stops on its own EOS, token limit or full context, and its slot goes to the next
//! waiting prompt at once, so a batch never waits for its longest member. A slot with no
//! prompt left to take decodes a placeholder that is thrown away.
//!
//! Prompt `i` is sampled by its own RNG, seeded with `sampling.seed + i` (wrapping): its
//! completion is [`generate`](crate::generate::generate) of that prompt alone with that seed,
//! whichever prompts share its batch. With [`CacheChoice::Recompute`] nothing is cached: every
//! step runs the running sequences (padded) in full.

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use mla_model::{CacheMode, KvCache, Lm};

use crate::generate::{
    CacheChoice, GenerateError, GenerateOptions, Sampler, Sampling, StopReason, fit_prompt,
};

/// Errors of [`generate_batch`], worded for the command line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("there are no prompts to generate from")]
    NoPrompts,
    #[error("--batch must be at least 1")]
    ZeroBatch,
    /// Prompt `index` (0-based, in input order) cannot be generated from.
    #[error("prompt {}: {source}", .index + 1)]
    Prompt {
        index: usize,
        #[source]
        source: GenerateError,
    },
    #[error(transparent)]
    Options(#[from] GenerateError),
}

/// The seed of prompt `index`'s sampler: `seed + index`, so that a prompt's sample depends on
/// the seed and its place in the input only.
pub fn prompt_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add(index as u64)
}

/// One prompt's generation.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceResult {
    /// Place of the prompt in the input (0-based).
    pub index: usize,
    /// The prompt ids the model saw (after any truncation).
    pub prompt: Vec<u32>,
    /// Prompt tokens dropped from the front by truncation.
    pub truncated: usize,
    /// The new tokens (without the EOS that stopped generation, if any).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// What a whole batched run did.
#[derive(Clone, Debug, Default)]
pub struct BatchStats {
    /// Sequences decoded together (the slots of the cache).
    pub slots: usize,
    /// Time in prefill passes (prompts entering free slots), to their first logits on the host.
    pub prefill: Duration,
    /// Time in decode steps (forward of every slot + sampling).
    pub decode: Duration,
    pub decode_steps: usize,
    /// New tokens over all prompts.
    pub generated: usize,
    /// Most bytes the cache held after a step (0 without a cache).
    pub peak_cache_bytes: usize,
    /// Bytes of the cache buffers at the end, room included.
    pub cache_bytes_reserved: usize,
}

impl BatchStats {
    /// Generated tokens per second of decode and prefill time together.
    pub fn tokens_per_s(&self) -> f64 {
        let s = (self.prefill + self.decode).as_secs_f64();
        if s == 0.0 {
            0.0
        } else {
            self.generated as f64 / s
        }
    }
}

/// A sequence in a slot.
struct Running {
    index: usize,
    prompt: Vec<u32>,
    truncated: usize,
    tokens: Vec<u32>,
    sampler: Sampler,
}

impl Running {
    /// The last token, the one the next step feeds.
    fn last(&self) -> u32 {
        *self
            .tokens
            .last()
            .unwrap_or_else(|| self.prompt.last().expect("a prompt"))
    }

    fn len(&self) -> usize {
        self.prompt.len() + self.tokens.len()
    }

    /// Sample the next token from `logits`, as [`crate::generate::generate`] does; `Some` when
    /// the sequence is done.
    fn advance(
        &mut self,
        logits: &[f32],
        opts: &GenerateOptions,
        max_seq_len: usize,
    ) -> Option<StopReason> {
        if self.tokens.len() >= opts.max_new_tokens {
            return Some(StopReason::MaxNewTokens);
        }
        let next = self.sampler.sample(logits);
        if Some(next) == opts.eos {
            return Some(StopReason::Eos);
        }
        self.tokens.push(next);
        if self.tokens.len() >= opts.max_new_tokens {
            return Some(StopReason::MaxNewTokens);
        }
        if self.len() >= max_seq_len {
            return Some(StopReason::ContextFull);
        }
        None
    }

    fn finish(self, stop: StopReason) -> SequenceResult {
        SequenceResult {
            index: self.index,
            prompt: self.prompt,
            truncated: self.truncated,
            tokens: self.tokens,
            stop,
        }
    }
}

/// Generate from every prompt, `batch` at a time (see the module docs). `on_finish` sees each
/// result as soon as its sequence stops (not in input order); the returned results are in
/// input order. Every prompt is checked before anything runs: an error names the prompt.
pub fn generate_batch(
    model: &Lm,
    prompts: &[Vec<u32>],
    batch: usize,
    opts: &GenerateOptions,
    mut on_finish: impl FnMut(&SequenceResult),
) -> Result<(Vec<SequenceResult>, BatchStats), BatchError> {
    opts.sampling.validate()?;
    if prompts.is_empty() {
        return Err(BatchError::NoPrompts);
    }
    if batch == 0 {
        return Err(BatchError::ZeroBatch);
    }
    let fitted = fit_prompts(model, prompts, opts)?;
    let mut run = Run {
        model,
        opts,
        queue: fitted
            .into_iter()
            .enumerate()
            .collect::<Vec<_>>()
            .into_iter(),
        slots: (0..batch.min(prompts.len())).map(|_| None).collect(),
        results: vec![None; prompts.len()],
        stats: BatchStats::default(),
    };
    run.stats.slots = run.slots.len();
    let mut report = |r: SequenceResult, results: &mut Vec<Option<SequenceResult>>| {
        on_finish(&r);
        let i = r.index;
        results[i] = Some(r);
    };
    match opts.cache {
        CacheChoice::Recompute => run.recomputing(&mut report),
        CacheChoice::Latent => run.cached(CacheMode::Latent, &mut report),
        CacheChoice::Naive => run.cached(CacheMode::Naive, &mut report),
    }
    let results = run
        .results
        .into_iter()
        .map(|r| r.expect("every prompt finishes"))
        .collect();
    Ok((results, run.stats))
}

/// Each prompt as the model will see it, with the tokens truncation dropped.
fn fit_prompts(
    model: &Lm,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<(Vec<u32>, usize)>, BatchError> {
    let cfg = model.config();
    prompts
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let fail = |source| BatchError::Prompt { index, source };
            if let Some(&id) = p.iter().find(|&&i| i as usize >= cfg.vocab_size) {
                return Err(fail(GenerateError::TokenOutOfRange {
                    id,
                    vocab_size: cfg.vocab_size,
                }));
            }
            let (kept, dropped) =
                fit_prompt(p, opts.max_new_tokens, cfg.max_seq_len, opts.truncate).map_err(fail)?;
            Ok((kept.to_vec(), dropped))
        })
        .collect()
}

/// The state of one batched run.
struct Run<'a> {
    model: &'a Lm,
    opts: &'a GenerateOptions,
    /// Prompts not started yet: (index, (ids, dropped)).
    queue: std::vec::IntoIter<(usize, (Vec<u32>, usize))>,
    slots: Vec<Option<Running>>,
    results: Vec<Option<SequenceResult>>,
    stats: BatchStats,
}

impl Run<'_> {
    fn device(&self) -> burn::tensor::Device {
        self.model.embed_tokens.weight.val().device()
    }

    /// A sequence for the next waiting prompt, if any.
    fn next_prompt(&mut self) -> Option<Running> {
        let (index, (prompt, truncated)) = self.queue.next()?;
        let sampling = Sampling {
            seed: prompt_seed(self.opts.sampling.seed, index),
            ..self.opts.sampling.clone()
        };
        Some(Running {
            index,
            prompt,
            truncated,
            tokens: Vec::new(),
            sampler: Sampler::new(&sampling, self.opts.vocab_limit),
        })
    }

    /// Sample slot `slot`'s next token; true when its sequence stopped (then the slot is free).
    fn advance(
        &mut self,
        slot: usize,
        logits: &[f32],
        report: &mut impl FnMut(SequenceResult, &mut Vec<Option<SequenceResult>>),
    ) -> bool {
        let max_seq_len = self.model.config().max_seq_len;
        let running = self.slots[slot].as_mut().expect("a running slot");
        let before = running.tokens.len();
        let stop = running.advance(logits, self.opts, max_seq_len);
        self.stats.generated += running.tokens.len() - before;
        match stop {
            None => false,
            Some(stop) => {
                let done = self.slots[slot].take().expect("running").finish(stop);
                report(done, &mut self.results);
                true
            }
        }
    }

    /// The loop over a batched cache: admit waiting prompts into free slots, then one decode
    /// step for all slots, until no prompt is left.
    fn cached(
        &mut self,
        mode: CacheMode,
        report: &mut impl FnMut(SequenceResult, &mut Vec<Option<SequenceResult>>),
    ) {
        let cfg = self.model.config();
        // Room for the longest generation up front, so that the cache never reallocates (but
        // never more than the context).
        let capacity = self
            .queue
            .as_slice()
            .iter()
            .map(|(_, (p, _))| {
                (p.len() + self.opts.max_new_tokens).min(cfg.max_seq_len.max(p.len()))
            })
            .max()
            .unwrap_or(1);
        let mut cache = self
            .model
            .new_batched_cache(mode, self.slots.len(), capacity);
        let device = self.device();
        loop {
            self.admit(mode, &mut cache, report);
            if self.slots.iter().all(Option::is_none) {
                break;
            }
            let started = Instant::now();
            // [slots, 1]: each running sequence's last token; a free slot a placeholder
            let ids: Vec<i64> = self
                .slots
                .iter()
                .map(|s| s.as_ref().map_or(0, |r| i64::from(r.last())))
                .collect();
            let n = ids.len();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
            let logits = host_rows(self.model.forward_cached_last(tokens, &mut cache));
            self.stats.peak_cache_bytes = self.stats.peak_cache_bytes.max(cache.bytes_held());
            for (slot, row) in logits.iter().enumerate() {
                if self.slots[slot].is_none() || self.advance(slot, row, report) {
                    // Free (a placeholder was decoded) or just finished: empty it.
                    cache.truncate_slot(slot, 0);
                }
            }
            self.stats.decode += started.elapsed();
            self.stats.decode_steps += 1;
        }
        self.stats.cache_bytes_reserved = cache.bytes_reserved();
    }

    /// Fill the free slots from the queue: prefill the new prompts together, copy them into
    /// their slots, sample their first tokens; again while some stopped at once.
    fn admit(
        &mut self,
        mode: CacheMode,
        cache: &mut KvCache,
        report: &mut impl FnMut(SequenceResult, &mut Vec<Option<SequenceResult>>),
    ) {
        loop {
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&s| self.slots[s].is_none())
                .collect();
            let mut entering = Vec::new();
            for &slot in &free {
                match self.next_prompt() {
                    Some(r) => entering.push((slot, r)),
                    None => break,
                }
            }
            if entering.is_empty() {
                return;
            }
            let started = Instant::now();
            let prompts: Vec<&[u32]> = entering.iter().map(|(_, r)| r.prompt.as_slice()).collect();
            let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
            let mut fresh = self.model.new_cache(mode).with_capacity(longest);
            let logits = host_rows(padded_forward(self.model, &prompts, Some(&mut fresh)));
            for (row, (slot, running)) in entering.into_iter().enumerate() {
                cache.insert(slot, &fresh, row, running.prompt.len());
                self.slots[slot] = Some(running);
                if self.advance(slot, &logits[row], report) {
                    cache.truncate_slot(slot, 0);
                }
            }
            self.stats.prefill += started.elapsed();
            self.stats.peak_cache_bytes = self.stats.peak_cache_bytes.max(cache.bytes_held());
        }
    }

    /// No cache: every step runs each running sequence in full (padded on the right).
    fn recomputing(
        &mut self,
        report: &mut impl FnMut(SequenceResult, &mut Vec<Option<SequenceResult>>),
    ) {
        loop {
            for slot in 0..self.slots.len() {
                if self.slots[slot].is_none() {
                    self.slots[slot] = self.next_prompt();
                }
            }
            let running: Vec<usize> = (0..self.slots.len())
                .filter(|&s| self.slots[s].is_some())
                .collect();
            if running.is_empty() {
                break;
            }
            let started = Instant::now();
            let seqs: Vec<Vec<u32>> = running
                .iter()
                .map(|&s| {
                    let r = self.slots[s].as_ref().expect("running");
                    [r.prompt.as_slice(), &r.tokens].concat()
                })
                .collect();
            let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            let logits = host_rows(padded_forward(self.model, &views, None));
            for (row, &slot) in running.iter().enumerate() {
                self.advance(slot, &logits[row], report);
            }
            self.stats.decode += started.elapsed();
            self.stats.decode_steps += 1;
        }
    }
}

/// Logits at each sequence's last token, the sequences padded on the right to one length
/// (see [`Lm::forward_at`]), fed after `cache` (an ordinary one) or alone.
///
/// # Shapes
/// - returns `[seqs.len(), vocab]`
fn padded_forward(model: &Lm, seqs: &[&[u32]], cache: Option<&mut KvCache>) -> Tensor<2> {
    let device = model.embed_tokens.weight.val().device();
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(seqs.len() * longest);
    for s in seqs {
        ids.extend(s.iter().map(|&i| i64::from(i)));
        ids.extend(std::iter::repeat_n(0, longest - s.len()));
    }
    let last: Vec<usize> = seqs.iter().map(|s| s.len() - 1).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [seqs.len(), longest]), &device);
    model.forward_at(tokens, cache, &last)
}

/// Logits rows on the host, in f32.
///
/// # Shapes
/// - logits: `[b, vocab]` -> b rows of `vocab`
fn host_rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    let [b, v] = logits.dims();
    let flat = logits
        .reshape([b * v])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_follow_the_prompt_index() {
        assert_eq!(prompt_seed(7, 0), 7);
        assert_eq!(prompt_seed(7, 3), 10);
        assert_eq!(prompt_seed(u64::MAX, 1), 0);
    }

    #[test]
    fn errors_name_the_prompt() {
        let e = BatchError::Prompt {
            index: 2,
            source: GenerateError::EmptyPrompt,
        };
        assert!(
            e.to_string()
                .starts_with("prompt 3: the prompt has no tokens"),
            "{e}"
        );
    }
}
