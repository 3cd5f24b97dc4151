//! `mla generate`: sample text from a checkpoint, streaming it as it is produced; or, with
//! `--prompts FILE`, continue every prompt of a file, `--batch` at a time from one batched
//! cache (continuous batching, see `mla_train::generate_batch`), one JSON line per prompt.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use mla_model::DType;
use mla_train::checkpoint::Checkpoint;
use mla_train::config::TrainDType;
use mla_train::generate::{
    CacheChoice, GenerateOptions, Sampling, StopReason, TextStream, fit_prompt, generate,
};
use mla_train::generate_batch::{BatchError, SequenceResult, generate_batch};
use mla_train::prompts::read_prompts;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    /// Text to continue. Empty: start a new document.
    #[arg(long, default_value = "", conflicts_with = "prompts")]
    prompt: String,
    /// A file of prompts, one per line (or JSONL with a "prompt" field): each is continued
    /// and written as one JSON line (prompt, completion, token counts, stop reason), in input
    /// order. Prompt i samples with seed --seed + i.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// With --prompts: sequences decoded together from one batched cache; a finished one's
    /// slot goes to the next waiting prompt.
    #[arg(long, default_value_t = 8, requires = "prompts")]
    batch: usize,
    /// With --prompts: write the JSON lines to this file (written whole, then renamed into
    /// place) instead of stdout.
    #[arg(long, value_name = "FILE", requires = "prompts")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample only from the K most likely tokens (1 = greedy).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: only from the most likely tokens holding probability P (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler (default: from the clock; printed at the end).
    #[arg(long)]
    seed: Option<u64>,
    /// latent: MLA's latent cache with absorbed weights; naive: decompressed per-head K/V;
    /// none: no cache, the whole sequence is recomputed every step (for comparison).
    /// mha/gqa/mqa cache full K/V with either of latent and naive.
    #[arg(long, default_value = "latent", value_parser = ["latent", "naive", "none"])]
    cache: String,
    /// Keep the last tokens of a prompt that does not fit in the context with
    /// --max-new-tokens, instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Do not put <|endoftext|> before the prompt. By default it is, as every training
    /// document is preceded by it in the token shards: the prompt then reads as the start of a
    /// document.
    #[arg(long)]
    no_eot_prefix: bool,
    /// Tokenizer file (default: the run's [data] tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Precision of the weights and the cache while generating (default: the model's
    /// `dtype`).
    #[arg(long, value_parser = ["f32", "bf16"])]
    dtype: Option<String>,
    /// cpu, tch-cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let cfg = ckpt.config().context("reading the checkpoint's config")?;
    let tok_path = match &args.tokenizer {
        Some(p) => p.clone(),
        None if cfg.data.tokenizer.is_empty() => {
            anyhow::bail!("the run's config names no tokenizer; pass --tokenizer FILE")
        }
        None => PathBuf::from(&cfg.data.tokenizer),
    };
    let tokenizer = mla_data::Tokenizer::from_file(&tok_path).with_context(|| {
        format!(
            "loading the tokenizer {} (pass --tokenizer FILE if it moved)",
            tok_path.display()
        )
    })?;
    anyhow::ensure!(
        tokenizer.vocab_size() <= cfg.model.vocab_size,
        "the tokenizer {} has {} ids but the model only {}: is it the run's tokenizer?",
        tok_path.display(),
        tokenizer.vocab_size(),
        cfg.model.vocab_size
    );
    let device = mla_train::device::parse(&args.device)?.device()?;
    let model = ckpt.load_model(&cfg.model, &device)?;
    // Weights and cache in the inference precision: --dtype, else the model's `dtype`.
    let dtype = match args.dtype.as_deref() {
        Some("bf16") => TrainDType::Bf16,
        Some(_) => TrainDType::F32,
        None if cfg.model.dtype == DType::Bf16 => TrainDType::Bf16,
        None => TrainDType::F32,
    };
    let model = mla_train::precision::compute_view(&model, dtype);

    let eot = tokenizer.eot_id();
    let encode = |text: &str| -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        if !args.no_eot_prefix
            && let Some(e) = eot
        {
            ids.push(e);
        }
        ids.extend(tokenizer.encode(text)?);
        Ok(ids)
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed,
        },
        cache: CacheChoice::parse(&args.cache).expect("clap checks the value"),
        eos: eot,
        truncate: args.truncate,
        vocab_limit: Some(tokenizer.vocab_size()),
    };
    opts.sampling.validate()?;
    if let Some(file) = &args.prompts {
        return batched(&args, file, &model, &tokenizer, &encode, &opts);
    }
    let ids = encode(&args.prompt)?;
    let max_seq = cfg.model.max_seq_len;
    let (fitted, dropped) = fit_prompt(&ids, args.max_new_tokens, max_seq, args.truncate)?;
    if dropped > 0 {
        eprintln!(
            "warning: the prompt ({} tokens) plus --max-new-tokens ({}) does not fit in the \
             model's context of {max_seq} tokens: dropped its first {dropped} tokens, keeping \
             the last {}",
            ids.len(),
            args.max_new_tokens,
            fitted.len()
        );
    }
    let fitted = fitted.to_vec();

    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    let mut generated = Vec::new();
    let mut stream = TextStream::new();
    let mut write_err = None;
    let result = generate(&model, &fitted, &opts, |id| {
        generated.push(id);
        let text = tokenizer.decode(&generated).unwrap_or_default();
        let new = stream.update(&text);
        if !new.is_empty()
            && let Err(e) = out.write_all(new.as_bytes()).and_then(|_| out.flush())
        {
            write_err.get_or_insert(e);
        }
    })?;
    let text = tokenizer.decode(&generated).unwrap_or_default();
    writeln!(out, "{}", stream.finish(&text))?;
    out.flush()?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }

    let cache = match opts.cache {
        CacheChoice::Recompute => "none".to_string(),
        c => format!(
            "{} {:.1} KB ({} tokens)",
            c.as_str(),
            result.cache_bytes as f64 / 1e3,
            result.cache_tokens
        ),
    };
    if result.stop == StopReason::ContextFull {
        eprintln!("stopped: the model's context of {max_seq} tokens is full");
    }
    eprintln!(
        "prompt {} tokens | generated {} tokens (stop: {}) | prefill {:.1} ms | decode {:.1} \
         tokens/s | cache {cache} | seed {seed}",
        result.prompt.len(),
        result.tokens.len(),
        result.stop.describe(),
        result.prefill.as_secs_f64() * 1e3,
        result.decode_tokens_per_s(),
    );
    Ok(())
}

/// `--prompts FILE`: every prompt of the file, `--batch` at a time, one JSON line each.
fn batched(
    args: &Args,
    file: &std::path::Path,
    model: &mla_model::Lm,
    tokenizer: &mla_data::Tokenizer,
    encode: &dyn Fn(&str) -> anyhow::Result<Vec<u32>>,
    opts: &GenerateOptions,
) -> anyhow::Result<()> {
    let prompts = read_prompts(file)?;
    let ids = prompts
        .iter()
        .map(|p| {
            encode(&p.text)
                .with_context(|| format!("{} line {}: encoding the prompt", file.display(), p.line))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text = |r: &SequenceResult| tokenizer.decode(&r.tokens).unwrap_or_default();
    let json_line = |r: &SequenceResult| {
        let p = &prompts[r.index];
        serde_json::json!({
            "line": p.line,
            "prompt": p.text,
            "completion": text(r),
            "prompt_tokens": r.prompt.len(),
            "truncated_tokens": r.truncated,
            "completion_tokens": r.tokens.len(),
            "stop": r.stop.as_str(),
        })
        .to_string()
    };
    // Lines go out in input order: a finished result waits for the ones before it.
    let mut sink = Sink::open(args.out.as_deref())?;
    let mut ready: Vec<Option<String>> = vec![None; prompts.len()];
    let mut next = 0;
    let mut write_err = None;
    let outcome = generate_batch(model, &ids, args.batch, opts, |r| {
        ready[r.index] = Some(json_line(r));
        while next < ready.len()
            && let Some(line) = ready[next].take()
        {
            if let Err(e) = sink.line(&line) {
                write_err.get_or_insert(e);
            }
            next += 1;
        }
    });
    let (results, stats) = match outcome {
        Ok(done) => done,
        Err(BatchError::Prompt { index, source }) => {
            anyhow::bail!("{} line {}: {source}", file.display(), prompts[index].line)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(e) = write_err {
        return Err(e).context("writing the results");
    }
    sink.finish()?;
    for r in results.iter().filter(|r| r.truncated > 0) {
        eprintln!(
            "warning: {} line {}: dropped the first {} prompt tokens to fit the context, kept {}",
            file.display(),
            prompts[r.index].line,
            r.truncated,
            r.prompt.len()
        );
    }
    eprintln!(
        "{} prompts | batch {} | generated {} tokens | prefill {:.1} ms | decode {} steps \
         {:.1} ms | {:.1} tokens/s | cache {} peak {:.1} KB | seed {}",
        results.len(),
        stats.slots,
        stats.generated,
        stats.prefill.as_secs_f64() * 1e3,
        stats.decode_steps,
        stats.decode.as_secs_f64() * 1e3,
        stats.tokens_per_s(),
        opts.cache.as_str(),
        stats.peak_cache_bytes as f64 / 1e3,
        opts.sampling.seed,
    );
    Ok(())
}

/// Where the JSON lines go: stdout, or a file written under a temporary name and renamed into
/// place once complete (an interrupted run leaves any earlier file as it was).
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    File {
        tmp: tempfile::NamedTempFile,
        path: PathBuf,
    },
}

impl Sink {
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::Stdout(std::io::stdout().lock()));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file next to {}", path.display()))?;
        Ok(Self::File {
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => {
                writeln!(out, "{line}")?;
                out.flush()
            }
            Self::File { tmp, .. } => writeln!(tmp, "{line}"),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Stdout(_) => Ok(()),
            Self::File { tmp, path } => {
                tmp.persist(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(())
            }
        }
    }
}
