//! `prepare` on small temporary corpora: deterministic document split, EOT before every
//! document, shard caps, replacement of an earlier run's shards, and the input errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mla_data::{EOT, PrepareOptions, ShardSet, Tokenizer, TrainOptions, prepare};

struct Corpus {
    dir: tempfile::TempDir,
    tokenizer: PathBuf,
    docs: Vec<String>,
}

/// 12 text files, one JSONL file with 8 documents (and a blank line), and a tokenizer
/// trained on them.
fn corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    let mut docs = Vec::new();
    for i in 0..12 {
        let text = format!("Document {i}: the quick brown fox jumps over {i} lazy dogs.\n");
        let sub = if i % 2 == 0 { "" } else { "nested/" };
        std::fs::write(src.join(format!("{sub}doc{i:02}.txt")), &text).unwrap();
        docs.push(text);
    }
    let mut lines = Vec::new();
    for i in 0..8 {
        let text = format!("Line document {i} — with ünïcödé and 漢字.");
        lines.push(serde_json::json!({ "id": i, "text": text }).to_string());
        if i == 3 {
            lines.push(String::new());
        }
        docs.push(text);
    }
    std::fs::write(src.join("lines.jsonl"), lines.join("\n") + "\n").unwrap();
    let tok = Tokenizer::train(
        std::slice::from_ref(&src),
        &TrainOptions {
            vocab_size: 320,
            ..Default::default()
        },
    )
    .unwrap();
    let tokenizer = dir.path().join("tok.json");
    tok.save(&tokenizer).unwrap();
    Corpus {
        dir,
        tokenizer,
        docs,
    }
}

impl Corpus {
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn opts(&self, out: &str) -> PrepareOptions {
        PrepareOptions::new(
            vec![self.src()],
            self.tokenizer.clone(),
            self.dir.path().join(out),
        )
    }
}

fn read_split(dir: &Path, prefix: &str) -> Vec<u32> {
    let pattern = dir.join(format!("{prefix}_*.bin"));
    let set = ShardSet::open_glob(pattern.to_str().unwrap(), None).unwrap();
    set.shards()
        .iter()
        .flat_map(|s| s.tokens(0..s.len()))
        .collect()
}

/// Splits a token stream at EOT and decodes each document; checks each starts with EOT.
fn documents(tok: &Tokenizer, tokens: &[u32]) -> Vec<String> {
    let eot = tok.eot_id().unwrap();
    assert_eq!(tokens.first(), Some(&eot), "the stream must start with EOT");
    tokens
        .split(|&t| t == eot)
        .skip(1)
        .map(|d| tok.decode(d).unwrap())
        .collect()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn every_document_lands_once_preceded_by_eot() {
    let c = corpus();
    let opts = c.opts("out");
    let s = prepare(&opts).unwrap();
    let tok = Tokenizer::from_file(&c.tokenizer).unwrap();

    assert_eq!(s.files, 13);
    assert_eq!(s.train_documents + s.val_documents, 20);
    assert_eq!(s.val_documents, 2); // round(20 * 0.1)
    assert_eq!(s.separators, 20);
    assert_eq!(s.bytes, c.docs.iter().map(|d| d.len() as u64).sum::<u64>());
    assert!(s.bytes_per_token() > 1.0 && s.mb_per_s() > 0.0);

    let train = read_split(&opts.out, "train");
    let val = read_split(&opts.out, "val");
    assert_eq!(train.len() as u64, s.train_tokens);
    assert_eq!(val.len() as u64, s.val_tokens);
    let mut got = documents(&tok, &train);
    got.extend(documents(&tok, &val));
    got.sort();
    let mut want = c.docs.clone();
    want.sort();
    assert_eq!(got, want);
    // Only the shards are left in the output folder (no staging or temp files).
    assert_eq!(
        names(&opts.out),
        BTreeSet::from(["train_000000.bin".into(), "val_000000.bin".into()])
    );
}

#[test]
fn split_is_deterministic_and_seeded() {
    let c = corpus();
    let tok = Tokenizer::from_file(&c.tokenizer).unwrap();
    let val_docs = |out: &str, seed: u64| {
        let mut o = c.opts(out);
        o.seed = seed;
        o.val_fraction = 0.25;
        prepare(&o).unwrap();
        let mut d = documents(&tok, &read_split(&o.out, "val"));
        d.sort();
        (d, std::fs::read(o.out.join("train_000000.bin")).unwrap())
    };
    let a = val_docs("a", 1);
    let b = val_docs("b", 1);
    let other = val_docs("c", 2);
    assert_eq!(a.0.len(), 5);
    assert_eq!(a, b, "same seed, same split and bytes");
    assert_ne!(a.0, other.0, "another seed, another split");
}

#[test]
fn shards_are_capped_and_an_earlier_run_is_replaced() {
    let c = corpus();
    let mut opts = c.opts("out");
    opts.shard_tokens = 50;
    opts.val_fraction = 0.0;
    let s = prepare(&opts).unwrap();
    let n = s.train_shards.len();
    assert!(n >= 3, "{n} shards");
    assert_eq!(s.val_documents, 0);
    assert!(s.val_shards.is_empty());
    let set = ShardSet::open_glob(opts.out.join("train_*.bin").to_str().unwrap(), None).unwrap();
    assert!(set.shards()[..n - 1].iter().all(|s| s.len() == 50));
    assert_eq!(set.total_tokens(), s.train_tokens);

    // A user file that only looks similar must survive.
    std::fs::write(opts.out.join("train_notes.bin"), b"mine").unwrap();
    // Rerun with bigger shards: the old numbered shards beyond the new ones disappear.
    opts.shard_tokens = 1_000_000;
    opts.val_fraction = 0.1;
    prepare(&opts).unwrap();
    assert_eq!(
        names(&opts.out),
        BTreeSet::from([
            "train_000000.bin".into(),
            "train_notes.bin".into(),
            "val_000000.bin".into()
        ])
    );
}

#[test]
fn without_eot_documents_are_concatenated() {
    let c = corpus();
    let mut opts = c.opts("out");
    opts.eot = false;
    opts.val_fraction = 0.0;
    let s = prepare(&opts).unwrap();
    assert_eq!(s.separators, 0);
    let tok = Tokenizer::from_file(&c.tokenizer).unwrap();
    let train = read_split(&opts.out, "train");
    assert!(!train.contains(&tok.eot_id().unwrap()));
}

#[test]
fn non_utf8_is_reported_with_file_and_offset() {
    let c = corpus();
    let bad = c.src().join("nested/latin1.txt");
    std::fs::write(&bad, b"Caf\xe9 au lait").unwrap();
    let e = prepare(&c.opts("out")).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: not valid UTF-8 at byte offset 3 (convert the file to UTF-8 first)",
            bad.display()
        )
    );
    assert!(!c.dir.path().join("out").exists() || names(&c.dir.path().join("out")).is_empty());
}

#[test]
fn bad_jsonl_line_is_reported_with_its_number() {
    let c = corpus();
    let bad = c.src().join("more.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": \"oops\"\n").unwrap();
    let e = prepare(&c.opts("out")).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2: invalid JSON", bad.display())),
        "{e}"
    );

    std::fs::write(&bad, "{\"body\": \"x\"}\n").unwrap();
    let e = prepare(&c.opts("out")).unwrap_err().to_string();
    assert!(
        e.ends_with("more.jsonl:1: no field \"text\" in this object"),
        "{e}"
    );

    // The field name is an option.
    let mut o = c.opts("out");
    o.text_field = "body".into();
    o.inputs = vec![bad.clone()];
    let s = prepare(&o).unwrap();
    assert_eq!(s.train_documents + s.val_documents, 1);
}

#[test]
fn empty_corpus_is_an_error() {
    let c = corpus();
    let empty = c.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), "").unwrap();
    std::fs::write(empty.join("b.jsonl"), "{\"text\": \"\"}\n\n").unwrap();
    let mut o = c.opts("out");
    o.inputs = vec![empty.clone()];
    let e = prepare(&o).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("empty corpus: no non-empty document in {}", empty.display())
    );

    o.inputs = vec![c.dir.path().join("nowhere/*.txt")];
    let e = prepare(&o).unwrap_err().to_string();
    assert!(e.starts_with("no files match"), "{e}");
}

#[test]
fn a_tokenizer_without_eot_needs_no_eot() {
    let c = corpus();
    let tok = Tokenizer::train(
        &[c.src()],
        &TrainOptions {
            vocab_size: 300,
            special_tokens: vec![],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(tok.eot_id(), None);
    let path = c.dir.path().join("no_eot.json");
    tok.save(&path).unwrap();
    let mut o = c.opts("out");
    o.tokenizer = path.clone();
    let e = prepare(&o).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(
        e.contains(&format!("has no {EOT} token")) && e.contains("--no-eot"),
        "{e}"
    );
    o.eot = false;
    assert!(prepare(&o).is_ok());
}

#[test]
fn options_are_checked() {
    let c = corpus();
    let mut o = c.opts("out");
    o.val_fraction = 1.0;
    assert!(
        prepare(&o)
            .unwrap_err()
            .to_string()
            .contains("val fraction 1")
    );
    o.val_fraction = 0.1;
    o.shard_tokens = 0;
    assert!(
        prepare(&o)
            .unwrap_err()
            .to_string()
            .contains("shard tokens 0")
    );
}
