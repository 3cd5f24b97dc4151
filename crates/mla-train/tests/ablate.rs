//! `mla ablate`: arms derived from a base config (attention keys, parameter counts matched
//! within half a step of what is adjusted, the change said in words), the run plan, and an
//! end-to-end ablation on the debug config that skips finished runs and resumes half-done
//! ones when invoked again.

mod common;

use std::path::Path;

use common::{data, debug_config, mla, repo_root, run_ok};
use mla_model::accounting::param_counts;
use mla_model::{AttentionConfig, AttentionKind, ModelConfig};
use mla_train::ablate::{self, AblationSpec, MatchParams, RunState};
use mla_train::config::{self, RunConfig};

fn load(path: &Path, sets: &[&str]) -> RunConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    config::load(path, &sets, &|_| Ok(4096)).unwrap()
}

fn shakespeare() -> RunConfig {
    load(&repo_root().join("configs/ablation-shakespeare.toml"), &[])
}

fn spec(arms: &[AttentionKind], match_params: MatchParams) -> AblationSpec {
    AblationSpec {
        arms: arms.to_vec(),
        seeds: 1,
        match_params,
        gqa_kv_heads: None,
    }
}

use AttentionKind::{Gqa, Mha, Mla, Mqa};

fn standard(m: &ModelConfig) -> (AttentionKind, usize, usize) {
    match m.attention {
        AttentionConfig::Standard(s) => (s.kind, s.n_kv_heads, s.head_dim),
        AttentionConfig::Latent(_) => panic!("not a standard-attention model"),
    }
}

#[test]
fn each_arm_gets_its_attention_and_the_reference_parameter_count() {
    let base = shakespeare();
    let b = &base.model;
    let arms = ablate::derive_arms(b, &spec(&[Mla, Mha, Gqa, Mqa], MatchParams::DFf)).unwrap();
    let kinds: Vec<AttentionKind> = arms.iter().map(|a| a.model.kind()).collect();
    assert_eq!(kinds, vec![Mla, Mha, Gqa, Mqa]);

    // mla: the base is an MLA config, so its dimensions are kept as they are.
    assert_eq!(arms[0].model, *b);
    assert!(
        arms[0].change.starts_with("reference"),
        "{}",
        arms[0].change
    );
    // mha/gqa/mqa: 8 heads of d_model / n_heads = 16, with 8, 2 and 1 key/value heads.
    let d_h = b.d_model / b.n_heads;
    assert_eq!(standard(&arms[1].model), (Mha, 8, d_h));
    assert_eq!(standard(&arms[2].model), (Gqa, 2, d_h));
    assert_eq!(standard(&arms[3].model), (Mqa, 1, d_h));

    // Matched within half a d_ff step; only d_ff changed; the change is said.
    let reference = param_counts(&arms[0].model).total;
    let half_step = 3 * b.n_layers * b.d_model * ablate::D_FF_STEP / 2;
    for arm in &arms[1..] {
        let p = param_counts(&arm.model).total;
        assert_eq!(arm.params, p);
        assert!(
            p.abs_diff(reference) <= half_step,
            "{}: {p} vs {reference}",
            arm.name()
        );
        assert_eq!(arm.model.d_ff % ablate::D_FF_STEP, 0);
        assert_eq!(
            (arm.model.n_layers, arm.model.d_model, arm.model.n_heads),
            (b.n_layers, b.d_model, b.n_heads)
        );
        let said = if arm.model.d_ff == b.d_ff {
            format!("d_ff {} kept", b.d_ff)
        } else {
            format!("d_ff {} -> {} to match", b.d_ff, arm.model.d_ff)
        };
        assert!(arm.change.contains(&said), "{}: {}", arm.name(), arm.change);
        assert!(arm.change.contains("of mla"), "{}", arm.change);
    }
    // Fewer key/value heads leave room for a wider MLP.
    assert!(arms[3].model.d_ff > arms[2].model.d_ff && arms[2].model.d_ff > arms[1].model.d_ff);
    // KV cache per token: Table 1 of the paper, 4 layers of f32.
    let kv: Vec<usize> = arms.iter().map(|a| a.kv_bytes_per_token).collect();
    assert_eq!(
        kv,
        vec![
            (64 + 8) * 4 * 4,
            2 * 8 * 16 * 4 * 4,
            2 * 2 * 16 * 4 * 4,
            2 * 16 * 4 * 4
        ]
    );
    let table = ablate::arms_table(&arms);
    assert!(
        table.contains("latent 64") && table.contains("d_ff 384 -> "),
        "{table}"
    );
}

#[test]
fn layers_or_no_matching_and_the_reference_is_the_first_arm() {
    let base = shakespeare();
    let b = &base.model;
    // Layers: mha first, so it is the reference; mqa gets the depth closest to its count.
    let arms = ablate::derive_arms(b, &spec(&[Mha, Mqa], MatchParams::Layers)).unwrap();
    let reference = param_counts(&arms[0].model).total;
    let mut one = arms[1].model.clone();
    one.n_layers = 1;
    let mut two = one.clone();
    two.n_layers = 2;
    let per_layer = param_counts(&two).total - param_counts(&one).total;
    assert!(arms[1].params.abs_diff(reference) <= per_layer / 2);
    assert_eq!(arms[1].model.d_ff, b.d_ff);
    assert!(arms[1].change.contains("n_layers 4"), "{}", arms[1].change);
    assert!(arms[1].change.contains("of mha"), "{}", arms[1].change);

    // None: every arm as derived, its difference stated.
    let arms = ablate::derive_arms(b, &spec(&[Mla, Mqa], MatchParams::None)).unwrap();
    assert_eq!(
        (arms[1].model.d_ff, arms[1].model.n_layers),
        (b.d_ff, b.n_layers)
    );
    assert!(arms[1].change.starts_with("unchanged") && arms[1].change.contains('%'));
}

#[test]
fn an_mla_arm_from_a_standard_base_takes_the_paper_defaults() {
    let base = load(&debug_config(), &[]);
    let mha = ablate::with_attention(&base.model, Mha, None).unwrap();
    let arms = ablate::derive_arms(&mha, &spec(&[Mla, Gqa], MatchParams::DFf)).unwrap();
    let AttentionConfig::Latent(l) = arms[0].model.attention else {
        panic!("mla arm is not MLA")
    };
    let d_h = mha.d_model / mha.n_heads;
    assert_eq!(
        (
            l.kv_lora_rank,
            l.qk_nope_head_dim,
            l.qk_rope_head_dim,
            l.v_head_dim,
            l.q_lora_rank
        ),
        (4 * d_h, d_h, d_h / 2, d_h, None)
    );
    // --gqa-kv-heads, and mistakes named.
    let mut s = spec(&[Mla, Gqa], MatchParams::DFf);
    s.gqa_kv_heads = Some(1);
    let arms = ablate::derive_arms(&mha, &s).unwrap();
    assert_eq!(standard(&arms[1].model).1, 1);
    s.gqa_kv_heads = Some(3);
    let e = ablate::derive_arms(&mha, &s).unwrap_err().to_string();
    assert!(e.contains("arm gqa") && e.contains("n_kv_heads"), "{e}");
    let e = ablate::derive_arms(&mha, &spec(&[Mla, Mla], MatchParams::DFf)).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn the_plan_is_seed_major_with_one_directory_per_arm_and_seed() {
    let base = shakespeare();
    let arms = ablate::derive_arms(&base.model, &spec(&[Mla, Mha], MatchParams::DFf)).unwrap();
    let runs = ablate::plan(&base, &arms, 2, Path::new("out"));
    let got: Vec<(String, u64, AttentionKind)> = runs
        .iter()
        .map(|r| {
            (
                r.dir.display().to_string(),
                r.config.train.seed,
                r.config.model.kind(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("out/mla-s1337".into(), 1337, Mla),
            ("out/mha-s1337".into(), 1337, Mha),
            ("out/mla-s1338".into(), 1338, Mla),
            ("out/mha-s1338".into(), 1338, Mha),
        ]
    );
    // Everything else is the base's.
    assert_eq!(runs[1].config.data, base.data);
    assert_eq!(runs[1].config.optim, base.optim);
    assert_eq!(runs[1].config.max_steps(), base.max_steps());
    assert_eq!(
        ablate::default_out(&base),
        Path::new("runs/ablation-shakespeare")
    );
}

#[test]
fn ablate_trains_compares_and_skips_or_resumes_when_run_again() {
    let d = data();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("abl");
    let cmd = |extra: &[&str]| {
        let mut c = mla();
        c.arg("ablate")
            .arg(debug_config())
            .args(["--attn", "mla,mha", "--out"])
            .arg(&out);
        for s in d.sets() {
            c.arg("--set").arg(s);
        }
        for s in [
            "train.max_steps=4",
            "checkpoint.every=2",
            "eval.every=2",
            "schedule.warmup_steps=1",
        ] {
            c.arg("--set").arg(s);
        }
        c.args(extra);
        c
    };
    let o = run_ok(cmd(&[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stderr.contains("parameter matching"), "{stderr}");
    assert!(
        stderr.contains("2 run(s) trained, 0 already finished"),
        "{stderr}"
    );
    for f in [
        "compare.png",
        "compare.svg",
        "compare.json",
        "ablation.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(
        stdout.contains("mla-s1337") && stdout.contains("mha-s1337"),
        "{stdout}"
    );
    let mla_dir = out.join("mla-s1337");
    let mha_dir = out.join("mha-s1337");
    let metrics_before = std::fs::read_to_string(mla_dir.join("metrics.jsonl")).unwrap();

    // Again: both finished, nothing trains, the comparison is rewritten.
    std::fs::remove_file(out.join("compare.png")).unwrap();
    let o = run_ok(cmd(&[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("finished, skipped").count(), 2, "{stderr}");
    assert!(
        stderr.contains("0 run(s) trained, 2 already finished"),
        "{stderr}"
    );
    assert!(out.join("compare.png").exists());
    assert_eq!(
        std::fs::read_to_string(mla_dir.join("metrics.jsonl")).unwrap(),
        metrics_before
    );

    // A run cut short after its step-2 checkpoint resumes from there and finishes.
    std::fs::remove_file(mha_dir.join("summary.json")).unwrap();
    std::fs::remove_dir_all(mha_dir.join("checkpoints/step_4")).unwrap();
    let base = {
        let mut sets: Vec<String> = d.sets();
        sets.extend(
            [
                "train.max_steps=4",
                "checkpoint.every=2",
                "eval.every=2",
                "schedule.warmup_steps=1",
            ]
            .map(String::from),
        );
        config::load(&debug_config(), &sets, &|_| Ok(300)).unwrap()
    };
    let arms = ablate::derive_arms(&base.model, &spec(&[Mla, Mha], MatchParams::DFf)).unwrap();
    let runs = ablate::plan(&base, &arms, 1, &out);
    assert_eq!(ablate::state(&runs[0]).unwrap(), RunState::Finished);
    assert_eq!(
        ablate::state(&runs[1]).unwrap(),
        RunState::Partial { step: 2 }
    );
    let o = run_ok(cmd(&[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("mha seed 1337") && stderr.contains("resuming from step 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 run(s) trained, 1 already finished"),
        "{stderr}"
    );
    assert_eq!(ablate::state(&runs[1]).unwrap(), RunState::Finished);

    // Another config into the same directory is refused, not mixed in.
    let o = cmd(&["--set", "optim.lr=2e-3"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another config") && err.contains("[optim]"),
        "{err}"
    );
}
