//! A byte-level BPE tokenizer trained here round-trips any Unicode text, survives save/load
//! with identical ids, and counts added tokens in its vocabulary size.

use std::path::PathBuf;

use mla_data::{EOT, Tokenizer, TrainOptions};

/// A small multilingual corpus: English, CJK, emoji, combining marks, Arabic.
fn corpus(dir: &std::path::Path) -> Vec<PathBuf> {
    let en = "It was the best of times, it was the worst of times, it was the age of wisdom.\n";
    let zh = "天下皆知美之为美，斯恶已。皆知善之为善，斯不善已。\n";
    let ar = "العربية لغة جميلة، وهي من أكثر اللغات انتشاراً في العالم.\n";
    let mixed = "naïve café — 🙂🚀 e\u{301}le\u{300}ve, ﬁne; 日本語のテキスト\n";
    let a = dir.join("a.txt");
    let b = dir.join("b.jsonl");
    std::fs::write(&a, format!("{}{}", en.repeat(40), zh.repeat(20))).unwrap();
    let line = |t: &str| serde_json::json!({ "text": t }).to_string();
    let jsonl: Vec<String> = (0..20).map(|_| line(&format!("{ar}{mixed}"))).collect();
    std::fs::write(&b, jsonl.join("\n")).unwrap();
    vec![a, b]
}

const SAMPLES: &[&str] = &[
    "Hello, world!",
    "  leading spaces and trailing  ",
    "天下皆知美之为美 and 未知の漢字 龘",
    "emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 (ZWJ sequence and flag)",
    "combining: e\u{301} a\u{308}\u{304} ọ\u{302} Z\u{335}\u{321}",
    "Arabic: مرحبا بالعالم، كيف حالك؟",
    "Hebrew, Devanagari, Thai: שלום नमस्ते สวัสดี",
    "control \t tab\r\nCRLF \u{0} nul \u{feff} bom",
    "",
];

#[test]
fn unicode_round_trips_through_a_trained_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let opts = TrainOptions {
        vocab_size: 400,
        ..Default::default()
    };
    let tok = Tokenizer::train(&inputs, &opts).unwrap();
    assert_eq!(tok.eot_id(), Some(0));
    assert!(
        tok.vocab_size() > 300 && tok.vocab_size() <= 400,
        "{}",
        tok.vocab_size()
    );

    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    assert!(!dir.path().join("tokenizer.json.tmp").exists());
    let loaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    assert_eq!(loaded.eot_id(), tok.eot_id());

    for s in SAMPLES {
        let ids = tok.encode(s).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(&tok.decode(&ids).unwrap(), s, "ids {ids:?}");
        assert_eq!(
            loaded.encode(s).unwrap(),
            ids,
            "save/load changed the ids of {s:?}"
        );
    }
    // Learnt merges compress text seen in training.
    let seen = "it was the age of wisdom";
    assert!(tok.encode(seen).unwrap().len() * 3 < seen.len());

    let batch = tok.encode_batch(SAMPLES).unwrap();
    let one_by_one: Vec<Vec<u32>> = SAMPLES.iter().map(|s| tok.encode(s).unwrap()).collect();
    assert_eq!(batch, one_by_one);
}

#[test]
fn special_tokens_are_single_ids() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let opts = TrainOptions {
        vocab_size: 300,
        special_tokens: vec![EOT.into(), "<|pad|>".into()],
        ..Default::default()
    };
    let tok = Tokenizer::train(&inputs, &opts).unwrap();
    assert_eq!(tok.eot_id(), Some(0));
    assert_eq!(tok.token_to_id("<|pad|>"), Some(1));
    let ids = tok.encode("a<|endoftext|>b").unwrap();
    assert!(ids.contains(&0), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "a<|endoftext|>b");
}

#[test]
fn training_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions::default();
    let e = Tokenizer::train(&[dir.path().join("missing*.txt")], &opts).unwrap_err();
    assert!(e.to_string().starts_with("no files match"), "{e}");

    let bad = dir.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9").unwrap();
    let e = Tokenizer::train(std::slice::from_ref(&bad), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latin1.txt: not valid UTF-8 at byte offset 3"),
        "{e}"
    );

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let e = Tokenizer::train(&[empty], &opts).unwrap_err().to_string();
    assert!(e.contains("empty corpus"), "{e}");

    let e = Tokenizer::from_file(dir.path().join("latin1.txt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latin1.txt: tokenizer: not a valid tokenizer.json"),
        "{e}"
    );
}
