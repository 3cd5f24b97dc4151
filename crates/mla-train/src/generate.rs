//! Text generation: sampling from logits and the decode loop over the model's KV caches.
//!
//! The loop prefills the whole prompt with one [`Lm::forward_cached_last`] call, then feeds one
//! token per step. With [`CacheChoice::Latent`] an MLA model caches only `[c_kv | k_pe]` per
//! token and decodes with absorbed weights; [`CacheChoice::Naive`] caches decompressed per-head
//! K/V; [`CacheChoice::Recompute`] keeps no cache and runs the whole sequence every step (the
//! reference the cached loops are tested against). For mha/gqa/mqa both cache choices hold the
//! same full K/V.
//!
//! Sampling runs on the host in f64 from the last position's logits: temperature (0 = greedy),
//! then top-k, then top-p (nucleus), as HuggingFace's warpers are ordered, drawing from a
//! ChaCha8 RNG seeded by [`Sampling::seed`] so a seed fixes the output. Greedy ties go to the
//! lowest token id.

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use mla_model::{CacheMode, KvCache, Lm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Errors of [`generate`] and [`fit_prompt`], worded for the command line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt has no tokens; give some text (or keep the <|endoftext|> prefix)")]
    EmptyPrompt,
    #[error(
        "the prompt ({prompt} tokens) plus --max-new-tokens ({max_new_tokens}) is {} tokens, more \
         than the model's context of {max_seq_len} tokens (max_seq_len); shorten the prompt, lower \
         --max-new-tokens, or pass --truncate to keep only the last tokens of the prompt",
        .prompt + .max_new_tokens
    )]
    TooLong {
        prompt: usize,
        max_new_tokens: usize,
        max_seq_len: usize,
    },
    #[error("prompt token id {id} is outside the model's vocabulary of {vocab_size} ids")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("{0}")]
    InvalidOption(String),
}

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens (`Some(1)` = greedy); `None` = no limit.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (nucleus sampling); 1 = keep all, values near 0 keep only the top token.
    pub top_p: f64,
    /// Seed of the ChaCha8 RNG that draws the samples.
    pub seed: u64,
}

impl Sampling {
    /// Argmax at every step (ties: lowest id).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Whether this always picks the argmax (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: String| Err(GenerateError::InvalidOption(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "--temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("--top-k must be at least 1 (1 = greedy)".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "--top-p must be in (0, 1] (1 = off), got {}",
                self.top_p
            ));
        }
        Ok(())
    }
}

/// Draws token ids from logits according to a [`Sampling`].
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
    /// Only ids below this may be drawn (a model vocabulary padded past the tokenizer's).
    limit: Option<usize>,
    /// Scratch: candidate ids, reused across steps.
    order: Vec<u32>,
    probs: Vec<f64>,
}

impl Sampler {
    pub fn new(sampling: &Sampling, limit: Option<usize>) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(sampling.seed),
            sampling: sampling.clone(),
            limit,
            order: Vec::new(),
            probs: Vec::new(),
        }
    }

    /// The next token id given one position's logits (`[vocab]`). NaN logits never win.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let n = self.limit.map_or(logits.len(), |l| l.min(logits.len()));
        assert!(n > 0, "sampling from an empty vocabulary");
        let logits = &logits[..n];
        if self.sampling.is_greedy() {
            return argmax(logits);
        }
        // Candidates by decreasing logit, ties by increasing id (so the first is the argmax).
        let key = |i: u32| {
            let v = logits[i as usize];
            if v.is_nan() { f32::NEG_INFINITY } else { v }
        };
        let by_logit = |a: &u32, b: &u32| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
        self.order.clear();
        self.order.extend(0..n as u32);
        let k = self.sampling.top_k.unwrap_or(n).min(n);
        if k < n {
            self.order.select_nth_unstable_by(k - 1, by_logit);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(by_logit);

        // Softmax over the kept candidates at the temperature, in f64.
        let t = self.sampling.temperature;
        let top = key(self.order[0]) as f64;
        if top == f64::NEG_INFINITY {
            return self.order[0];
        }
        self.probs.clear();
        self.probs.extend(
            self.order
                .iter()
                .map(|&i| ((key(i) as f64 - top) / t).exp()),
        );
        let total: f64 = self.probs.iter().sum();
        // Nucleus: the shortest prefix whose probability reaches top_p (at least one token).
        let mut kept = self.probs.len();
        if self.sampling.top_p < 1.0 {
            let mut acc = 0.0;
            for (j, p) in self.probs.iter().enumerate() {
                acc += p / total;
                if acc >= self.sampling.top_p {
                    kept = j + 1;
                    break;
                }
            }
        }
        let mass: f64 = self.probs[..kept].iter().sum();
        let mut u = self.rng.random::<f64>() * mass;
        for (j, p) in self.probs[..kept].iter().enumerate() {
            if u < *p {
                return self.order[j];
            }
            u -= p;
        }
        self.order[kept - 1]
    }
}

/// Index of the largest logit; the lowest index among equals; NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Which cache the decode loop keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheChoice {
    /// MLA: latents decoded with absorbed weights; mha/gqa/mqa: full K/V.
    Latent,
    /// MLA: decompressed per-head K/V; mha/gqa/mqa: full K/V.
    Naive,
    /// No cache: the whole sequence is run again every step (the reference).
    Recompute,
}

impl CacheChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "latent" => Some(Self::Latent),
            "naive" => Some(Self::Naive),
            "none" => Some(Self::Recompute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latent => "latent",
            Self::Naive => "naive",
            Self::Recompute => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub cache: CacheChoice,
    /// Stop when this token is drawn (it is not returned nor passed to `on_token`).
    pub eos: Option<u32>,
    /// Keep the last tokens of a prompt that does not fit instead of failing.
    pub truncate: bool,
    /// Only draw ids below this (e.g. the tokenizer's vocabulary when the model's is padded).
    pub vocab_limit: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: Sampling::greedy(),
            cache: CacheChoice::Latent,
            eos: None,
            truncate: false,
            vocab_limit: None,
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxNewTokens,
    /// The end-of-text token was drawn.
    Eos,
    /// The sequence filled the model's context (`max_seq_len`).
    ContextFull,
}

impl StopReason {
    /// The name in `mla generate --prompts` output: `max_new_tokens`, `eos`, `context_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxNewTokens => "max_new_tokens",
            Self::Eos => "eos",
            Self::ContextFull => "context_full",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::MaxNewTokens => "max new tokens reached",
            Self::Eos => "end of text",
            Self::ContextFull => "the model's context (max_seq_len) is full",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerationResult {
    /// The prompt ids the model saw (after any truncation).
    pub prompt: Vec<u32>,
    /// Prompt tokens dropped from the front by truncation.
    pub truncated: usize,
    /// The new tokens (without the EOS that stopped generation, if any).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Time of the prompt's forward pass (to the first logits on the host).
    pub prefill: Duration,
    /// Time of the single-token steps after the prefill (forward + sampling).
    pub decode: Duration,
    /// Number of single-token steps.
    pub decode_steps: usize,
    /// Bytes held by the cache tensors at the end (0 without a cache).
    pub cache_bytes: usize,
    /// Tokens held by the cache at the end.
    pub cache_tokens: usize,
}

impl GenerationResult {
    pub fn decode_tokens_per_s(&self) -> f64 {
        let s = self.decode.as_secs_f64();
        if self.decode_steps == 0 || s == 0.0 {
            0.0
        } else {
            self.decode_steps as f64 / s
        }
    }
}

/// The prompt as the model will see it: unchanged when `prompt + max_new_tokens` fits in
/// `max_seq_len`; otherwise an error, or with `truncate` its last
/// `max(max_seq_len - max_new_tokens, 1)` tokens. Returns the ids and how many were dropped.
pub fn fit_prompt(
    prompt: &[u32],
    max_new_tokens: usize,
    max_seq_len: usize,
    truncate: bool,
) -> Result<(&[u32], usize), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() + max_new_tokens <= max_seq_len {
        return Ok((prompt, 0));
    }
    if !truncate {
        return Err(GenerateError::TooLong {
            prompt: prompt.len(),
            max_new_tokens,
            max_seq_len,
        });
    }
    let keep = max_seq_len
        .saturating_sub(max_new_tokens)
        .max(1)
        .min(prompt.len());
    let dropped = prompt.len() - keep;
    Ok((&prompt[dropped..], dropped))
}

/// Generate up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token` with each
/// new id as soon as it is chosen. See the module docs for the loop.
pub fn generate(
    model: &Lm,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<GenerationResult, GenerateError> {
    opts.sampling.validate()?;
    let cfg = model.config();
    if let Some(&id) = prompt.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        return Err(GenerateError::TokenOutOfRange {
            id,
            vocab_size: cfg.vocab_size,
        });
    }
    let (prompt, truncated) =
        fit_prompt(prompt, opts.max_new_tokens, cfg.max_seq_len, opts.truncate)?;
    let mut sampler = Sampler::new(&opts.sampling, opts.vocab_limit);
    // Room for the whole generation up front, so that the cache never reallocates (but never
    // more than the context: a huge --max-new-tokens must not allocate a huge buffer).
    let capacity = (prompt.len() + opts.max_new_tokens).min(cfg.max_seq_len.max(prompt.len()));
    let mut cache = match opts.cache {
        CacheChoice::Latent => Some(model.new_cache(CacheMode::Latent).with_capacity(capacity)),
        CacheChoice::Naive => Some(model.new_cache(CacheMode::Naive).with_capacity(capacity)),
        CacheChoice::Recompute => None,
    };
    let mut seq = prompt.to_vec();

    let started = Instant::now();
    let mut logits = last_logits(model, &seq, cache.as_mut());
    let prefill = started.elapsed();

    let mut tokens = Vec::new();
    let mut decode = Duration::ZERO;
    let mut decode_steps = 0;
    let stop = loop {
        if tokens.len() >= opts.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        let step_started = Instant::now();
        let next = sampler.sample(&logits);
        decode += step_started.elapsed();
        if Some(next) == opts.eos {
            break StopReason::Eos;
        }
        tokens.push(next);
        seq.push(next);
        on_token(next);
        if tokens.len() >= opts.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if seq.len() >= cfg.max_seq_len {
            break StopReason::ContextFull;
        }
        let step_started = Instant::now();
        logits = last_logits(model, &seq, cache.as_mut());
        decode += step_started.elapsed();
        decode_steps += 1;
    };
    Ok(GenerationResult {
        prompt: prompt.to_vec(),
        truncated,
        tokens,
        stop,
        prefill,
        decode,
        decode_steps,
        cache_bytes: cache.as_ref().map_or(0, KvCache::bytes_held),
        cache_tokens: cache.as_ref().map_or(0, KvCache::len),
    })
}

/// Logits of the last position, on the host. With a cache only the tokens of `seq` after the
/// cached ones are fed; without one the whole of `seq` is.
fn last_logits(model: &Lm, seq: &[u32], cache: Option<&mut KvCache>) -> Vec<f32> {
    let device = model.embed_tokens.weight.val().device();
    let new = match &cache {
        Some(c) => &seq[c.len()..],
        None => seq,
    };
    let ids: Vec<i64> = new.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, new.len()]), &device);
    let logits = match cache {
        Some(c) => model.forward_cached_last(tokens, c), // [1, vocab]
        None => {
            let all = model.forward(tokens); // [1, t, vocab]
            let t = all.dims()[1];
            all.slice_dim(1, t - 1..t)
                .reshape([1, model.config().vocab_size])
        }
    };
    let v = model.config().vocab_size;
    logits
        .reshape([v])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits")
}

/// Turns "the decoded text of all ids so far", step after step, into the pieces to print.
///
/// Byte-level tokens can split a multi-byte character; the decoder shows the incomplete
/// bytes as U+FFFD until the rest arrives, so trailing U+FFFD are held back until the text
/// after them is known. Call [`TextStream::finish`] at the end to print whatever remains.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    printed: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// The new printable suffix of `full` (the decoding of every id generated so far).
    pub fn update<'a>(&mut self, full: &'a str) -> &'a str {
        let stable = full.trim_end_matches('\u{FFFD}');
        self.take(stable)
    }

    /// Everything of `full` not printed yet, trailing U+FFFD included.
    pub fn finish<'a>(&mut self, full: &'a str) -> &'a str {
        self.take(full)
    }

    fn take<'a>(&mut self, text: &'a str) -> &'a str {
        if text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return "";
        }
        let new = &text[self.printed..];
        self.printed = text.len();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: Option<usize>, top_p: f64, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn argmax_takes_the_lowest_id_among_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), 1);
    }

    #[test]
    fn limits_restrict_the_candidates() {
        let logits = [0.0, 0.0, 0.0, 9.0];
        let mut s = Sampler::new(&Sampling::greedy(), Some(3));
        assert_eq!(s.sample(&logits), 0);
        let mut s = Sampler::new(&sampling(1.0, None, 1.0, 3), Some(3));
        for _ in 0..50 {
            assert!(s.sample(&logits) < 3);
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        // Probabilities ~ [0.5, 0.3, 0.2] after softmax of their logs.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), f32::NEG_INFINITY];
        let draw = |s: Sampling| {
            let mut sampler = Sampler::new(&s, None);
            let mut seen = [0usize; 4];
            for _ in 0..2000 {
                seen[sampler.sample(&logits) as usize] += 1;
            }
            seen
        };
        let all = draw(sampling(1.0, None, 1.0, 1));
        assert!(
            all[0] > 850 && all[1] > 450 && all[2] > 300 && all[3] == 0,
            "{all:?}"
        );
        let k2 = draw(sampling(1.0, Some(2), 1.0, 1));
        assert!(k2[2] == 0 && k2[0] > 1100, "{k2:?}");
        // 0.5 < p = 0.7 <= 0.8: the first two.
        let p = draw(sampling(1.0, None, 0.7, 1));
        assert!(p[2] == 0 && p[1] > 600, "{p:?}");
        let tiny = draw(sampling(5.0, None, 1e-9, 1));
        assert_eq!(tiny, [2000, 0, 0, 0]);
    }

    #[test]
    fn invalid_options_are_named() {
        for (s, needle) in [
            (sampling(-1.0, None, 1.0, 0), "--temperature"),
            (sampling(1.0, Some(0), 1.0, 0), "--top-k"),
            (sampling(1.0, None, 0.0, 0), "--top-p"),
            (sampling(1.0, None, 1.5, 0), "--top-p"),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn fitting_the_prompt() {
        let p: Vec<u32> = (0..10).collect();
        assert_eq!(fit_prompt(&p, 6, 16, false).unwrap(), (&p[..], 0));
        let e = fit_prompt(&p, 7, 16, false).unwrap_err().to_string();
        assert!(
            e.contains("10 tokens") && e.contains("(7)") && e.contains("16"),
            "{e}"
        );
        assert_eq!(fit_prompt(&p, 7, 16, true).unwrap(), (&p[1..], 1));
        // No room at all: keep one token, generation stops when the context is full.
        assert_eq!(fit_prompt(&p, 40, 16, true).unwrap(), (&p[9..], 9));
        assert_eq!(
            fit_prompt(&[], 1, 16, true),
            Err(GenerateError::EmptyPrompt)
        );
    }

    #[test]
    fn text_stream_holds_back_incomplete_characters() {
        let mut s = TextStream::new();
        assert_eq!(s.update("Hi"), "Hi");
        assert_eq!(s.update("Hi \u{FFFD}"), " ");
        assert_eq!(s.update("Hi \u{FFFD}\u{FFFD}"), "");
        assert_eq!(s.update("Hi é!"), "é!");
        assert_eq!(s.update("Hi é!\u{FFFD}"), "");
        assert_eq!(s.finish("Hi é!\u{FFFD}"), "\u{FFFD}");
        assert_eq!(s.finish("Hi é!\u{FFFD}"), "");
    }
}
