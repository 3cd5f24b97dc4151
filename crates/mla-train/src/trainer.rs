//! The training loop, top to bottom: schedule -> forward -> backward -> clip -> step -> log ->
//! eval -> checkpoint. Everything else is a component it calls.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use indicatif::{ProgressBar, ProgressStyle};
use mla_data::{ShardSet, TokenBatcher, TrainSampler, ValWindows};
use mla_model::Lm;
use serde::Serialize;

use crate::checkpoint::{self, Checkpoint, ScheduleState, TrainState};
use crate::config::RunConfig;
use crate::error::{TrainError, io};
use crate::eval::evaluate;
use crate::metrics::{EvalRecord, Metrics, TrainRecord};
use crate::schedule::Schedule;
use crate::{device, hf, optim, precision};

pub struct TrainOptions {
    pub run_dir: PathBuf,
    /// Continue from the run directory's latest valid checkpoint.
    pub resume: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Arc<AtomicBool>,
}

/// What `mla train` prints at the end, and writes to `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub tokens: u64,
    pub final_train_loss: Option<f32>,
    pub final_val_loss: Option<f32>,
    pub best_val_loss: Option<f32>,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
    pub interrupted: bool,
}

pub fn checkpoint_dir(cfg: &RunConfig, run_dir: &Path) -> PathBuf {
    cfg.checkpoint
        .dir
        .as_ref()
        .map_or_else(|| run_dir.join("checkpoints"), PathBuf::from)
}

pub fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let run_dir = &opts.run_dir;
    let ckpt_dir = checkpoint_dir(cfg, run_dir);
    let spec = device::parse(&cfg.train.device)?;
    let device = spec.device()?;
    // Model code on this thread (training and evaluation) runs this attention kernel.
    mla_model::attention::sdpa::set_attention_kernel(cfg.train.attention_kernel);
    let train_device = device.clone().autodiff();

    // Resume, or refuse to clobber a run that has checkpoints.
    let resume = match (opts.resume, checkpoint::latest(&ckpt_dir)?) {
        (true, Some(c)) => Some(c),
        (true, None) => return Err(checkpoint::CheckpointError::NoneFound(ckpt_dir).into()),
        (false, Some(c)) => {
            return Err(TrainError::Other(format!(
                "{} already holds checkpoints (latest: step {}); continue it with --resume, or \
                 start a new run with --run-dir DIR or another `name`",
                run_dir.display(),
                c.state.step
            )));
        }
        (false, None) => None,
    };
    if let Some(c) = &resume {
        check_resumable(cfg, c)?;
    }
    std::fs::create_dir_all(run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    write_atomic(&run_dir.join("config.toml"), &cfg.to_toml())?;

    // Data: seeded, resumable windows for training; sequential windows for evaluation.
    let vocab = cfg.model.vocab_size;
    let seq_len = cfg.seq_len();
    let train_shards = ShardSet::open_glob(&cfg.data.train, Some(vocab))?;
    let mut sampler = match &resume {
        Some(c) => TrainSampler::restore(train_shards, seq_len, c.state.sampler.clone())?,
        None => TrainSampler::new(train_shards, seq_len, cfg.train.seed)?,
    };
    let val = if cfg.data.val.is_empty() {
        None
    } else {
        Some(ValWindows::new(
            ShardSet::open_glob(&cfg.data.val, Some(vocab))?,
            seq_len,
        )?)
    };

    // Model and optimizer: fresh, resumed, or initialised from weights for fine-tuning.
    train_device.seed(cfg.train.seed);
    let mut model = match (
        &resume,
        &cfg.checkpoint.init_from,
        &cfg.checkpoint.init_from_hf,
    ) {
        (Some(c), _, _) => c.load_model(&cfg.model, &train_device)?,
        // A fine-tune may extend the context (max_seq_len, rope_scaling, rope_theta).
        (None, Some(src), _) => {
            Checkpoint::open(Path::new(src))?
                .load_model_extending(&cfg.model, &train_device)?
                .0
        }
        (None, None, Some(dir)) => hf::load_pretrained(Path::new(dir), &cfg.model, &train_device)
            .map_err(|e| TrainError::Other(e.to_string()))?,
        (None, None, None) => Lm::new(&cfg.model, &train_device),
    };
    let mut optim = optim::build(&cfg.optim);
    if let Some(c) = &resume {
        optim = c.load_optimizer(optim)?;
    }
    let schedule = Schedule::new(&cfg.optim, &cfg.schedule, cfg.max_steps());
    let mut metrics = Metrics::open(
        run_dir,
        cfg.log.tensorboard,
        resume.as_ref().map(|c| c.state.step),
    )?;

    let mut step = resume.as_ref().map_or(0, |c| c.state.step);
    let mut tokens = resume.as_ref().map_or(0, |c| c.state.tokens);
    let elapsed_before = resume.as_ref().map_or(0.0, |c| c.state.elapsed_s);
    let mut best_val = resume.as_ref().and_then(|c| c.state.best_val_loss);
    let mut last_checkpoint = resume.as_ref().map(|c| c.dir.clone());
    let config_toml = cfg.to_toml();
    let started = Instant::now();
    let elapsed = || elapsed_before + started.elapsed().as_secs_f64();

    let bar = progress_bar(cfg.max_steps(), step);
    let say = |bar: &ProgressBar, line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    if let Some(c) = &resume {
        say(
            &bar,
            format!("resuming from {} (step {})", c.dir.display(), c.state.step),
        );
    }

    let save = |model: &Lm,
                optim: &burn::optim::ModuleOptimizer,
                sampler: &TrainSampler,
                step: u64,
                tokens: u64,
                best_val: Option<f32>|
     -> Result<PathBuf, TrainError> {
        let state = TrainState {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            step,
            tokens,
            sampler: sampler.state(),
            schedule: ScheduleState {
                next_step: step,
                next_lr: schedule.lr(step),
            },
            elapsed_s: elapsed(),
            best_val_loss: best_val,
            device: cfg.train.device.clone(),
            dtype: format!("{:?}", cfg.train.dtype).to_lowercase(),
        };
        Ok(checkpoint::save(
            &ckpt_dir,
            model,
            optim,
            &state,
            &config_toml,
            cfg.checkpoint.keep_last,
        )?)
    };
    // Validation loss (when there is val data): logged, and the best so far updated.
    let eval_at = |model: &Lm,
                   step: u64,
                   tokens: u64,
                   metrics: &mut Metrics,
                   best_val: &mut Option<f32>|
     -> Result<Option<f32>, TrainError> {
        let Some(windows) = val.as_ref() else {
            return Ok(None);
        };
        let val_loss = evaluate(
            &model.valid(),
            windows,
            cfg.train.micro_batch,
            Some(cfg.eval.batches),
            &device,
        );
        let rec = EvalRecord {
            step,
            tokens,
            val_loss,
            val_ppl: val_loss.exp(),
            elapsed_s: elapsed(),
        };
        metrics.eval(&rec)?;
        *best_val = Some(best_val.map_or(val_loss, |b| b.min(val_loss)));
        say(
            &bar,
            format!(
                "step {step:>6} | val loss {val_loss:.4} | val ppl {:.2}",
                rec.val_ppl
            ),
        );
        Ok(Some(val_loss))
    };

    let batcher = TokenBatcher;
    let accum_steps = cfg.grad_accum();
    let mut interval = (0.0f64, 0u64, Instant::now()); // (loss sum, steps, since)
    let mut final_train_loss = None;
    let mut final_val = None;
    let mut last_eval_step = None;
    let mut interrupted = false;

    while step < cfg.max_steps() {
        if opts.interrupt.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let lr = schedule.lr(step);

        // Forward and backward over the micro-batches of one optimizer step, through the
        // weights in the compute precision (a fresh view each time: backward consumes its
        // casts); gradients land on the f32 master weights.
        let mut accum = GradientsAccumulator::<Lm>::new();
        let mut loss_sum = 0.0f64;
        for _ in 0..accum_steps {
            let batch = batcher.make(&sampler.next_batch(cfg.train.micro_batch), &train_device);
            let compute = precision::compute_view(&model, cfg.train.dtype);
            let loss = compute.loss(batch.inputs, batch.targets);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let loss = if accum_steps > 1 {
                loss.div_scalar(accum_steps as f64)
            } else {
                loss
            };
            accum.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let mut grads = accum.grads();
        let loss = (loss_sum / accum_steps as f64) as f32;

        // Clip and step; a non-finite loss or gradient stops the run before it is applied.
        let grad_norm = optim::clip_grad_norm(&model, &mut grads, cfg.optim.grad_clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            bar.abandon();
            metrics.close();
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss: if loss.is_finite() { f32::NAN } else { loss },
                last_good: last_checkpoint,
            });
        }
        model = optim.step(lr, model, grads);
        step += 1;
        tokens += cfg.tokens_per_step();
        bar.set_position(step);

        // Log the mean loss since the last line.
        interval.0 += loss as f64;
        interval.1 += 1;
        if step % cfg.log.every == 0 || step == cfg.max_steps() {
            let secs = interval.2.elapsed().as_secs_f64();
            let rec = TrainRecord {
                step,
                tokens,
                loss: (interval.0 / interval.1 as f64) as f32,
                lr,
                grad_norm,
                tokens_per_s: (interval.1 * cfg.tokens_per_step()) as f64 / secs.max(1e-9),
                elapsed_s: elapsed(),
            };
            metrics.train(&rec)?;
            final_train_loss = Some(rec.loss);
            let line = format!(
                "step {step:>6} | loss {:.4} | lr {:.2e} | grad norm {:.3} | {:.0} tok/s",
                rec.loss, rec.lr, rec.grad_norm, rec.tokens_per_s
            );
            bar.set_message(line.clone());
            if bar.is_hidden() {
                eprintln!("{line}");
            }
            interval = (0.0, 0, Instant::now());
        }

        if cfg.eval.every > 0
            && step % cfg.eval.every == 0
            && let Some(v) = eval_at(&model, step, tokens, &mut metrics, &mut best_val)?
        {
            final_val = Some(v);
            last_eval_step = Some(step);
        }
        if cfg.checkpoint.every > 0 && step % cfg.checkpoint.every == 0 {
            last_checkpoint = Some(save(&model, &optim, &sampler, step, tokens, best_val)?);
        }
    }

    // The end (or Ctrl-C): evaluate and checkpoint unless this step already did.
    if !interrupted
        && last_eval_step != Some(step)
        && let Some(v) = eval_at(&model, step, tokens, &mut metrics, &mut best_val)?
    {
        final_val = Some(v);
    }
    let saved_here = last_checkpoint
        .as_ref()
        .is_some_and(|p| p.ends_with(format!("step_{step}")));
    if step > 0 && !saved_here {
        last_checkpoint = Some(save(&model, &optim, &sampler, step, tokens, best_val)?);
    }
    if interrupted {
        say(
            &bar,
            format!("interrupted at step {step}; checkpoint saved, continue with --resume"),
        );
    }
    bar.finish_and_clear();
    metrics.close();

    let elapsed_s = elapsed();
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        steps: step,
        tokens,
        final_train_loss,
        final_val_loss: final_val,
        best_val_loss: best_val,
        elapsed_s,
        tokens_per_s: tokens as f64 / elapsed_s.max(1e-9),
        last_checkpoint,
        interrupted,
    };
    write_atomic(
        &run_dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary).expect("summary serialises"),
    )?;
    Ok(summary)
}

/// A resumed run must train the same model on the same data in the same steps.
fn check_resumable(cfg: &RunConfig, c: &Checkpoint) -> Result<(), TrainError> {
    let stored = c.config()?;
    let mut diffs = stored.model.differing_fields(&cfg.model);
    let same = |name: &str, a: String, b: String, diffs: &mut Vec<String>| {
        if a != b {
            diffs.push(format!("{name}: {a} vs {b}"));
        }
    };
    same(
        "data.train",
        stored.data.train.clone(),
        cfg.data.train.clone(),
        &mut diffs,
    );
    same(
        "train.seq_len",
        format!("{}", stored.seq_len()),
        format!("{}", cfg.seq_len()),
        &mut diffs,
    );
    same(
        "train.micro_batch",
        stored.train.micro_batch.to_string(),
        cfg.train.micro_batch.to_string(),
        &mut diffs,
    );
    same(
        "train.global_batch",
        stored.global_batch().to_string(),
        cfg.global_batch().to_string(),
        &mut diffs,
    );
    same(
        "train.seed",
        stored.train.seed.to_string(),
        cfg.train.seed.to_string(),
        &mut diffs,
    );
    same(
        "train.dtype",
        format!("{:?}", stored.train.dtype),
        format!("{:?}", cfg.train.dtype),
        &mut diffs,
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Other(format!(
            "cannot resume {}: the config differs from the checkpoint's in {}",
            c.dir.display(),
            diffs.join("; ")
        )))
    }
}

fn progress_bar(total: u64, at: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(at);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// Write a file by writing a temporary one next to it and renaming it over.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}
