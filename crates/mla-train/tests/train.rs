//! The `mla` training CLI end to end on configs/debug.toml: outputs, exact resume after
//! SIGKILL and Ctrl-C, checkpoint survival, fine-tuning, config errors, NaN handling,
//! TensorBoard read-back.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    data, latest_checkpoint_step, metrics, mla, run_ok, train_cmd, train_losses, wait_for_step,
};
use mla_train::RunConfig;

/// How long a test waits for a run to reach a step.
const STEP_WAIT: Duration = Duration::from_secs(120);

fn val_losses(run_dir: &Path) -> Vec<(u64, u32)> {
    metrics(run_dir)
        .iter()
        .filter(|r| r.get("val_loss").is_some())
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                (r["val_loss"].as_f64().unwrap() as f32).to_bits(),
            )
        })
        .collect()
}

/// Read every scalar of the TensorBoard event files under `dir` with the TFRecord framing
/// (u64 length, u32 crc, payload, u32 crc) and tensorboard's `Event` protobuf.
fn tensorboard_scalars(dir: &Path) -> Vec<(String, i64, f32)> {
    use protobuf::Message;
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let payload = &bytes[at + 12..at + 12 + len];
            at += 12 + len + 4;
            let event = tensorboard_proto::event::Event::parse_from_bytes(payload).unwrap();
            for v in event.get_summary().get_value() {
                out.push((
                    v.get_tag().to_string(),
                    event.get_step(),
                    v.get_simple_value(),
                ));
            }
        }
    }
    out
}

#[test]
fn debug_run_end_to_end() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_ok(train_cmd(&data, &run, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done") && stdout.contains("val loss"),
        "{stdout}"
    );
    // The expected duration is said once, early (after the first step and five timed ones).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains("expected:")).collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("more (24 steps at") && said[0].contains("with evaluations"),
        "{}",
        said[0]
    );
    let before: Vec<&str> = stderr
        .lines()
        .take_while(|l| !l.contains("expected:"))
        .collect();
    assert!(
        before.iter().any(|l| l.starts_with("step      6 |")),
        "said after step 6: {stderr}"
    );

    // The resolved config is saved and takes its vocabulary from the tokenizer.
    let cfg = RunConfig::from_resolved_file(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.model.vocab_size, 300);
    assert_eq!(cfg.grad_accum(), 2);

    // metrics.jsonl: a train line per step with every field, eval lines every 10 steps.
    let m = metrics(&run);
    let train: Vec<_> = m.iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(train.len(), 30);
    for (i, r) in train.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        assert_eq!(r["tokens"], (i as u64 + 1) * 8 * 64);
        for k in ["lr", "grad_norm", "tokens_per_s", "elapsed_s"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
    }
    let evals: Vec<u64> = val_losses(&run).iter().map(|(s, _)| *s).collect();
    assert_eq!(evals, vec![10, 20, 30]);
    let first = train[0]["loss"].as_f64().unwrap();
    let last = train[29]["loss"].as_f64().unwrap();
    assert!((first - 300f64.ln()).abs() < 0.3, "initial loss {first}");
    assert!(last < first - 1.0, "loss {first} -> {last}");

    // Checkpoints every 5 steps, the last 3 kept; summary.json written.
    let mut ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ckpts.sort();
    assert_eq!(ckpts, vec!["step_20", "step_25", "step_30"]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 30);

    // TensorBoard holds the same losses, read back from the event files.
    let tb = tensorboard_scalars(&run.join("tb"));
    let tb_loss: Vec<(u64, u32)> = tb
        .iter()
        .filter(|(tag, _, _)| tag == "train/loss")
        .map(|(_, step, v)| (*step as u64, v.to_bits()))
        .collect();
    assert_eq!(tb_loss, train_losses(&run));
    assert_eq!(tb.iter().filter(|(t, _, _)| t == "val/loss").count(), 3);

    // `mla eval` on the same windows reproduces the final validation loss exactly.
    let out = run_ok({
        let mut c = mla();
        c.args([
            "eval",
            run.to_str().unwrap(),
            "--data",
            &data.val,
            "--batches",
            "4",
            "--json",
        ]);
        c.args(["--device", &common::test_device()]);
        c
    });
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let final_val = f32::from_bits(val_losses(&run).last().unwrap().1);
    assert_eq!(e["loss"].as_f64().unwrap() as f32, final_val);
    assert_eq!(e["step"], 30);
}

/// A run killed with SIGKILL and resumed logs exactly the losses of an uninterrupted run.
#[test]
fn resume_after_sigkill_is_bit_exact() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["train.max_steps=40", "checkpoint.every=10"];
    let whole = tmp.path().join("whole");
    run_ok(train_cmd(&data, &whole, &sets));

    let cut = tmp.path().join("cut");
    let mut child = train_cmd(&data, &cut, &sets)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut child, &cut, 14, STEP_WAIT);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was not killed");
    let resumed_from = latest_checkpoint_step(&cut);
    assert!(
        (10..40).contains(&resumed_from),
        "checkpoint at {resumed_from}"
    );
    let logged: u64 = train_losses(&cut).last().unwrap().0;
    assert!(
        logged > resumed_from,
        "some steps must be redone ({logged} vs {resumed_from})"
    );

    let mut resume = train_cmd(&data, &cut, &sets);
    resume.arg("--resume");
    let out = run_ok(resume);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    assert_eq!(train_losses(&cut), train_losses(&whole));
    assert_eq!(val_losses(&cut), val_losses(&whole));
}

/// Ctrl-C (SIGINT) and a plain `kill` (SIGTERM) both save a checkpoint at the current step
/// and exit with 128 + the signal and one line saying so; --resume finishes the run exactly as
/// an uninterrupted one.
#[test]
fn sigint_and_sigterm_checkpoint_and_resume_continues() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["train.max_steps=40", "checkpoint.every=100"];
    let whole = tmp.path().join("whole");
    run_ok(train_cmd(&data, &whole, &sets));

    for (signal, code, name) in [("-INT", 130, "SIGINT"), ("-TERM", 143, "SIGTERM")] {
        let cut = tmp.path().join(format!("cut{signal}"));
        let mut child = train_cmd(&data, &cut, &sets)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_step(&mut child, &cut, 6, STEP_WAIT);
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted"));
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("stopped by {name}")) && last.contains("--resume"),
            "{err}"
        );
        let saved = latest_checkpoint_step(&cut);
        assert_eq!(
            saved,
            train_losses(&cut).last().unwrap().0,
            "checkpoint at the last step"
        );
        assert!(saved < 40);

        let mut resume = train_cmd(&data, &cut, &sets);
        resume.arg("--resume").arg(&cut);
        run_ok(resume);
        assert_eq!(train_losses(&cut), train_losses(&whole), "{name}");
    }
}

/// `--resume auto` starts a run where there is no checkpoint and continues one where there is:
/// one command for the first start and every restart.
#[test]
fn resume_auto_starts_or_continues() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(train_cmd(&data, &whole, &["train.max_steps=12"]));
    let run = tmp.path().join("auto");
    let auto = || {
        let mut c = train_cmd(&data, &run, &["train.max_steps=12"]);
        c.args(["--resume", "auto"]);
        c
    };
    // The first start, stopped early; then the same command continues it.
    let mut child = auto()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut child, &run, 4, STEP_WAIT);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let out = run_ok(auto());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    assert_eq!(train_losses(&run), train_losses(&whole));
}

/// One writer per run directory: a second `mla train` on a live run is refused, and the first
/// run's files are unchanged by it.
#[test]
fn a_second_writer_on_a_live_run_is_refused() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = [
        "train.max_steps=100000",
        "checkpoint.every=100000",
        "eval.every=0",
    ];
    let mut first = train_cmd(&data, &run, &sets)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut first, &run, 2, STEP_WAIT);
    let config_before = std::fs::read(run.join("config.toml")).unwrap();
    for resume in [None, Some("auto")] {
        let mut second = train_cmd(&data, &run, &sets);
        if let Some(r) = resume {
            second.args(["--resume", r]);
        }
        let out = second.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is in use by another mla process"), "{err}");
        assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    }
    assert_eq!(
        std::fs::read(run.join("config.toml")).unwrap(),
        config_before
    );
    Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(130));
    // The first run's log is whole: every step once, in order, up to its checkpoint.
    let steps: Vec<u64> = train_losses(&run).iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=steps.len() as u64).collect();
    assert_eq!(steps, expected);
    assert_eq!(latest_checkpoint_step(&run), *steps.last().unwrap());
}

/// `--set model.attention=mha` on an MLA recipe trains MHA: the MLA-only keys are set aside
/// with one line naming them, and a misspelt key is still an error.
#[test]
fn switching_attention_sets_aside_the_other_types_keys() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("mha");
    let out = run_ok(train_cmd(
        &data,
        &run,
        &[
            "model.attention=mha",
            "train.max_steps=2",
            "schedule.warmup_steps=0",
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("model: ignoring"))
        .collect();
    assert_eq!(
        notes,
        [
            "model: ignoring q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, \
             v_head_dim (not used with attention = \"mha\")"
        ],
        "{err}"
    );
    let cfg = RunConfig::from_resolved_file(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.model.kind().to_string(), "mha");
    let out = train_cmd(&data, &tmp.path().join("typo"), &["model.q_lora_rnk=3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `q_lora_rnk`"));
}

/// A crash while writing the newest checkpoint leaves the previous one usable.
#[test]
fn a_half_written_checkpoint_is_skipped() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(train_cmd(&data, &whole, &[]));
    let broken = tmp.path().join("broken");
    run_ok(train_cmd(&data, &broken, &[]));
    // Simulate a crash mid-write of step 30: a temp dir, and a step dir with no state.json.
    let ckpts = broken.join("checkpoints");
    std::fs::create_dir_all(ckpts.join(".tmp-step_30-999999")).unwrap();
    std::fs::remove_file(ckpts.join("step_30/state.json")).unwrap();
    assert_eq!(latest_checkpoint_step(&broken), 25);
    let mut resume = train_cmd(&data, &broken, &[]);
    resume.arg("--resume");
    run_ok(resume);
    assert_eq!(train_losses(&broken), train_losses(&whole));
    assert!(
        !ckpts.join(".tmp-step_30-999999").exists(),
        "leftovers are cleaned up"
    );
}

#[test]
fn finetune_starts_from_the_weights_and_checks_the_architecture() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    run_ok(train_cmd(&data, &base, &[]));
    let base_last = f32::from_bits(train_losses(&base).last().unwrap().1);

    let ft = tmp.path().join("ft");
    let mut c = mla();
    c.args([
        "finetune",
        common::debug_config().to_str().unwrap(),
        "--from",
    ])
    .arg(&base)
    .arg("--run-dir")
    .arg(&ft);
    for s in data.sets() {
        c.arg("--set").arg(s);
    }
    c.arg("--set")
        .arg(format!("train.device={}", common::test_device()));
    for s in [
        "train.max_steps=3",
        "optim.lr=1e-4",
        "schedule.min_lr=1e-5",
        "schedule.warmup_steps=0",
    ] {
        c.arg("--set").arg(s);
    }
    run_ok(c);
    let first = f32::from_bits(train_losses(&ft)[0].1);
    // Fresh weights start at ~ln(300) = 5.7; the fine-tune starts where the base ended.
    assert!(
        (first - base_last).abs() < 0.5,
        "fine-tune starts at {first}, base ended at {base_last}"
    );
    let cfg = RunConfig::from_resolved_file(&ft.join("config.toml")).unwrap();
    assert_eq!(
        cfg.checkpoint.init_from.as_deref(),
        Some(base.to_str().unwrap())
    );

    // A different architecture is refused, naming the fields.
    let bad = tmp.path().join("bad");
    let mut c = train_cmd(&data, &bad, &["model.n_layers=3", "model.d_ff=96"]);
    c.arg("--set")
        .arg(format!("checkpoint.init_from={}", base.display()));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("n_layers: 2 vs 3") && err.contains("d_ff: 160 vs 96"),
        "{err}"
    );
}

#[test]
fn config_errors_are_one_clear_line() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Without libtorch compiled in, CUDA needs another build; with it, there is no GPU here.
    let cuda_needle = if common::test_device() == "cpu" {
        "--features mla-train/tch"
    } else {
        "CUDA device"
    };
    let cases: &[(&[&str], &str)] = &[
        (&["train.micro_bach=3"], "unknown field `micro_bach`"),
        (&["train.global_batch=6"], "train.global_batch"),
        (&["optim.lr=-1"], "optim.lr"),
        (&["model.vocab_size=10"], "smaller than the tokenizer"),
        (&["train.device=cuda:7"], cuda_needle),
        (&["data.train=/nonexistent/*.bin"], "/nonexistent/*.bin"),
    ];
    for (sets, needle) in cases {
        let out = train_cmd(&data, &run, sets).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sets:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{sets:?}: {err}");
        // Inputs are checked before anything is written: no run directory, no config.toml.
        assert!(!run.exists(), "{sets:?} left {}", run.display());
    }
    // A missing file: one line naming it, with the OS's reason said once.
    let out = mla().args(["train", "/nonexistent.toml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // A finished run is never overwritten by a fresh one.
    let short = ["train.max_steps=2", "schedule.warmup_steps=0"];
    run_ok(train_cmd(&data, &run, &short));
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let out = train_cmd(&data, &run, &short).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train_cmd(
        &data,
        &run,
        &[
            "optim.lr=1e30",
            "schedule.warmup_steps=0",
            "checkpoint.every=1",
            "optim.grad_clip=0",
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let step = train_losses(&run).len() as u64 + 1;
    assert!(err.contains(&format!("at step {step}")), "{err}");
    assert!(err.contains(&format!("step_{}", step - 1)), "{err}");
    assert_eq!(latest_checkpoint_step(&run), step - 1);
}

/// bf16 compute with f32 master weights tracks f32 training on the debug config: every logged
/// loss within 0.05 nats, the final validation loss within 0.02.
#[test]
fn bf16_training_tracks_f32() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let (f32_run, bf16_run) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    run_ok(train_cmd(&data, &f32_run, &[]));
    run_ok(train_cmd(&data, &bf16_run, &["train.dtype=\"bf16\""]));
    let (a, b) = (train_losses(&f32_run), train_losses(&bf16_run));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|((_, x), (_, y))| (f32::from_bits(*x) - f32::from_bits(*y)).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 0.05, "bf16 loss differs from f32 by up to {worst}");
    assert_ne!(a, b, "bf16 must actually compute in bf16");
    let (va, vb) = (val_losses(&f32_run), val_losses(&bf16_run));
    let dv = (f32::from_bits(va.last().unwrap().1) - f32::from_bits(vb.last().unwrap().1)).abs();
    assert!(dv <= 0.02, "final val loss differs by {dv}");
}
