//! GPT-2's tokenizer.json, loaded through our wrapper, gives the ids of the published GPT-2
//! (`r50k_base`) test vectors of gpt-tokenizer. Needs `scripts/fetch-data.sh` to have run: the
//! test fails (never skips) without the files.

use std::path::{Path, PathBuf};

use mla_data::Tokenizer;

fn data_file(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("data/gpt2").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-data.sh first",
        path.display()
    );
    path
}

/// `EncodingName: X` / `Sample: text` / `Encoded: [ids]` records separated by blank lines.
fn r50k_cases(plans: &str) -> Vec<(String, Vec<u32>)> {
    let mut cases = Vec::new();
    let mut name = None;
    let mut sample = None;
    for line in plans.lines() {
        if let Some(n) = line.strip_prefix("EncodingName: ") {
            name = Some(n.to_string());
        } else if let Some(s) = line.strip_prefix("Sample: ") {
            sample = Some(s.to_string());
        } else if let Some(e) = line.strip_prefix("Encoded: ") {
            let ids: Vec<u32> = serde_json::from_str(e).expect("Encoded: is a JSON list");
            if name.as_deref() == Some("r50k_base") {
                cases.push((sample.take().expect("Sample: before Encoded:"), ids));
            }
            name = None;
            sample = None;
        }
    }
    cases
}

#[test]
fn gpt2_ids_match_published_vectors() {
    let tok = Tokenizer::from_file(data_file("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.eot_id(), Some(50256));

    let plans = std::fs::read_to_string(data_file("TestPlans.txt")).unwrap();
    let cases = r50k_cases(&plans);
    assert_eq!(
        cases.len(),
        64,
        "expected gpt-tokenizer 4.0.0's 64 r50k_base cases"
    );
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    let batch = tok.encode_batch(&texts).unwrap();
    let mut failures = Vec::new();
    for ((text, want), got) in cases.iter().zip(&batch) {
        if got != want {
            failures.push(format!("{text:?}: want {want:?}, got {got:?}"));
        }
        assert_eq!(
            &tok.encode(text).unwrap(),
            got,
            "batch and single encodes differ"
        );
        assert_eq!(
            &tok.decode(got).unwrap(),
            text,
            "decode does not round-trip"
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_gpt2_classic() {
    let tok = Tokenizer::from_file(data_file("tokenizer.json")).unwrap();
    // From GPT-2's encoder: "Hello world" -> [15496, 995].
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(tok.encode("<|endoftext|>The").unwrap(), vec![50256, 464]);
}
