//! Corpus inputs: expanding files, directories and globs into a sorted file list, and reading
//! documents from them (a whole plain-text file is one document; a `.jsonl` file holds one
//! document per line, in a string field). Shared by tokenizer training and `prepare`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// File extensions taken from directories.
pub const CORPUS_EXTENSIONS: [&str; 3] = ["txt", "md", "jsonl"];

/// Expands inputs into a sorted, de-duplicated list of files. An input is a file (taken
/// whatever its extension), a directory (searched recursively for `*.txt`, `*.md`, `*.jsonl`,
/// hidden entries skipped) or a glob pattern. An input that yields no file is an error.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_file() {
            files.push(input.clone());
        } else if input.is_dir() {
            files.extend(walk_dir(input)?);
        } else {
            let pattern = input.to_str().ok_or_else(|| DataError::NoMatch {
                pattern: input.display().to_string(),
            })?;
            let entries = glob::glob(pattern).map_err(|e| {
                DataError::InvalidOption(format!("bad glob pattern {pattern:?}: {e}"))
            })?;
            let before = files.len();
            for entry in entries {
                let path = entry?;
                if path.is_dir() {
                    files.extend(walk_dir(&path)?);
                } else {
                    files.push(path);
                }
            }
            if files.len() == before {
                return Err(DataError::NoMatch {
                    pattern: pattern.to_string(),
                });
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let root = dir.to_str().ok_or_else(|| DataError::NoMatch {
        pattern: dir.display().to_string(),
    })?;
    let pattern = format!("{}/**/*", glob::Pattern::escape(root));
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..Default::default()
    };
    let mut files = Vec::new();
    for entry in glob::glob_with(&pattern, options).expect("escaped pattern is valid") {
        let path = entry?;
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CORPUS_EXTENSIONS.contains(&e));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::NoMatch {
            pattern: format!("{} (no .txt, .md or .jsonl file inside)", dir.display()),
        });
    }
    Ok(files)
}

/// True for files read as JSONL (by extension).
pub fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl")
}

/// One document of a corpus file.
pub struct Document {
    /// 1-based line for JSONL files, 0 for a whole-file document.
    pub line: u64,
    pub text: String,
    /// Bytes of the file this document came from (the JSONL line, or the whole file).
    pub raw_bytes: u64,
}

/// Calls `f` for every document of `path` in file order. Blank JSONL lines are skipped;
/// empty documents are passed on (callers decide). Invalid UTF-8 is an error giving the byte
/// offset of the first bad byte in the file; a bad JSONL line is an error giving its number.
pub fn for_each_document(
    path: &Path,
    text_field: &str,
    mut f: impl FnMut(Document) -> Result<()>,
) -> Result<()> {
    let io = |e| DataError::io(path, e);
    if !is_jsonl(path) {
        let bytes = std::fs::read(path).map_err(io)?;
        let raw_bytes = bytes.len() as u64;
        let text = String::from_utf8(bytes).map_err(|e| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to() as u64,
        })?;
        return f(Document {
            line: 0,
            text,
            raw_bytes,
        });
    }
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let s = std::str::from_utf8(&buf).map_err(|e| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset: offset + e.valid_up_to() as u64,
        })?;
        offset += n as u64;
        if s.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::Jsonl {
            path: path.to_path_buf(),
            line,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let text = match value.get(text_field) {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(_) => return Err(bad(format!("field {text_field:?} is not a string"))),
            None => return Err(bad(format!("no field {text_field:?} in this object"))),
        };
        f(Document {
            line,
            text,
            raw_bytes: n as u64,
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_globs_and_files_expand_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/.hidden")).unwrap();
        for f in [
            "b.txt",
            "a.md",
            "sub/c.jsonl",
            "sub/skip.bin",
            "sub/.hidden/h.txt",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let got = expand_inputs(&[d.to_path_buf()]).unwrap();
        let want: Vec<PathBuf> = ["a.md", "b.txt", "sub/c.jsonl"]
            .iter()
            .map(|f| d.join(f))
            .collect();
        assert_eq!(got, want);
        let got =
            expand_inputs(&[d.join("*.txt"), d.join("sub/skip.bin"), d.join("b.txt")]).unwrap();
        assert_eq!(got, vec![d.join("b.txt"), d.join("sub/skip.bin")]);
        let err = expand_inputs(&[d.join("nothing*.txt")]).unwrap_err();
        assert!(err.to_string().contains("no files match"), "{err}");
    }

    #[test]
    fn jsonl_lines_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(
            &p,
            "{\"text\":\"a\"}\n\n{\"text\":\"\",\"x\":1}\n{\"t\":2}\n",
        )
        .unwrap();
        let mut seen = Vec::new();
        let err = for_each_document(&p, "text", |d| {
            seen.push((d.line, d.text));
            Ok(())
        })
        .unwrap_err();
        assert_eq!(seen, vec![(1, "a".to_string()), (3, String::new())]);
        assert!(
            err.to_string()
                .ends_with("c.jsonl:4: no field \"text\" in this object")
        );

        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, b"{\"text\":\"ok\"}\n{\"text\":\"\xff\"}\n").unwrap();
        let err = for_each_document(&p, "text", |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("byte offset 23"), "{err}");
    }
}
