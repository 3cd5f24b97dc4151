//! Shared helpers: a synthetic corpus turned into real shards with a real tokenizer, and the
//! `mla` binary run on `configs/debug.toml` pointed at them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use mla_data::{PrepareOptions, Tokenizer, TrainOptions, prepare};

pub fn mla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mla"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn debug_config() -> PathBuf {
    repo_root().join("configs/debug.toml")
}

/// Token shards and a tokenizer made from seeded, English-like text.
pub struct Data {
    pub dir: tempfile::TempDir,
    pub train: String,
    pub val: String,
    pub tokenizer: PathBuf,
}

impl Data {
    /// `--set` overrides pointing a config at this data.
    pub fn sets(&self) -> Vec<String> {
        vec![
            format!("data.train={}", self.train),
            format!("data.val={}", self.val),
            format!("data.tokenizer={}", self.tokenizer.display()),
        ]
    }
}

/// Sentences from a small grammar; deterministic for a given seed.
pub fn synthetic_text(seed: u64, sentences: usize) -> String {
    const SUBJ: &[&str] = &[
        "the king",
        "a fool",
        "my lord",
        "the queen",
        "good Horatio",
        "the ghost",
        "our army",
        "this lady",
    ];
    const VERB: &[&str] = &[
        "speaks of",
        "remembers",
        "loves",
        "fears",
        "waits for",
        "betrays",
        "follows",
        "praises",
    ];
    const OBJ: &[&str] = &[
        "the crown",
        "a letter",
        "the night",
        "his father",
        "the sea",
        "sweet music",
        "an old friend",
        "the castle",
    ];
    const END: &[&str] = &[".", "!", "?", ", and then is silent.", " in the morning."];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pick = |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    let mut text = String::new();
    for i in 0..sentences {
        let subj = SUBJ[pick(SUBJ.len())];
        let mut sentence = format!(
            "{} {} {}{}",
            subj,
            VERB[pick(VERB.len())],
            OBJ[pick(OBJ.len())],
            END[pick(END.len())]
        );
        sentence[..1].make_ascii_uppercase();
        text.push_str(&sentence);
        text.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    text
}

/// 24 documents -> tokenizer (vocab 300) -> train/val shards.
pub fn data() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for d in 0..24 {
        std::fs::write(
            corpus.join(format!("doc{d:02}.txt")),
            synthetic_text(d, 400),
        )
        .unwrap();
    }
    let tokenizer = dir.path().join("tokenizer.json");
    Tokenizer::train(
        std::slice::from_ref(&corpus),
        &TrainOptions {
            vocab_size: 300,
            ..Default::default()
        },
    )
    .unwrap()
    .save(&tokenizer)
    .unwrap();
    let shards = dir.path().join("shards");
    let mut opts = PrepareOptions::new(vec![corpus], tokenizer.clone(), shards.clone());
    opts.val_fraction = 0.15;
    prepare(&opts).unwrap();
    Data {
        train: format!("{}/train_*.bin", shards.display()),
        val: format!("{}/val_*.bin", shards.display()),
        tokenizer,
        dir,
    }
}

/// The device the CLI tests train on: `cpu` (flex), or what `MLA_TEST_DEVICE` names
/// (`tch-cpu` in a `--features tch` build; scripts/test.sh does this).
pub fn test_device() -> String {
    std::env::var("MLA_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// `mla train configs/debug.toml --run-dir RUN --set ...` with the data overrides, on the test
/// device.
pub fn train_cmd(data: &Data, run_dir: &Path, extra: &[&str]) -> Command {
    let mut c = mla();
    c.arg("train")
        .arg(debug_config())
        .arg("--run-dir")
        .arg(run_dir);
    let device = format!("train.device={}", test_device());
    let sets = data.sets();
    for s in std::iter::once(device.as_str())
        .chain(sets.iter().map(String::as_str))
        .chain(extra.iter().copied())
    {
        c.arg("--set").arg(s);
    }
    c
}

pub fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(step, loss)` of the train lines, losses as their exact f32 bits.
pub fn train_losses(run_dir: &Path) -> Vec<(u64, u32)> {
    metrics(run_dir)
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                (r["loss"].as_f64().unwrap() as f32).to_bits(),
            )
        })
        .collect()
}

/// Waits until the run has logged a train line at `step` or later; fails if the process ends
/// first or `limit` passes.
pub fn wait_for_step(child: &mut Child, run_dir: &Path, step: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let reached = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|r| r.get("loss").is_some() && r["step"].as_u64() >= Some(step))
            })
            .unwrap_or(false);
        if reached {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before step {step}"
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for step {step}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The step of the run directory's latest valid checkpoint.
pub fn latest_checkpoint_step(run_dir: &Path) -> u64 {
    mla_train::checkpoint::latest(&run_dir.join("checkpoints"))
        .unwrap()
        .unwrap()
        .state
        .step
}
