//! `mla convert`: an mha/gqa/mqa checkpoint (ours, or an HF Llama directory) into an MLA
//! checkpoint directory that `finetune --from`, `eval`, `generate` and `export` take (the
//! weight surgery itself is `mla_model::convert`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use mla_data::{SamplerState, ShardSet, ValWindows};
use mla_model::Lm;
use mla_model::accounting::{self, CacheMode};
use mla_model::convert::{self, Calibration, ConvertOptions, RopeSelect};
use mla_train::checkpoint::{self, Checkpoint, ScheduleState, TrainState};
use mla_train::config::{
    CheckpointSection, DataSection, EvalSection, LogSection, OptimSection, RunConfig,
    ScheduleSection, TrainSection,
};
use mla_train::eval::evaluate;

#[derive(clap::Args)]
pub struct Args {
    /// An mha/gqa/mqa checkpoint or run directory of ours, or an HF Llama directory
    /// (config.json, model.safetensors, tokenizer.json).
    source: PathBuf,
    /// Target attention; only `mla`.
    #[arg(long, default_value = "mla")]
    to: String,
    /// Latent width R (kv_lora_rank): the rank of the joint K/V factorisation.
    #[arg(long)]
    kv_lora_rank: usize,
    /// Width D of the one rotary key all heads share (qk_rope_head_dim): D / (2 n_kv_heads)
    /// rotary pairs of each key/value head.
    #[arg(long)]
    qk_rope_head_dim: usize,
    /// Which pairs keep RoPE: 2norm (needs --calib), high, low, uniform (MHA2MLA).
    #[arg(long, default_value = "high", value_parser = ["2norm", "high", "low", "uniform"])]
    rope_select: String,
    /// Token shards (glob) for calibration: 2norm, activation-aware SVD, the latent norm's
    /// gain, and the losses printed at the end.
    #[arg(long)]
    calib: Option<String>,
    /// Calibration tokens to use.
    #[arg(long, default_value_t = 16384, requires = "calib")]
    calib_tokens: usize,
    /// Calibration window length (default: the source run's sequence length, at most 1024).
    #[arg(long, requires = "calib")]
    calib_seq_len: Option<usize>,
    /// Divide the keys by sqrt(E‖k‖² / E‖v‖²) before the SVD (TransMLA's balanced KV).
    #[arg(long)]
    balance_kv: bool,
    /// Output checkpoint directory (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
}

/// A source model and what the converted checkpoint inherits from it.
struct Source {
    model: Lm,
    run: RunConfig,
    tokenizer: PathBuf,
    description: String,
}

fn load_source(path: &Path, device: &burn::tensor::Device) -> anyhow::Result<Source> {
    let is_hf = path.join("config.json").is_file() && !path.join("state.json").is_file();
    if is_hf {
        let model_cfg = mla_train::hf::llama_config(path)?;
        let tokenizer = path.join("tokenizer.json");
        ensure!(
            tokenizer.is_file(),
            "{} has no tokenizer.json; the converted model needs its tokenizer",
            path.display()
        );
        let model = mla_train::hf::load_pretrained(path, &model_cfg, device)?;
        let seq_len = model_cfg.max_seq_len.min(1024);
        let run = RunConfig {
            name: "converted".into(),
            model: model_cfg,
            data: DataSection {
                train: "(none: converted from an HF directory; give [data] train)".into(),
                val: String::new(),
                tokenizer: String::new(),
            },
            train: TrainSection {
                seq_len: Some(seq_len),
                micro_batch: 8,
                global_batch: Some(8),
                max_steps: Some(1),
                ..Default::default()
            },
            optim: OptimSection::default(),
            schedule: ScheduleSection::default(),
            eval: EvalSection::default(),
            checkpoint: CheckpointSection::default(),
            log: LogSection::default(),
            dist: Default::default(),
            set_aside: vec![],
        };
        return Ok(Source {
            model,
            run,
            tokenizer,
            description: format!("HF Llama directory {}", path.display()),
        });
    }
    let ckpt = Checkpoint::open(path)?;
    let run = ckpt
        .config()
        .context("reading the source checkpoint's config")?;
    ensure!(
        !run.data.tokenizer.is_empty(),
        "the source run's config names no tokenizer ([data] tokenizer); the converted model \
         needs its tokenizer"
    );
    let tokenizer = PathBuf::from(&run.data.tokenizer);
    ensure!(
        tokenizer.is_file(),
        "the source's tokenizer {} is missing; the converted model needs its tokenizer",
        tokenizer.display()
    );
    let model = ckpt.load_model(&run.model, device)?;
    Ok(Source {
        model,
        run,
        tokenizer,
        description: format!("{} (step {})", ckpt.dir.display(), ckpt.state.step),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.to == "mla",
        "--to {:?}: the only target is mla",
        args.to
    );
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        bail!(
            "{} exists and is not empty; choose another --out or remove it",
            out.display()
        );
    }
    let strategy = RopeSelect::parse(&args.rope_select).expect("clap checks the value");
    let device = mla_train::device::parse("cpu")?.device()?;
    let src = load_source(&args.source, &device)?;
    let cfg = src.model.config().clone();

    let windows = match &args.calib {
        Some(glob) => {
            let shards = ShardSet::open_glob(glob, Some(cfg.vocab_size))?;
            let seq_len = args
                .calib_seq_len
                .unwrap_or(src.run.seq_len().min(1024))
                .min(cfg.max_seq_len);
            let windows = ValWindows::new(shards, seq_len)?;
            let n = args
                .calib_tokens
                .div_ceil(seq_len)
                .min(windows.num_windows());
            ensure!(n > 0, "--calib {glob}: no window of {seq_len} tokens");
            Some((windows, n))
        }
        None => None,
    };
    let calib_rows: Vec<Vec<u32>> = windows
        .as_ref()
        .map_or(vec![], |(w, n)| (0..*n).map(|i| w.window(i)).collect());
    const BATCH: usize = 8;
    let opts = ConvertOptions {
        kv_lora_rank: args.kv_lora_rank,
        qk_rope_head_dim: args.qk_rope_head_dim,
        rope_select: strategy,
        balance_kv: args.balance_kv,
    };
    let started = std::time::Instant::now();
    let conv = convert::convert(
        &src.model,
        &opts,
        windows.as_ref().map(|_| Calibration {
            windows: &calib_rows,
            batch: BATCH,
        }),
    )?;
    let target = conv.model.config().clone();

    // Losses on the calibration tokens: the source, with per-head partial RoPE, with the
    // shared key's partial RoPE (what the conversion reproduces at full rank), converted.
    let losses = windows.as_ref().map(|(w, n)| {
        let batches = n.div_ceil(BATCH);
        let eval = |m: &Lm| evaluate(m, w, BATCH, Some(batches), &device);
        serde_json::json!({
            "tokens": n * w.seq_len(),
            "source": eval(&src.model),
            "partial_rope_per_head": conv.per_head_source.as_ref().map(eval),
            "partial_rope_shared_key": eval(&conv.partial_source),
            "converted": eval(&conv.model),
        })
    });

    print_report(&src, &conv, &target, &opts, losses.as_ref());
    let report = serde_json::json!({
        "source": src.description,
        "kv_lora_rank": args.kv_lora_rank,
        "qk_rope_head_dim": args.qk_rope_head_dim,
        "rope_select": strategy.as_str(),
        "balance_kv": args.balance_kv,
        "calib": args.calib,
        "pairs": conv.pairs,
        "layers": conv.layers,
        "calibration_loss": losses,
        "seconds": started.elapsed().as_secs_f64(),
    });
    write_checkpoint(out, &conv.model, &src, &report)?;
    println!(
        "wrote {} ({} in {:.1} s)",
        out.display(),
        target.kind(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_report(
    src: &Source,
    conv: &convert::Conversion,
    target: &mla_model::ModelConfig,
    opts: &ConvertOptions,
    losses: Option<&serde_json::Value>,
) {
    let cfg = src.model.config();
    println!("source      {} ({})", src.description, cfg.kind());
    println!(
        "target      mla: kv_lora_rank {}, qk_nope_head_dim {}, qk_rope_head_dim {}, \
         v_head_dim {}",
        opts.kv_lora_rank,
        target.qk_head_dim() - target.rope_dim(),
        target.rope_dim(),
        target.v_head_dim()
    );
    let pairs: Vec<String> = conv
        .pairs
        .iter()
        .enumerate()
        .map(|(g, p)| format!("kv head {g}: {p:?}"))
        .collect();
    println!(
        "rotary      {} ({} of {} pairs per key/value head; same in every layer)",
        opts.rope_select,
        conv.pairs[0].len(),
        cfg.rope_dim() / 2
    );
    for p in pairs {
        println!("            {p}");
    }
    println!(
        "\n{:>5} {:>10} {:>10} {:>10} {:>8} {:>13} {:>13}",
        "layer", "energy", "kv err", "+norm", "balance", "attn params", "cache/token"
    );
    for l in &conv.layers {
        println!(
            "{:>5} {:>9.2}% {:>10.2e} {:>10} {:>8.3} {:>6} -> {:<6} {:>5} -> {:<5}",
            l.layer,
            100.0 * l.energy_kept,
            l.kv_error_truncated,
            l.kv_error_normed
                .map_or("-".to_string(), |e| format!("{e:.2e}")),
            l.kv_balance,
            human(l.attention_params_before),
            human(l.attention_params_after),
            l.kv_cache_before,
            l.kv_cache_after
        );
    }
    let (pb, pa) = (
        accounting::param_counts(cfg).total,
        accounting::param_counts(target).total,
    );
    let (cb, ca) = (
        accounting::kv_cache(cfg, CacheMode::Latent),
        accounting::kv_cache(target, CacheMode::Latent),
    );
    println!(
        "model: {} -> {} parameters; KV cache {} -> {} elements per token ({:.1}%)",
        human(pb),
        human(pa),
        cb.elements_per_token,
        ca.elements_per_token,
        100.0 * ca.elements_per_token as f64 / cb.elements_per_token as f64
    );
    if let Some(l) = losses {
        let f = |k: &str| l[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
        println!(
            "calibration loss ({} tokens): source {}, partial RoPE per head {}, partial RoPE \
             shared key {}, converted {}",
            l["tokens"],
            f("source"),
            f("partial_rope_per_head"),
            f("partial_rope_shared_key"),
            f("converted")
        );
    }
}

fn human(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// A checkpoint directory (as `checkpoints/step_<N>/`, at step 0) with the tokenizer and the
/// conversion report, written into a temporary directory and renamed into place.
fn write_checkpoint(
    out: &Path,
    model: &Lm,
    src: &Source,
    report: &serde_json::Value,
) -> anyhow::Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let final_dir = std::path::absolute(out)?;
    let tmp = parent.join(format!(
        ".tmp-convert-{}-{}",
        out.file_name()
            .map_or("out".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        std::fs::copy(&src.tokenizer, tmp.join("tokenizer.json"))
            .with_context(|| format!("copying {}", src.tokenizer.display()))?;
        let mut run = src.run.clone();
        run.model = model.config().clone();
        run.data.tokenizer = final_dir.join("tokenizer.json").display().to_string();
        run.checkpoint.init_from = None;
        run.checkpoint.init_from_hf = None;
        run.name = out
            .file_name()
            .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "converted".into());
        model
            .clone()
            .save_file(tmp.join("model.bpk"))
            .map_err(|e| anyhow::anyhow!("writing model.bpk: {e:?}"))?;
        mla_train::optim::build(&run.optim)
            .save(tmp.join("optim.bpk"))
            .map_err(|e| anyhow::anyhow!("writing optim.bpk: {e:?}"))?;
        std::fs::write(tmp.join("config.toml"), run.to_toml())?;
        std::fs::write(
            tmp.join("convert.json"),
            serde_json::to_string_pretty(report)?,
        )?;
        let state = TrainState {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            step: 0,
            tokens: 0,
            sampler: SamplerState {
                seed: run.train.seed,
                epoch: 0,
                cursor: 0,
                seq_len: run.seq_len() as u64,
                tokens: 0,
            },
            schedule: ScheduleState {
                next_step: 0,
                next_lr: run.optim.lr,
            },
            elapsed_s: 0.0,
            best_val_loss: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            world_size: 1,
        };
        // Written last: its presence marks the checkpoint complete.
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_string_pretty(&state)?,
        )?;
        if out.exists() {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
