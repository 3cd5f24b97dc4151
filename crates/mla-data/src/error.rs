//! The one error type of the data crate. Every variant that concerns a file carries its path
//! and shows it first, so a failure deep in a pipeline still names the file to look at.

use std::path::PathBuf;

/// Everything that can go wrong while reading corpora, tokenizing or reading shards.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An operating-system error while reading or writing `path`.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// A text file that is not valid UTF-8 (offset of the first bad byte).
    #[error(
        "{}: not valid UTF-8 at byte offset {offset} (convert the file to UTF-8 first)",
        path.display()
    )]
    InvalidUtf8 { path: PathBuf, offset: u64 },

    /// A bad line in a JSONL corpus file (1-based line number).
    #[error("{}:{line}: {message}", path.display())]
    Jsonl {
        path: PathBuf,
        line: u64,
        message: String,
    },

    /// A `tokenizer.json` that cannot be read, parsed or written.
    #[error("{}: tokenizer: {message}", path.display())]
    TokenizerFile { path: PathBuf, message: String },

    /// A tokenizer lacking a token that the operation needs.
    #[error("{}: tokenizer has no {token} token{hint}", path.display())]
    MissingToken {
        path: PathBuf,
        token: String,
        hint: &'static str,
    },

    /// Training, encoding or decoding failed inside the tokenizers crate.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A shard whose header is not llm.c's (magic, version or token count).
    #[error("{}: not an llm.c token shard: {message}", path.display())]
    ShardHeader { path: PathBuf, message: String },

    /// A shard shorter than its header says.
    #[error("{}: truncated: expected {expected} bytes, found {found}", path.display())]
    ShardTruncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// A shard longer than its header says.
    #[error(
        "{}: too long: expected {expected} bytes (header says {tokens} tokens), found {found}",
        path.display()
    )]
    ShardTooLong {
        path: PathBuf,
        expected: u64,
        found: u64,
        tokens: u64,
    },

    /// A token id outside the vocabulary, in a shard or about to be written to one.
    #[error(
        "{}: token {index} has id {id}, not below the vocabulary size {vocab_size}",
        path.display()
    )]
    TokenOutOfRange {
        path: PathBuf,
        index: u64,
        id: u32,
        vocab_size: u64,
    },

    /// An input path or glob that matched no file.
    #[error("no files match {pattern}")]
    NoMatch { pattern: String },

    /// Preparation found no non-empty document.
    #[error("empty corpus: no non-empty document in {inputs}")]
    EmptyCorpus { inputs: String },

    /// The shards are too short for even one training or evaluation window.
    #[error(
        "not enough tokens in {what}: a window of seq_len + 1 = {needed} tokens must fit in one \
         shard, but the longest shard has {longest} tokens ({total} in all)"
    )]
    NotEnoughTokens {
        what: String,
        needed: u64,
        longest: u64,
        total: u64,
    },

    /// A sampler state that does not belong to these shards or this sequence length.
    #[error("cannot restore the sampler: {0}")]
    BadState(String),

    /// Input files changed between the scan and the tokenization of `prepare`.
    #[error("the corpus changed while it was being prepared: {0}")]
    CorpusChanged(String),

    /// An option out of its range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        // The I/O error is part of the message rather than a `source()`, so that printing the
        // error chain (anyhow's `{:#}`) does not repeat it.
        DataError::Io {
            path: path.into(),
            err,
        }
    }
}

impl From<glob::GlobError> for DataError {
    /// A directory that could not be read while matching a glob.
    fn from(e: glob::GlobError) -> Self {
        let path = e.path().to_path_buf();
        DataError::io(path, e.into())
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_start_with_the_path() {
        let e = DataError::ShardTruncated {
            path: "a/b.bin".into(),
            expected: 1030,
            found: 1028,
        };
        assert_eq!(
            e.to_string(),
            "a/b.bin: truncated: expected 1030 bytes, found 1028"
        );
        let e = DataError::Jsonl {
            path: "c.jsonl".into(),
            line: 3,
            message: "missing field".into(),
        };
        assert_eq!(e.to_string(), "c.jsonl:3: missing field");
    }
}
