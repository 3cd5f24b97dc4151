//! Data-parallel training on gloo, 2 processes on this machine, launched by torchrun (and by
//! hand, as a SLURM script without torchrun would): exactness against gradient accumulation,
//! a rank killed mid-run, SIGTERM to one rank, resume with another world size, ranks with
//! different configs. Needs the `tch` feature and the venv of scripts/setup-libtorch.sh (its
//! torchrun).
#![cfg(feature = "tch")]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use common::{
    Data, data, debug_config, latest_checkpoint_step, metrics, mla, repo_root, run_ok,
    train_losses, wait_for_step,
};
use mla_train::RunConfig;
use mla_train::checkpoint::Checkpoint;

const STEPS: &str = "train.max_steps=16";
/// How long a test waits for a run to reach a step (two processes share the cores).
const STEP_WAIT: Duration = Duration::from_secs(180);

fn torchrun_bin() -> PathBuf {
    std::env::var_os("MLA_TORCHRUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/torchrun"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mla train` arguments on the debug config, on libtorch's CPU device.
fn train_args(data: &Data, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        debug_config().display().to_string(),
        "--run-dir".into(),
        run_dir.display().to_string(),
    ];
    let sets = data.sets();
    // `--flag value` pairs pass through; anything else is a `--set`.
    let mut raw = false;
    for s in ["train.device=tch-cpu", STEPS, "checkpoint.every=4"]
        .into_iter()
        .map(String::from)
        .chain(sets)
        .chain(extra.iter().map(|s| s.to_string()))
    {
        if raw || s.starts_with("--") {
            raw = s.starts_with("--");
            args.push(s);
        } else {
            args.push("--set".into());
            args.push(s);
        }
    }
    args
}

/// One process (no torchrun), one thread, so its arithmetic matches a rank's.
fn single(data: &Data, run_dir: &Path, extra: &[&str]) -> Command {
    let mut c = mla();
    c.args(train_args(data, run_dir, extra))
        .env("OMP_NUM_THREADS", "1");
    c
}

/// `torchrun --nproc-per-node 2 --no-python mla train ...`.
fn torchrun(data: &Data, run_dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(torchrun_bin());
    c.args([
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        &free_port().to_string(),
        "--no-python",
    ])
    .arg(env!("CARGO_BIN_EXE_mla"))
    .args(train_args(data, run_dir, extra));
    c
}

/// Rank `rank` of 2 started by hand with the variables torchrun would set (rank 0 hosts the
/// store, as without torchrun's agent).
fn by_hand(data: &Data, run_dir: &Path, rank: usize, port: u16, extra: &[&str]) -> Command {
    let mut c = mla();
    c.args(train_args(data, run_dir, extra))
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE");
    c
}

/// Waits for a child at most `limit`; kills it and fails the test if it is still running.
fn wait_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The pids of torchrun's workers with their RANK.
fn workers(torchrun: u32) -> Vec<(usize, u32)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("pgrep")
            .args(["-P", &torchrun.to_string()])
            .output()
            .unwrap();
        let mut found = vec![];
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            for var in env.split(|&b| b == 0) {
                if let Some(r) = var.strip_prefix(b"RANK=") {
                    found.push((String::from_utf8_lossy(r).parse().unwrap(), pid));
                }
            }
        }
        if found.len() == 2 {
            found.sort();
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "torchrun's workers did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(signal: &str, pid: u32) {
    assert!(
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Every weight of the run's latest checkpoint, as exact bits.
fn weights(run_dir: &Path) -> Vec<u32> {
    struct All(Vec<u32>);
    impl ModuleVisitor for All {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().try_into_vec::<f32>().unwrap();
            self.0.extend(v.iter().map(|x| x.to_bits()));
        }
    }
    let cfg = RunConfig::from_resolved_file(&run_dir.join("config.toml")).unwrap();
    let dir = mla_train::checkpoint::latest(&run_dir.join("checkpoints"))
        .unwrap()
        .unwrap()
        .dir;
    let model = Checkpoint::open(&dir)
        .unwrap()
        .load_model(&cfg.model, &Device::flex())
        .unwrap();
    let mut all = All(vec![]);
    model.visit(&mut all);
    all.0
}

fn val_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    metrics(run_dir)
        .iter()
        .filter(|r| r.get("val_loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["val_loss"].as_f64().unwrap()))
        .collect()
}

/// 2 ranks x micro-batch 4 train exactly as 1 rank x micro-batch 4 with 2 micro-batches of
/// accumulation (the debug config's global batch of 8): the same losses and weights, bit for
/// bit. Only rank 0 writes; the validation loss, split over the ranks, agrees to rounding.
#[test]
fn two_ranks_train_exactly_as_one_with_accumulation() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    run_ok(single(&data, &one, &[]));
    let two = tmp.path().join("two");
    let out = run_ok(torchrun(&data, &two, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data parallel: 2 ranks x micro_batch 4 x accumulation 1 = global batch 8"),
        "{err}"
    );
    // One summary: rank 1 prints none.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("run directory")
            .count(),
        1
    );

    assert_eq!(train_losses(&two), train_losses(&one));
    assert_eq!(weights(&two), weights(&one));
    let (v1, v2) = (val_losses(&one), val_losses(&two));
    assert_eq!(v1.len(), v2.len());
    for ((s1, a), (s2, b)) in v1.iter().zip(&v2) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() < 1e-5 * a.abs(), "step {s1}: {a} vs {b}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["world_size"], 2);
    assert!(summary["peak_memory_bytes"].as_u64().unwrap() > 0);
}

/// A rank killed with SIGKILL: the other stops within a bounded time with an error naming
/// the failed collective (never a hang), and the last complete checkpoint is valid: resuming
/// with 2 ranks, and separately with 1, logs the losses of an uninterrupted run.
#[test]
fn a_killed_rank_stops_the_other_and_any_world_size_resumes() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(single(&data, &whole, &[]));

    let cut = tmp.path().join("cut");
    let port = free_port();
    let mut rank0 = by_hand(&data, &cut, 0, port, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rank1 = by_hand(&data, &cut, 1, port, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut rank0, &cut, 6, STEP_WAIT);
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let out = wait_within(rank0, Duration::from_secs(60), "rank 0 after its peer died");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: rank 0: ") && last.contains("failed"),
        "{err}"
    );
    let saved = latest_checkpoint_step(&cut);
    assert!((4..16).contains(&saved), "checkpoint at step {saved}");

    // Copy the cut run, to resume it once per world size.
    let cut1 = tmp.path().join("cut1");
    copy_dir(&cut, &cut1);
    run_ok(torchrun(&data, &cut, &["--resume", "auto"]));
    assert_eq!(
        train_losses(&cut),
        train_losses(&whole),
        "resumed on 2 ranks"
    );
    let out = run_ok(single(&data, &cut1, &["--resume", "auto"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    assert_eq!(
        train_losses(&cut1),
        train_losses(&whole),
        "resumed on 1 rank"
    );
}

/// SIGTERM to one rank only (as a preempted node would get it): all ranks stop after the
/// step, rank 0 checkpoints it, every rank exits non-zero, and the run resumes exactly.
#[test]
fn sigterm_to_one_rank_stops_all_with_a_checkpoint() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(single(&data, &whole, &[]));
    let cut = tmp.path().join("cut");
    let mut run = torchrun(&data, &cut, &["train.max_steps=16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranks = workers(run.id());
    wait_for_step(&mut run, &cut, 5, STEP_WAIT);
    kill("-TERM", ranks[1].1);
    let out = wait_within(run, Duration::from_secs(120), "torchrun after SIGTERM");
    assert!(!out.status.success(), "torchrun reports the stop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped by SIGTERM at step"), "{err}");
    assert!(
        err.contains("stopped by another rank's stop request at step"),
        "{err}"
    );
    let saved = latest_checkpoint_step(&cut);
    assert_eq!(
        saved,
        train_losses(&cut).last().unwrap().0,
        "checkpoint at the last step"
    );
    assert!(saved < 16);
    run_ok(torchrun(&data, &cut, &["--resume", "auto"]));
    assert_eq!(train_losses(&cut), train_losses(&whole));
}

/// `torchrun --max-restarts 1` with `--resume auto`: a rank killed mid-run makes torchrun
/// restart the group (on its c10d rendezvous, whose store outlives the first attempt), which
/// continues from the last complete checkpoint without any change to the command, and ends
/// with the losses of an uninterrupted run.
#[test]
fn a_restarted_group_resumes_by_itself() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(single(&data, &whole, &[]));
    let run = tmp.path().join("restarted");
    let mut c = Command::new(torchrun_bin());
    c.args([
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        &format!("127.0.0.1:{}", free_port()),
        "--max-restarts",
        "1",
        "--no-python",
    ])
    .arg(env!("CARGO_BIN_EXE_mla"))
    .args(train_args(&data, &run, &["--resume", "auto"]));
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranks = workers(child.id());
    wait_for_step(&mut child, &run, 6, STEP_WAIT);
    kill("-KILL", ranks[1].1);
    let out = wait_within(
        child,
        Duration::from_secs(180),
        "torchrun restarting the group",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(train_losses(&run), train_losses(&whole));
}

/// Ranks started with different configs refuse to train, before anything is written.
#[test]
fn ranks_with_different_configs_refuse_to_start() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let port = free_port();
    let spawn = |rank: usize, extra: &[&str]| {
        by_hand(&data, &run, rank, port, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let r0 = spawn(0, &[]);
    let r1 = spawn(1, &["optim.lr=1e-3"]);
    for (rank, child) in [(0, r0), (1, r1)] {
        let out = wait_within(child, Duration::from_secs(60), "a rank with another config");
        assert_eq!(out.status.code(), Some(1), "rank {rank}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("rank(s) 1 hold a different resolved config from rank 0's"),
            "rank {rank}: {err}"
        );
        if rank == 1 {
            assert!(
                err.contains("[optim] `lr = 0.001` vs rank 0's `lr = 0.003`"),
                "{err}"
            );
        }
    }
    assert!(!run.exists(), "nothing is written");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
