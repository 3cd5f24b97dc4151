//! Token shards in llm.c's `.bin` format, so llm.c / modded-nanogpt FineWeb shards can be used
//! unchanged and ours can be read by their loaders.
//!
//! Layout (all little-endian):
//! ```text
//! header: 256 x i32   [0] magic, [1] version, [2] token count, rest zero
//! tokens: count x u16 (magic 20240520, version 1)  or  count x u32 (magic 20240801, version 7)
//! ```
//! Shards are written to `<name>.tmp`, fsynced and renamed, so a reader never sees half a shard,
//! and read through a memory map, so opening a 200 MB shard costs nothing until tokens are used.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Number of i32 words in the header.
pub const HEADER_WORDS: usize = 256;
/// Header size in bytes.
pub const HEADER_BYTES: usize = HEADER_WORDS * 4;
/// llm.c's magic for u16 tokens (GPT-2 sized vocabularies).
pub const MAGIC_U16: i32 = 20240520;
/// The only version llm.c writes with [`MAGIC_U16`].
pub const VERSION_U16: i32 = 1;
/// llm.c's magic for u32 tokens (vocabularies above 65536 ids, e.g. Llama 3).
pub const MAGIC_U32: i32 = 20240801;
/// The only version llm.c writes with [`MAGIC_U32`].
pub const VERSION_U32: i32 = 7;

/// Width of the token ids stored in a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// The narrowest type that holds every id of a vocabulary of `vocab_size` ids.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// (magic, version) written in the header.
    pub fn magic_version(self) -> (i32, i32) {
        match self {
            TokenDtype::U16 => (MAGIC_U16, VERSION_U16),
            TokenDtype::U32 => (MAGIC_U32, VERSION_U32),
        }
    }

    /// Largest storable id.
    pub fn max_id(self) -> u32 {
        match self {
            TokenDtype::U16 => u16::MAX as u32,
            TokenDtype::U32 => u32::MAX,
        }
    }

    fn from_header(magic: i32, version: i32) -> std::result::Result<Self, String> {
        let dtype = match magic {
            MAGIC_U16 => TokenDtype::U16,
            MAGIC_U32 => TokenDtype::U32,
            _ => {
                return Err(format!(
                    "bad magic {magic}, expected {MAGIC_U16} (uint16 tokens) or {MAGIC_U32} \
                     (uint32 tokens)"
                ));
            }
        };
        let (_, expected) = dtype.magic_version();
        if version != expected {
            return Err(format!(
                "magic {magic} needs version {expected}, found version {version}"
            ));
        }
        Ok(dtype)
    }
}

/// Writes `tokens` as one shard at `path` (via `<path>.tmp`, fsync, rename).
pub fn write_shard(path: impl AsRef<Path>, tokens: &[u32], dtype: TokenDtype) -> Result<()> {
    let mut w = ShardWriter::create(path.as_ref(), dtype)?;
    w.push(tokens)?;
    w.finish()?;
    Ok(())
}

/// Streams tokens into one shard without holding them in memory. The file appears under its
/// final name only when [`ShardWriter::finish`] succeeds; a writer dropped before that removes
/// its temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    dtype: TokenDtype,
    count: u64,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Starts `<path>.tmp` with a placeholder header.
    pub fn create(path: impl Into<PathBuf>, dtype: TokenDtype) -> Result<Self> {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&header(dtype, 0))
            .map_err(|e| DataError::io(&tmp, e))?;
        Ok(ShardWriter {
            path,
            tmp,
            file: Some(file),
            dtype,
            count: 0,
            buf: Vec::new(),
        })
    }

    /// Appends tokens. Fails if an id does not fit the dtype or the shard would exceed the
    /// i32 token count of the header.
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        let max = self.dtype.max_id();
        if let Some(i) = tokens.iter().position(|&t| t > max) {
            return Err(DataError::TokenOutOfRange {
                path: self.path.clone(),
                index: self.count + i as u64,
                id: tokens[i],
                vocab_size: max as u64 + 1,
            });
        }
        if self.count + tokens.len() as u64 > i32::MAX as u64 {
            return Err(DataError::InvalidOption(format!(
                "{}: a shard holds at most {} tokens (the header's count is an i32)",
                self.path.display(),
                i32::MAX
            )));
        }
        self.buf.clear();
        match self.dtype {
            TokenDtype::U16 => {
                for &t in tokens {
                    self.buf.extend_from_slice(&(t as u16).to_le_bytes());
                }
            }
            TokenDtype::U32 => {
                for &t in tokens {
                    self.buf.extend_from_slice(&t.to_le_bytes());
                }
            }
        }
        let file = self.file.as_mut().expect("ShardWriter used after finish");
        file.write_all(&self.buf)
            .map_err(|e| DataError::io(&self.tmp, e))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Final path of the shard.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the real header, fsyncs and renames the shard to its final name.
    pub fn finish(mut self) -> Result<PathBuf> {
        let mut file = self.file.take().expect("ShardWriter finished twice");
        let io = |e| DataError::io(&self.tmp, e);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(self.dtype, self.count as i32))
            .map_err(io)?;
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(self.path.clone())
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not finished (an error or a panic upstream): leave no half-written file.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn header(dtype: TokenDtype, count: i32) -> [u8; HEADER_BYTES] {
    let (magic, version) = dtype.magic_version();
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&count.to_le_bytes());
    h
}

/// A validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    dtype: TokenDtype,
    len: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl Shard {
    /// Maps `path` and checks its header against its size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let found = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
        if found < HEADER_BYTES as u64 {
            return Err(DataError::ShardTruncated {
                path,
                expected: HEADER_BYTES as u64,
                found,
            });
        }
        let map = map_file(&file).map_err(|e| DataError::io(&path, e))?;
        let word = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap());
        let dtype = match TokenDtype::from_header(word(0), word(1)) {
            Ok(d) => d,
            Err(message) => return Err(DataError::ShardHeader { path, message }),
        };
        let count = word(2);
        if count < 0 {
            return Err(DataError::ShardHeader {
                path,
                message: format!("negative token count {count}"),
            });
        }
        let expected = HEADER_BYTES as u64 + count as u64 * dtype.width() as u64;
        if found < expected {
            return Err(DataError::ShardTruncated {
                path,
                expected,
                found,
            });
        }
        if found > expected {
            return Err(DataError::ShardTooLong {
                path,
                expected,
                found,
                tokens: count as u64,
            });
        }
        Ok(Shard {
            path,
            map,
            dtype,
            len: count as usize,
        })
    }

    /// Path the shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a shard without tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stored token width.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Token ids in `range`, widened to u32. Panics if the range is out of bounds, as slicing
    /// does.
    pub fn tokens(&self, range: Range<usize>) -> Vec<u32> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "token range {range:?} out of bounds for {} ({} tokens)",
            self.path.display(),
            self.len
        );
        let w = self.dtype.width();
        let bytes = &self.map[HEADER_BYTES + range.start * w..HEADER_BYTES + range.end * w];
        match self.dtype {
            TokenDtype::U16 => bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect(),
            TokenDtype::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    /// Fails on the first id >= `vocab_size`, naming the file, index and id.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        // Scan in blocks so a multi-GB shard is not widened into memory at once.
        const BLOCK: usize = 1 << 20;
        let mut start = 0;
        while start < self.len {
            let end = (start + BLOCK).min(self.len);
            let block = self.tokens(start..end);
            if let Some(i) = block.iter().position(|&t| t as usize >= vocab_size) {
                return Err(DataError::TokenOutOfRange {
                    path: self.path.clone(),
                    index: (start + i) as u64,
                    id: block[i],
                    vocab_size: vocab_size as u64,
                });
            }
            start = end;
        }
        Ok(())
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and shards are never modified in place: writers create a
    // new file and rename it over the old one, which leaves existing maps on the old inode
    // intact. Another program truncating a shard while we read it is outside our control
    // (as for every mmap reader, llm.c's included).
    unsafe { Mmap::map(file) }
}

/// An ordered set of shards (sorted by path), cheap to clone.
#[derive(Clone, Debug)]
pub struct ShardSet {
    source: String,
    shards: Arc<[Shard]>,
}

impl ShardSet {
    /// Opens every file matching `pattern` (e.g. `data/shakespeare/train_*.bin`), sorted by path.
    /// With `vocab_size`, every token of every shard is checked to be below it.
    pub fn open_glob(pattern: &str, vocab_size: Option<usize>) -> Result<Self> {
        let entries = glob::glob(pattern)
            .map_err(|e| DataError::InvalidOption(format!("bad glob pattern {pattern:?}: {e}")))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry?;
            if path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(DataError::NoMatch {
                pattern: pattern.to_string(),
            });
        }
        paths.sort();
        Self::open_paths(pattern.to_string(), paths, vocab_size)
    }

    /// Opens the given shard files in the given order.
    pub fn open(paths: &[PathBuf], vocab_size: Option<usize>) -> Result<Self> {
        if paths.is_empty() {
            return Err(DataError::NoMatch {
                pattern: "(empty list of shards)".into(),
            });
        }
        let source = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Self::open_paths(source, paths.to_vec(), vocab_size)
    }

    fn open_paths(source: String, paths: Vec<PathBuf>, vocab: Option<usize>) -> Result<Self> {
        let shards = paths.iter().map(Shard::open).collect::<Result<Vec<_>>>()?;
        if let Some(v) = vocab {
            use rayon::prelude::*;
            shards.par_iter().try_for_each(|s| s.check_vocab(v))?;
        }
        Ok(ShardSet {
            source,
            shards: shards.into(),
        })
    }

    /// The pattern or list the set was opened from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// True when the set holds no shard (never after a successful open).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Tokens in all shards together.
    pub fn total_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }

    /// Tokens in the longest shard.
    pub fn longest(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_follows_vocab_size() {
        assert_eq!(TokenDtype::for_vocab(50257), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65536), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65537), TokenDtype::U32);
        assert_eq!(TokenDtype::for_vocab(128256), TokenDtype::U32);
    }

    #[test]
    fn header_is_llm_c() {
        let h = header(TokenDtype::U16, 7);
        assert_eq!(&h[0..4], &20240520i32.to_le_bytes());
        assert_eq!(&h[4..8], &1i32.to_le_bytes());
        assert_eq!(&h[8..12], &7i32.to_le_bytes());
        assert!(h[12..].iter().all(|&b| b == 0));
        let h = header(TokenDtype::U32, 0);
        assert_eq!(&h[0..4], &20240801i32.to_le_bytes());
        assert_eq!(&h[4..8], &7i32.to_le_bytes());
    }

    #[test]
    fn writer_rejects_ids_too_wide_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        let err = write_shard(&p, &[1, 70000], TokenDtype::U16).unwrap_err();
        assert!(err.to_string().contains("s.bin"), "{err}");
        assert!(err.to_string().contains("70000"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn read_back_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        let toks: Vec<u32> = (0..1000).map(|i| i * 37 % 50257).collect();
        write_shard(&p, &toks, TokenDtype::U16).unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.len(), 1000);
        assert_eq!(s.tokens(10..20), toks[10..20].to_vec());
        assert_eq!(s.tokens(0..0), Vec::<u32>::new());
        assert!(s.check_vocab(50257).is_ok());
        let e = s.check_vocab(100).unwrap_err().to_string();
        assert!(e.contains("token 3 has id 111"), "{e}");
    }
}
