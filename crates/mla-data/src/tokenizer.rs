//! Tokenizers: a thin wrapper over HuggingFace's `tokenizers` crate. Trains byte-level BPE as
//! GPT-2 does (ByteLevel pre-tokenizer and decoder, no normalizer) and loads any
//! `tokenizer.json`, GPT-2's included.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use tokenizers::AddedToken;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::corpus;
use crate::error::{DataError, Result};

/// The document separator, as in GPT-2.
pub const EOT: &str = "<|endoftext|>";

/// Options of [`Tokenizer::train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Size of the vocabulary, special tokens and the 256 byte tokens included.
    pub vocab_size: usize,
    /// Special tokens, given the first ids.
    pub special_tokens: Vec<String>,
    /// Merges of pairs seen fewer times are not learnt (0: learn until `vocab_size`).
    pub min_frequency: u64,
    /// JSON field holding the text in `.jsonl` inputs.
    pub text_field: String,
    /// Show a progress bar on stderr.
    pub show_progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            vocab_size: 8192,
            special_tokens: vec![EOT.to_string()],
            min_frequency: 0,
            text_field: "text".to_string(),
            show_progress: false,
        }
    }
}

/// A loaded or trained tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    eot: Option<u32>,
    source: PathBuf,
    /// Long texts may be cut at [`safe_cut`] points (see [`splits_safely`]).
    split_long: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("eot", &self.eot)
            .finish()
    }
}

fn tk_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

impl Tokenizer {
    fn wrap(inner: tokenizers::Tokenizer, source: PathBuf) -> Self {
        // Every id the tokenizer can emit must have an embedding row: count up to the largest
        // id of the model vocabulary and the added tokens, not just the model's vocabulary.
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let eot = inner.token_to_id(EOT);
        let split_long = splits_safely(&inner);
        Tokenizer {
            inner,
            vocab_size,
            eot,
            source,
            split_long,
        }
    }

    /// Loads a HuggingFace `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_slice(&json).map_err(|e| DataError::TokenizerFile {
                path: path.to_path_buf(),
                message: format!("not a valid tokenizer.json: {e}"),
            })?;
        Ok(Self::wrap(inner, path.to_path_buf()))
    }

    /// Trains a byte-level BPE tokenizer on the documents of `inputs` (files, directories or
    /// globs, expanded as by [`corpus::expand_inputs`]).
    pub fn train(inputs: &[PathBuf], opts: &TrainOptions) -> Result<Self> {
        let floor = 256 + opts.special_tokens.len();
        if opts.vocab_size < floor {
            return Err(DataError::InvalidOption(format!(
                "vocab size {} is below 256 byte tokens + {} special tokens = {floor}",
                opts.vocab_size,
                opts.special_tokens.len()
            )));
        }
        let files = corpus::expand_inputs(inputs)?;
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(
                opts.special_tokens
                    .iter()
                    .map(|t| AddedToken::from(t.as_str(), true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        // GPT-2's settings, so the saved file has the same shape as GPT-2's tokenizer.json.
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(true, false, true)))
            .with_decoder(Some(ByteLevel::new(true, true, true)));

        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let mut chunks = DocChunks {
            files: files.iter(),
            text_field: &opts.text_field,
            pending: VecDeque::new(),
            error: None,
            bytes: 0,
            progress: progress_bar(opts.show_progress, total, "counting words"),
        };
        let trained = inner.train(&mut trainer, &mut chunks).map(|_| ());
        if let Some(p) = &chunks.progress {
            p.finish_and_clear();
        }
        if let Some(e) = chunks.error {
            return Err(e);
        }
        trained.map_err(tk_err)?;
        if chunks.bytes == 0 {
            return Err(DataError::EmptyCorpus {
                inputs: describe(inputs),
            });
        }
        Ok(Self::wrap(inner, PathBuf::from("(trained)")))
    }

    /// Saves as a HuggingFace `tokenizer.json` (written to `<path>.tmp`, fsynced, renamed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| DataError::TokenizerFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        write_atomic(path, json.as_bytes())
    }

    /// Number of ids the tokenizer can emit (largest id + 1, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of `<|endoftext|>`, if the tokenizer has it.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Where the tokenizer was loaded from (for messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text without adding special tokens. Special tokens written literally in the
    /// text (e.g. `<|endoftext|>`) are recognised as such, as HuggingFace does by default.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts in parallel (rayon, through the tokenizers crate's batch API), with
    /// the same ids as [`Tokenizer::encode`] on each.
    ///
    /// For GPT-2-style tokenizers, texts longer than 64 KiB are first cut into pieces at line
    /// starts where cutting provably changes no id (see `safe_cut` in this file). The
    /// tokenizers crate keeps offset bookkeeping for every byte of an input, so a whole book as
    /// one input spends much of its time in the allocator (measured: 1.3x the CPU time of
    /// 64 KiB pieces) and keeps one core busy while the others wait.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        self.encode_pieces(texts, PIECE)
    }

    fn encode_pieces(&self, texts: &[&str], piece: usize) -> Result<Vec<Vec<u32>>> {
        let mut pieces: Vec<&str> = Vec::with_capacity(texts.len());
        let mut owner: Vec<usize> = Vec::with_capacity(texts.len());
        for (i, &t) in texts.iter().enumerate() {
            if self.split_long {
                for p in split_at(t, piece, safe_cut) {
                    pieces.push(p);
                    owner.push(i);
                }
            } else {
                pieces.push(t);
                owner.push(i);
            }
        }
        let encs = self
            .inner
            .encode_batch_fast(pieces, false)
            .map_err(tk_err)?;
        let mut out = vec![Vec::new(); texts.len()];
        for (enc, i) in encs.into_iter().zip(owner) {
            out[i].extend_from_slice(enc.get_ids());
        }
        Ok(out)
    }

    /// Decodes ids to text, special tokens included. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(DataError::Tokenizer(format!(
                "id {bad} is outside the vocabulary of {} ids",
                self.vocab_size
            )));
        }
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// The wrapped HuggingFace tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Writes `bytes` to `<path>.tmp`, fsyncs it and renames it to `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |e| DataError::io(&tmp, e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

pub(crate) fn describe(inputs: &[PathBuf]) -> String {
    inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn progress_bar(show: bool, total: u64, msg: &'static str) -> Option<ProgressBar> {
    show.then(|| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>14} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                 {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(msg);
        bar
    })
}

/// Feeds the trainer documents cut into pieces of about 64 KiB at line ends, so the
/// pre-tokenization of one long book is spread over all cores. Remembers the first read error
/// and then stops, since the trainer's iterator cannot fail.
struct DocChunks<'a> {
    files: std::slice::Iter<'a, PathBuf>,
    text_field: &'a str,
    pending: VecDeque<String>,
    error: Option<DataError>,
    bytes: u64,
    progress: Option<ProgressBar>,
}

const CHUNK: usize = 64 * 1024;

impl Iterator for DocChunks<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Some(c);
            }
            if self.error.is_some() {
                return None;
            }
            let Some(file) = self.files.next() else {
                // Feeding is over; the trainer now computes merges (no progress to show).
                if let Some(p) = &self.progress {
                    p.set_message("merging");
                    p.enable_steady_tick(std::time::Duration::from_millis(250));
                }
                return None;
            };
            let pending = &mut self.pending;
            let bytes = &mut self.bytes;
            let progress = &self.progress;
            let read = corpus::for_each_document(file, self.text_field, |doc| {
                *bytes += doc.text.len() as u64;
                if let Some(p) = progress {
                    p.inc(doc.raw_bytes);
                }
                pending.extend(split_chunks(&doc.text, CHUNK).map(str::to_string));
                Ok(())
            });
            if let Err(e) = read {
                self.error = Some(e);
            }
        }
    }
}

/// Cuts `text` into pieces of at least `size` bytes, each ending just after a `\n` at which
/// `ok(text, index_of_newline)` holds (the last piece may be shorter); without such a point the
/// text stays whole. Cutting an empty text gives no piece.
fn split_at(
    text: &str,
    size: usize,
    ok: impl Fn(&str, usize) -> bool,
) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len();
        if rest.len() > size {
            let mut from = size;
            while let Some(i) = rest.as_bytes()[from..].iter().position(|&b| b == b'\n') {
                let nl = from + i;
                if ok(rest, nl) {
                    cut = nl + 1;
                    break;
                }
                from = nl + 1;
            }
        }
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// Cut pieces for training (any line end will do: the trainer only counts words).
fn split_chunks(text: &str, size: usize) -> impl Iterator<Item = &str> {
    split_at(text, size, |_, _| true)
}

/// Pieces for [`Tokenizer::encode_batch`].
const PIECE: usize = 64 * 1024;

/// True when cutting just after the `\n` at byte `nl` leaves every id unchanged for a
/// tokenizer accepted by [`splits_safely`]: the `\n` is a lone whitespace between two
/// characters that are letters, digits or ASCII punctuation, e.g. `"end.\nNext"`.
///
/// Why: GPT-2's pre-tokenizer regex is
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. Only its
/// whitespace alternatives match `\n`, and they match whitespace only, so the piece holding the
/// `\n` ends at the next character: the cut is a piece boundary of the whole text. The pieces
/// right of the cut are found the same way from the cut on (the regex has no look-behind). Left
/// of it, the only alternative that looks past its match is `\s+(?!\S)`, which at the end of a
/// piece sees "end of text" instead of the next character; with a lone `\n` after a
/// non-space it matches just that `\n`, as `\s+` would have in the whole text. (With two or
/// more whitespace characters it would not: `"a\n\nB"` is `\n`,`\n` whole but `\n\n` cut.)
fn safe_cut(text: &str, nl: usize) -> bool {
    let plain = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c.is_ascii_graphic());
    nl > 0 && plain(text[..nl].chars().next_back()) && plain(text[nl + 1..].chars().next())
}

/// Whether [`safe_cut`]'s reasoning holds for this tokenizer: no normalizer, GPT-2's ByteLevel
/// pre-tokenizer with its regex and without prefix space (a prefix space would be added at
/// every cut), and no added token that holds a newline or strips whitespace around itself.
fn splits_safely(tk: &tokenizers::Tokenizer) -> bool {
    use tokenizers::PreTokenizerWrapper;
    let byte_level_gpt2 = matches!(
        tk.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
    );
    let added_ok = tk
        .get_added_tokens_decoder()
        .values()
        .all(|t| !t.lstrip && !t.rstrip && !t.content.contains(char::is_whitespace));
    tk.get_normalizer().is_none() && byte_level_gpt2 && added_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_and_end_at_newlines() {
        let text = "ab\ncd\nef\n\ngh";
        let parts: Vec<&str> = split_chunks(text, 2).collect();
        assert_eq!(parts, vec!["ab\n", "cd\n", "ef\n", "\ngh"]);
        assert_eq!(split_chunks("", 4).count(), 0);
        assert_eq!(
            split_chunks("héllo wörld", 3).collect::<Vec<_>>(),
            vec!["héllo wörld"]
        );
    }

    #[test]
    fn trains_with_eot_first_and_exact_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let text = "the cat sat on the mat. the dog sat on the log.\n".repeat(50);
        std::fs::write(dir.path().join("a.txt"), &text).unwrap();
        let opts = TrainOptions {
            vocab_size: 300,
            ..Default::default()
        };
        let tok = Tokenizer::train(&[dir.path().to_path_buf()], &opts).unwrap();
        assert_eq!(tok.eot_id(), Some(0));
        // A tiny corpus runs out of pairs to merge before 300.
        assert!(tok.vocab_size() > 257 && tok.vocab_size() <= 300);
        let ids = tok.encode("the cat sat").unwrap();
        assert!(ids.len() < "the cat sat".len());
        assert_eq!(tok.decode(&ids).unwrap(), "the cat sat");
        assert!(tok.decode(&[300]).is_err());
    }

    #[test]
    fn cuts_only_at_lone_newlines_between_plain_characters() {
        let text = "aaaa\n\nbbbb\n cccc.\nDddd\n漢字\n";
        let parts: Vec<&str> = split_at(text, 1, safe_cut).collect();
        assert_eq!(parts, vec!["aaaa\n\nbbbb\n cccc.\n", "Dddd\n", "漢字\n"]);
        assert_eq!(split_at("no newline", 2, safe_cut).count(), 1);
    }

    #[test]
    fn cut_pieces_encode_like_the_whole_text() {
        // Tricky spots around newlines: runs of whitespace, spaces before and after, CRLF,
        // digits, contractions, punctuation, non-ASCII, and a special token.
        let line = |i: usize| match i % 9 {
            0 => format!("Line {i} ends here.\n"),
            1 => format!("  indented {i}\n\n"),
            2 => format!("'tis {i}'s, isn't it?\r\n"),
            3 => format!("{i}{i} numbers 123\n"),
            4 => format!("über café {i} — naïve\n \n"),
            5 => format!("<|endoftext|>after {i}\n"),
            6 => format!("trailing spaces {i}   \n"),
            7 => format!("漢字かな {i}。\n\t"),
            _ => format!("!!?? {i} ...\n"),
        };
        let text: String = (0..10_000).map(line).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), &text).unwrap();
        let opts = TrainOptions {
            vocab_size: 400,
            ..Default::default()
        };
        let tok = Tokenizer::train(&[dir.path().to_path_buf()], &opts).unwrap();
        assert!(tok.split_long);
        assert!(split_at(&text, PIECE, safe_cut).count() > 1);
        let whole = tok.inner.encode_fast(text.as_str(), false).unwrap();
        // Cut at every safe point (pieces of "at least 1 byte"), and at the usual size.
        assert!(split_at(&text, 1, safe_cut).count() > 3000);
        for piece in [1, PIECE] {
            let got = tok.encode_pieces(&[&text, "", "x"], piece).unwrap();
            assert!(
                got[0] == whole.get_ids(),
                "piece size {piece} changed the ids"
            );
            assert_eq!(got[1], Vec::<u32>::new());
            assert_eq!(got[2].len(), 1);
        }
    }

    #[test]
    fn too_small_vocab_is_an_error() {
        let opts = TrainOptions {
            vocab_size: 100,
            ..Default::default()
        };
        let err = Tokenizer::train(&[PathBuf::from("x")], &opts).unwrap_err();
        assert!(err.to_string().contains("below 256"), "{err}");
    }
}
