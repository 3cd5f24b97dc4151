//! The prompts file of `mla generate --prompts`: one prompt per line, or JSONL with a string
//! `prompt` field per line. JSONL is read when the file ends in `.jsonl` or its first
//! non-blank line starts with `{`. Blank lines are skipped in both (a JSONL line
//! `{"prompt": ""}` is an empty prompt: a new document). Every prompt keeps its line number,
//! so that later errors (a prompt too long for the context) can name it.

use std::path::{Path, PathBuf};

/// One prompt and the line (1-based) it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub line: usize,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptsError {
    #[error("reading the prompts file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "the prompts file {path} has no prompts (give one per line, or JSONL with a \"prompt\" field)"
    )]
    Empty { path: PathBuf },
    #[error(
        "{path} line {line}: not a JSON object ({message}); a JSONL prompts file needs {{\"prompt\": \"...\"}} on every line"
    )]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} line {line}: no string field \"prompt\"")]
    NoPrompt { path: PathBuf, line: usize },
}

/// Read the prompts of `path` (see the module docs).
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, PromptsError> {
    let text = std::fs::read_to_string(path).map_err(|e| PromptsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl")
        || text
            .lines()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_start().starts_with('{'));
    parse_prompts(&text, jsonl, path)
}

/// The prompts of `text`, as plain lines or JSONL; `path` only names the file in errors.
pub fn parse_prompts(text: &str, jsonl: bool, path: &Path) -> Result<Vec<Prompt>, PromptsError> {
    let mut prompts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let text = if jsonl {
            let value: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| PromptsError::Json {
                    path: path.to_path_buf(),
                    line,
                    message: e.to_string(),
                })?;
            if !value.is_object() {
                return Err(PromptsError::Json {
                    path: path.to_path_buf(),
                    line,
                    message: "found another JSON value".into(),
                });
            }
            match value.get("prompt").and_then(|p| p.as_str()) {
                Some(p) => p.to_string(),
                None => {
                    return Err(PromptsError::NoPrompt {
                        path: path.to_path_buf(),
                        line,
                    });
                }
            }
        } else {
            raw.to_string()
        };
        prompts.push(Prompt { line, text });
    }
    if prompts.is_empty() {
        return Err(PromptsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, jsonl: bool) -> Result<Vec<Prompt>, PromptsError> {
        parse_prompts(text, jsonl, Path::new("p.txt"))
    }

    #[test]
    fn plain_lines_keep_their_numbers_and_skip_blanks() {
        let p = parse("first\n\n  \nsecond line\n", false).unwrap();
        assert_eq!(
            p,
            [
                Prompt {
                    line: 1,
                    text: "first".into()
                },
                Prompt {
                    line: 4,
                    text: "second line".into()
                }
            ]
        );
    }

    #[test]
    fn jsonl_reads_the_prompt_field() {
        let p = parse(
            "{\"prompt\": \"a\\nb\", \"id\": 3}\n\n{\"prompt\": \"\"}\n",
            true,
        )
        .unwrap();
        assert_eq!(
            p[0],
            Prompt {
                line: 1,
                text: "a\nb".into()
            }
        );
        assert_eq!(
            p[1],
            Prompt {
                line: 3,
                text: String::new()
            }
        );
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let e = parse("\n \n", false).unwrap_err().to_string();
        assert!(e.contains("p.txt has no prompts"), "{e}");
        let e = parse("{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n", true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.txt line 2: not a JSON object"), "{e}");
        let e = parse("{\"text\": \"a\"}\n", true).unwrap_err().to_string();
        assert_eq!(e, "p.txt line 1: no string field \"prompt\"");
        let e = parse("[1, 2]\n", true).unwrap_err().to_string();
        assert!(e.starts_with("p.txt line 1: not a JSON object"), "{e}");
    }
}
