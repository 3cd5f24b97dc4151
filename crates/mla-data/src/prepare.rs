//! `mla data prepare`: corpus files -> train/val token shards.
//!
//! 1. Expand the inputs and scan every document once (UTF-8, JSONL syntax), so a bad file
//!    fails in seconds rather than after an hour of tokenization.
//! 2. Split by document, deterministically: documents numbered in (path, line) order, a
//!    random subset of round(n * val_fraction) of them (ChaCha8 seeded with `seed`) goes to val.
//! 3. Tokenize in parallel batches of documents, each document preceded by `<|endoftext|>` as
//!    in llm.c, and stream the tokens into shards of at most `shard_tokens` tokens.
//! 4. The shards are written into a staging directory inside `out` and moved over the shards
//!    of an earlier run only once all of them are complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::corpus;
use crate::error::{DataError, Result};
use crate::shard::{ShardWriter, TokenDtype};
use crate::tokenizer::{EOT, Tokenizer, describe, progress_bar};

/// Options of [`prepare`].
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Files, directories or globs.
    pub inputs: Vec<PathBuf>,
    /// A HuggingFace `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Share of documents for validation, in [0, 1).
    pub val_fraction: f64,
    /// Seed of the document split.
    pub seed: u64,
    /// Maximum tokens per shard.
    pub shard_tokens: usize,
    /// JSON field holding the text in `.jsonl` inputs.
    pub text_field: String,
    /// Precede every document by `<|endoftext|>`.
    pub eot: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl PrepareOptions {
    /// Defaults: val_fraction 0.1, seed 1337, 100M tokens per shard, field `text`, EOT on.
    pub fn new(inputs: Vec<PathBuf>, tokenizer: PathBuf, out: PathBuf) -> Self {
        PrepareOptions {
            inputs,
            tokenizer,
            out,
            val_fraction: 0.1,
            seed: 1337,
            shard_tokens: 100_000_000,
            text_field: "text".into(),
            eot: true,
            progress: false,
        }
    }
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareSummary {
    /// Corpus files read.
    pub files: usize,
    pub train_documents: u64,
    pub val_documents: u64,
    /// Empty documents, skipped.
    pub empty_documents: u64,
    /// Tokens written, separators included.
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// `<|endoftext|>` separators among those tokens.
    pub separators: u64,
    /// UTF-8 bytes of document text.
    pub bytes: u64,
    pub train_shards: Vec<PathBuf>,
    pub val_shards: Vec<PathBuf>,
    pub dtype: TokenDtype,
    pub vocab_size: usize,
    /// Wall time of the whole preparation.
    pub seconds: f64,
}

impl PrepareSummary {
    /// Text bytes per text token (separators not counted): the tokenizer's compression.
    pub fn bytes_per_token(&self) -> f64 {
        let text_tokens = self.train_tokens + self.val_tokens - self.separators;
        self.bytes as f64 / text_tokens.max(1) as f64
    }

    /// Throughput in MB (10^6 bytes) of text per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Documents are tokenized in batches of about this many bytes (long documents are further
/// cut into 64 KiB pieces by `Tokenizer::encode_batch`, so a batch keeps every core busy):
/// large enough to amortise the fork/join, small enough to bound memory and move the progress
/// bar.
const BATCH_BYTES: usize = 8 << 20;

/// Runs the whole preparation; see the module docs.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareSummary> {
    let t0 = Instant::now();
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(DataError::InvalidOption(format!(
            "val fraction {} is not in [0, 1)",
            opts.val_fraction
        )));
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as usize {
        return Err(DataError::InvalidOption(format!(
            "shard tokens {} is not in [1, {}] (llm.c's header counts tokens in an i32)",
            opts.shard_tokens,
            i32::MAX
        )));
    }
    let tokenizer = Tokenizer::from_file(&opts.tokenizer)?;
    let eot = match (opts.eot, tokenizer.eot_id()) {
        (true, Some(id)) => Some(id),
        (true, None) => {
            return Err(DataError::MissingToken {
                path: opts.tokenizer.clone(),
                token: EOT.into(),
                hint: " to separate documents (add it when training, or pass --no-eot)",
            });
        }
        (false, _) => None,
    };
    let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());

    // 1. Scan.
    let files = corpus::expand_inputs(&opts.inputs)?;
    let mut n_docs = 0u64;
    let mut empty = 0u64;
    let mut bytes_total = 0u64;
    for f in &files {
        corpus::for_each_document(f, &opts.text_field, |d| {
            if d.text.is_empty() {
                empty += 1;
            } else {
                n_docs += 1;
                bytes_total += d.text.len() as u64;
            }
            Ok(())
        })?;
    }
    if n_docs == 0 {
        return Err(DataError::EmptyCorpus {
            inputs: describe(&opts.inputs),
        });
    }

    // 2. Split.
    let is_val = split(n_docs, opts.val_fraction, opts.seed);

    // 3. Tokenize into staged shards.
    std::fs::create_dir_all(&opts.out).map_err(|e| DataError::io(&opts.out, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".prepare-")
        .tempdir_in(&opts.out)
        .map_err(|e| DataError::io(&opts.out, e))?;
    let mut train = SplitWriter::new(staging.path(), "train", dtype, opts.shard_tokens);
    let mut val = SplitWriter::new(staging.path(), "val", dtype, opts.shard_tokens);
    let progress = progress_bar(opts.progress, bytes_total, "tokenizing");
    let mut batch: Vec<(u64, String)> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut doc_id = 0u64;
    let mut flush = |batch: &mut Vec<(u64, String)>| -> Result<()> {
        let texts: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
        let encoded = tokenizer.encode_batch(&texts)?;
        for ((id, text), ids) in batch.iter().zip(encoded) {
            let w = if is_val[*id as usize] {
                &mut val
            } else {
                &mut train
            };
            if let Some(e) = eot {
                w.push(&[e])?;
            }
            w.push(&ids)?;
            w.documents += 1;
            if let Some(p) = &progress {
                p.inc(text.len() as u64);
            }
        }
        batch.clear();
        Ok(())
    };
    for f in &files {
        corpus::for_each_document(f, &opts.text_field, |d| {
            if d.text.is_empty() {
                return Ok(());
            }
            if doc_id == n_docs {
                return Err(DataError::CorpusChanged(format!(
                    "{} holds more documents than when it was scanned",
                    f.display()
                )));
            }
            batch_bytes += d.text.len();
            batch.push((doc_id, d.text));
            doc_id += 1;
            if batch_bytes >= BATCH_BYTES {
                flush(&mut batch)?;
                batch_bytes = 0;
            }
            Ok(())
        })?;
    }
    flush(&mut batch)?;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    if doc_id != n_docs {
        return Err(DataError::CorpusChanged(format!(
            "{n_docs} documents when scanned, {doc_id} when tokenized"
        )));
    }
    let (train_docs, train_tokens, train_staged) = train.finish()?;
    let (val_docs, val_tokens, val_staged) = val.finish()?;

    // 4. Replace the previous run's shards.
    let train_shards = commit(&opts.out, "train", &train_staged)?;
    let val_shards = commit(&opts.out, "val", &val_staged)?;
    drop(staging);

    Ok(PrepareSummary {
        files: files.len(),
        train_documents: train_docs,
        val_documents: val_docs,
        empty_documents: empty,
        train_tokens,
        val_tokens,
        separators: if eot.is_some() { n_docs } else { 0 },
        bytes: bytes_total,
        train_shards,
        val_shards,
        dtype,
        vocab_size: tokenizer.vocab_size(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `is_val[i]` for documents `0..n`: a seeded random subset of round(n * fraction) documents,
/// at least one when fraction > 0 and n >= 2, and never all of them.
pub fn split(n: u64, fraction: f64, seed: u64) -> Vec<bool> {
    let mut k = (n as f64 * fraction).round() as u64;
    if fraction > 0.0 && n >= 2 {
        k = k.max(1);
    }
    k = k.min(n.saturating_sub(1));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut is_val = vec![false; n as usize];
    for i in rand::seq::index::sample(&mut rng, n as usize, k as usize) {
        is_val[i] = true;
    }
    is_val
}

/// Streams one split's tokens into `<prefix>_000000.bin`, `<prefix>_000001.bin`, ...
struct SplitWriter {
    dir: PathBuf,
    prefix: &'static str,
    dtype: TokenDtype,
    cap: u64,
    current: Option<ShardWriter>,
    done: Vec<PathBuf>,
    tokens: u64,
    documents: u64,
}

impl SplitWriter {
    fn new(dir: &Path, prefix: &'static str, dtype: TokenDtype, cap: usize) -> Self {
        SplitWriter {
            dir: dir.to_path_buf(),
            prefix,
            dtype,
            cap: cap as u64,
            current: None,
            done: Vec::new(),
            tokens: 0,
            documents: 0,
        }
    }

    /// Appends tokens, filling shards to the cap (a document may straddle two shards, as in
    /// llm.c; training windows never cross shard boundaries).
    fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let w = match &mut self.current {
                Some(w) => w,
                None => {
                    let name = shard_name(self.prefix, self.done.len());
                    self.current
                        .insert(ShardWriter::create(self.dir.join(name), self.dtype)?)
                }
            };
            let room = (self.cap - w.len()) as usize;
            let n = room.min(tokens.len());
            w.push(&tokens[..n])?;
            self.tokens += n as u64;
            tokens = &tokens[n..];
            if w.len() == self.cap {
                let w = self.current.take().unwrap();
                self.done.push(w.finish()?);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(u64, u64, Vec<PathBuf>)> {
        if let Some(w) = self.current.take() {
            self.done.push(w.finish()?);
        }
        Ok((self.documents, self.tokens, self.done))
    }
}

/// `train_000000.bin` etc.
pub fn shard_name(prefix: &str, index: usize) -> String {
    format!("{prefix}_{index:06}.bin")
}

/// Moves staged shards into `out` (over same-named ones) and removes the earlier run's shards
/// of this prefix that were not replaced. Returns the new paths.
fn commit(out: &Path, prefix: &str, staged: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut old = Vec::new();
    let pattern = format!(
        "{}/{prefix}_*.bin",
        glob::Pattern::escape(&out.to_string_lossy())
    );
    for entry in glob::glob(&pattern).expect("escaped pattern is valid") {
        let path = entry?;
        let numbered = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| {
                n.strip_prefix(prefix)?
                    .strip_prefix('_')?
                    .strip_suffix(".bin")
            })
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            old.push(path);
        }
    }
    let mut new = Vec::new();
    for s in staged {
        let dest = out.join(s.file_name().expect("staged shards have names"));
        std::fs::rename(s, &dest).map_err(|e| DataError::io(&dest, e))?;
        new.push(dest);
    }
    for p in old {
        if !new.contains(&p) {
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes() {
        let count = |v: &[bool]| v.iter().filter(|&&b| b).count();
        assert_eq!(count(&split(100, 0.1, 1)), 10);
        assert_eq!(count(&split(5, 0.01, 1)), 1);
        assert_eq!(count(&split(1, 0.5, 1)), 0);
        assert_eq!(count(&split(2, 0.9, 1)), 1);
        assert_eq!(count(&split(10, 0.0, 1)), 0);
        assert_eq!(split(1000, 0.1, 7), split(1000, 0.1, 7));
        assert_ne!(split(1000, 0.1, 7), split(1000, 0.1, 8));
    }

    #[test]
    fn names() {
        assert_eq!(shard_name("val", 12), "val_000012.bin");
    }
}
