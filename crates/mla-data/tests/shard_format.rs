//! llm.c `.bin` shards: round trips in both dtypes, byte-exact headers, and header errors
//! that name the file.

use std::path::Path;

use mla_data::shard::{HEADER_BYTES, MAGIC_U16, MAGIC_U32};
use mla_data::{Shard, ShardSet, TokenDtype, write_shard};

fn header(magic: i32, version: i32, count: i32) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&count.to_le_bytes());
    h
}

fn open_err(path: &Path) -> String {
    let e = Shard::open(path).expect_err("should fail").to_string();
    assert!(
        e.starts_with(&path.display().to_string()),
        "error does not name the file: {e}"
    );
    e
}

#[test]
fn u16_round_trip_is_byte_exact_llm_c() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("val_000000.bin");
    let toks: Vec<u32> = vec![50256, 0, 1, 65535, 464, 3290];
    write_shard(&p, &toks, TokenDtype::U16).unwrap();

    // What llm.c's fineweb.py writes for the same tokens.
    let mut want = header(20240520, 1, toks.len() as i32);
    for &t in &toks {
        want.extend_from_slice(&(t as u16).to_le_bytes());
    }
    assert_eq!(std::fs::read(&p).unwrap(), want);

    let s = Shard::open(&p).unwrap();
    assert_eq!(s.dtype(), TokenDtype::U16);
    assert_eq!(s.len(), toks.len());
    assert_eq!(s.tokens(0..toks.len()), toks);
    assert!(!p.with_extension("bin.tmp").exists());
}

#[test]
fn u32_round_trip_keeps_ids_above_65535() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train_000000.bin");
    let toks: Vec<u32> = vec![128000, 65536, 7, 128255, 0, 4_000_000_000];
    write_shard(&p, &toks, TokenDtype::U32).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..12], &header(20240801, 7, 6)[..12]);
    assert_eq!(bytes.len(), HEADER_BYTES + 4 * toks.len());
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.dtype(), TokenDtype::U32);
    assert_eq!(s.tokens(0..6), toks);
    assert_eq!(s.tokens(2..4), vec![7, 128255]);
}

#[test]
fn empty_shard_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.bin");
    write_shard(&p, &[], TokenDtype::U16).unwrap();
    let s = Shard::open(&p).unwrap();
    assert!(s.is_empty());
}

#[test]
fn bad_magic_names_file_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad_magic.bin");
    let mut b = header(12345, 1, 0);
    std::fs::write(&p, &b).unwrap();
    let e = open_err(&p);
    assert!(e.contains("bad magic 12345"), "{e}");
    assert!(e.contains("20240520") && e.contains("20240801"), "{e}");

    // A big-endian header is a common way to get this wrong.
    b[0..4].copy_from_slice(&MAGIC_U16.to_be_bytes());
    std::fs::write(&p, &b).unwrap();
    assert!(open_err(&p).contains("bad magic"));
}

#[test]
fn bad_version_names_file_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad_version.bin");
    std::fs::write(&p, header(MAGIC_U16, 7, 0)).unwrap();
    let e = open_err(&p);
    assert!(
        e.contains("magic 20240520 needs version 1, found version 7"),
        "{e}"
    );
    std::fs::write(&p, header(MAGIC_U32, 1, 0)).unwrap();
    let e = open_err(&p);
    assert!(e.contains("needs version 7, found version 1"), "{e}");
}

#[test]
fn truncated_shards() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.bin");
    let mut b = header(MAGIC_U16, 1, 10);
    b.extend_from_slice(&[0u8; 18]); // 9 tokens of 10
    std::fs::write(&p, &b).unwrap();
    let e = open_err(&p);
    assert!(
        e.ends_with("truncated: expected 1044 bytes, found 1042"),
        "{e}"
    );

    std::fs::write(&p, &b[..100]).unwrap();
    let e = open_err(&p);
    assert!(
        e.ends_with("truncated: expected 1024 bytes, found 100"),
        "{e}"
    );

    std::fs::write(&p, b"").unwrap();
    assert!(open_err(&p).contains("truncated"));
}

#[test]
fn too_long_shard() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long.bin");
    let mut b = header(MAGIC_U32, 7, 2);
    b.extend_from_slice(&[0u8; 12]); // 3 tokens, header says 2
    std::fs::write(&p, &b).unwrap();
    let e = open_err(&p);
    assert!(e.contains("too long: expected 1032 bytes"), "{e}");
    assert!(e.contains("found 1036"), "{e}");
}

#[test]
fn negative_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("neg.bin");
    std::fs::write(&p, header(MAGIC_U16, 1, -5)).unwrap();
    assert!(open_err(&p).contains("negative token count -5"));
}

#[test]
fn missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("absent.bin");
    open_err(&p);
}

#[test]
fn ids_at_or_above_vocab_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train_000000.bin");
    write_shard(&p, &[1, 2, 50256, 50257, 3], TokenDtype::U16).unwrap();
    let s = Shard::open(&p).unwrap();
    assert!(s.check_vocab(50258).is_ok());
    let e = s.check_vocab(50257).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    assert!(
        e.contains("token 3 has id 50257, not below the vocabulary size 50257"),
        "{e}"
    );

    // The same check through a glob.
    let pattern = dir.path().join("train_*.bin");
    let e = ShardSet::open_glob(pattern.to_str().unwrap(), Some(50257))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train_000000.bin") && e.contains("id 50257"),
        "{e}"
    );
}

#[test]
fn glob_sorts_and_reports_no_match() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["train_000002.bin", "train_000000.bin", "train_000001.bin"]
        .iter()
        .enumerate()
    {
        write_shard(dir.path().join(name), &[i as u32; 3], TokenDtype::U16).unwrap();
    }
    let pattern = dir.path().join("train_*.bin");
    let set = ShardSet::open_glob(pattern.to_str().unwrap(), Some(10)).unwrap();
    let names: Vec<_> = set
        .shards()
        .iter()
        .map(|s| s.path().file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    );
    assert_eq!(set.total_tokens(), 9);

    let none = dir.path().join("val_*.bin");
    let e = ShardSet::open_glob(none.to_str().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("no files match {}", none.display()));
}
