//! The resume property, across processes: draw N batches in one go; or draw N/2, save the
//! sampler state, restore it in a fresh process and draw N/2 more. Both runs must see the same
//! batches. The fresh process is this test binary re-executed with `MLA_RESUME_CHILD` set,
//! running only `resume_child`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mla_data::{SamplerState, ShardSet, TokenDtype, TrainSampler, write_shard};

const SEQ_LEN: usize = 16;
const BATCH: usize = 4;
const N: usize = 40;
const SEED: u64 = 2024;
const CHILD_ENV: &str = "MLA_RESUME_CHILD";

fn make_shards(dir: &Path) -> ShardSet {
    // Three shards of unequal lengths (one shorter than a window), 40 * 4 windows > one
    // epoch, so the run crosses epoch boundaries.
    for (i, n) in [700u32, 5, 333].into_iter().enumerate() {
        let toks: Vec<u32> = (0..n)
            .map(|t| (t * 7919 + i as u32 * 104729) % 60000)
            .collect();
        write_shard(
            dir.join(format!("train_{i:06}.bin")),
            &toks,
            TokenDtype::U16,
        )
        .unwrap();
    }
    open(dir)
}

fn open(dir: &Path) -> ShardSet {
    ShardSet::open_glob(dir.join("train_*.bin").to_str().unwrap(), Some(60000)).unwrap()
}

#[test]
fn restored_in_a_fresh_process_draws_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let shards = make_shards(dir.path());

    let mut straight = TrainSampler::new(shards.clone(), SEQ_LEN, SEED).unwrap();
    let all: Vec<Vec<Vec<u32>>> = (0..N).map(|_| straight.next_batch(BATCH)).collect();
    assert!(
        straight.state().epoch >= 2,
        "the run should cross epochs: {:?}",
        straight.state()
    );

    let mut first = TrainSampler::new(shards, SEQ_LEN, SEED).unwrap();
    let head: Vec<Vec<Vec<u32>>> = (0..N / 2).map(|_| first.next_batch(BATCH)).collect();
    assert_eq!(head, all[..N / 2]);
    let state_path = dir.path().join("state.json");
    std::fs::write(&state_path, serde_json::to_string(&first.state()).unwrap()).unwrap();
    drop(first);

    let out_path = dir.path().join("tail.json");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child process failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    let tail: Vec<Vec<Vec<u32>>> =
        serde_json::from_str(&std::fs::read_to_string(out_path).unwrap()).unwrap();
    assert_eq!(tail.len(), N / 2);
    assert_eq!(tail, all[N / 2..]);
}

/// Child side of the test above; does nothing unless started by it.
#[test]
fn resume_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let state: SamplerState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let mut s = TrainSampler::restore(open(&dir), SEQ_LEN, state).unwrap();
    let tail: Vec<Vec<Vec<u32>>> = (0..N / 2).map(|_| s.next_batch(BATCH)).collect();
    std::fs::write(dir.join("tail.json"), serde_json::to_string(&tail).unwrap()).unwrap();
}

#[test]
fn state_is_small_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TrainSampler::new(make_shards(dir.path()), SEQ_LEN, SEED).unwrap();
    s.next_batch(3);
    let json = serde_json::to_string(&s.state()).unwrap();
    assert_eq!(
        json,
        r#"{"seed":2024,"epoch":0,"cursor":3,"seq_len":16,"tokens":1038}"#
    );
}
