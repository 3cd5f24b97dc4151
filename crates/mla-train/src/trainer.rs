//! The training loop, top to bottom: schedule -> forward -> backward -> (all-reduce) -> clip ->
//! step -> log -> eval -> checkpoint. Everything else is a component it calls.
//!
//! Under torchrun each rank runs this same loop on its share of every step's micro-batches
//! (see `dist`); rank 0 alone writes the run directory.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mla_data::{ShardSet, TokenBatcher, TrainSampler, ValWindows};
use mla_model::Lm;
use serde::Serialize;

use crate::checkpoint::{self, Checkpoint, ScheduleState, TrainState};
use crate::config::RunConfig;
use crate::device::DeviceSpec;
use crate::dist::{Launch, World};
use crate::error::{TrainError, io};
use crate::eta::{Eta, Evals, Plan};
use crate::eval::evaluate_sums;
use crate::lock::RunLock;
use crate::metrics::{EvalRecord, Metrics, TrainRecord};
use crate::schedule::Schedule;
use crate::stop::StopSignal;
use crate::{device, hf, optim, precision, resources};

pub struct TrainOptions {
    pub run_dir: PathBuf,
    pub resume: Resume,
    /// Set by SIGINT/SIGTERM: stop after the current step with a checkpoint.
    pub stop: StopSignal,
    /// This process's rank under torchrun (None: a single-process run).
    pub launch: Option<Launch>,
}

/// Whether a run continues from its run directory's latest valid checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// A new run; refused where the directory already holds checkpoints.
    Never,
    /// Continue; an error where there is no checkpoint.
    Required,
    /// Continue where there is a checkpoint, start otherwise: the same command works for the
    /// first start and every restart (`torchrun --max-restarts`, a requeued SLURM job).
    Auto,
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
    /// The signal that stopped it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Ranks that trained (1 without torchrun).
    pub world_size: usize,
    /// Mean MFU over the run (when the device's peak is known or given).
    pub mfu: Option<f64>,
    /// Peak memory of rank 0's process: RSS on CPU, the CUDA allocator's peak on a GPU.
    pub peak_memory_bytes: Option<u64>,
}

pub fn checkpoint_dir(cfg: &RunConfig, run_dir: &Path) -> PathBuf {
    cfg.checkpoint
        .dir
        .as_ref()
        .map_or_else(|| run_dir.join("checkpoints"), PathBuf::from)
}

/// The device, the group, the data and the model of a run, set up before anything is written.
struct Setup {
    spec: DeviceSpec,
    device: Device,
    world: World,
    resume: Option<Checkpoint>,
    sampler: TrainSampler,
    val: Option<ValWindows>,
    model: Lm,
}

pub fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let (spec, world) = join(cfg, opts)?;
    // Every rank checks its inputs; all stop where any rank cannot start.
    let local = set_up(cfg, opts, spec, world.rank());
    let (resume, sampler, val, model) = agree(&world, local)?;
    let device = spec.device()?;
    let mut setup = Setup {
        spec,
        device,
        world,
        resume,
        sampler,
        val,
        model,
    };
    // Identical weights everywhere, whatever each rank loaded or initialised.
    setup.model = setup.world.broadcast_model(setup.model)?;
    // Only now is anything written, and only by rank 0, under the run directory's lock.
    let lock = if setup.world.is_main() {
        Some(take_run_dir(cfg, &opts.run_dir))
    } else {
        None
    };
    let lock = agree(&setup.world, lock.transpose())?;
    let summary = run(cfg, opts, setup);
    drop(lock);
    summary
}

/// The rank's device, and its place in the group (a world of one without torchrun). The
/// config check comes first, so that ranks with different configs stop before doing anything.
fn join(cfg: &RunConfig, opts: &TrainOptions) -> Result<(DeviceSpec, World), TrainError> {
    let Some(launch) = &opts.launch else {
        return Ok((device::parse(&cfg.train.device)?, World::single()));
    };
    let spec = launch.rank_device(&cfg.train.device)?;
    let world = World::join(launch, spec, Duration::from_secs(cfg.dist.timeout_s))?;
    world.check_same_config(&cfg.to_toml())?;
    let divisor = cfg.train.micro_batch * world.size();
    if !cfg.global_batch().is_multiple_of(divisor) {
        return Err(TrainError::Config(crate::ConfigError::Invalid {
            key: "train.global_batch".into(),
            message: format!(
                "{} is not a multiple of world size {} x micro_batch {}: every rank must run \
                 whole micro-batches (the global batch fixes what is trained, whatever the world \
                 size that divides it)",
                cfg.global_batch(),
                world.size(),
                cfg.train.micro_batch
            ),
        }));
    }
    Ok((spec, world))
}

/// Every rank's verdict on its own setup, shared: a rank that cannot start says why, and the
/// others stop with a line pointing at it (rather than waiting for it in the next collective).
fn agree<T>(world: &World, local: Result<T, TrainError>) -> Result<T, TrainError> {
    if world.size() == 1 {
        return local;
    }
    let mut failed = vec![0.0; world.size()];
    failed[world.rank()] = f64::from(u8::from(local.is_err()));
    world.all_reduce_f64(&mut failed, "the setup check")?;
    let bad: Vec<String> = (0..world.size())
        .filter(|&r| failed[r] > 0.0)
        .map(|r| r.to_string())
        .collect();
    match local {
        Err(e) => Err(e),
        Ok(_) if !bad.is_empty() => Err(TrainError::Other(format!(
            "rank(s) {} could not start (see their error); stopping",
            bad.join(", ")
        ))),
        Ok(v) => Ok(v),
    }
}

type Inputs = (Option<Checkpoint>, TrainSampler, Option<ValWindows>, Lm);

/// What a run reads before it writes: the checkpoint it resumes from, the data, the model.
fn set_up(
    cfg: &RunConfig,
    opts: &TrainOptions,
    spec: DeviceSpec,
    rank: usize,
) -> Result<Inputs, TrainError> {
    let device = spec.device()?;
    let train_device = device.clone().autodiff();
    let ckpt_dir = checkpoint_dir(cfg, &opts.run_dir);
    let resume = resolve_resume(cfg, opts, &ckpt_dir)?;

    // Data: seeded, resumable windows for training; sequential windows for evaluation.
    let vocab = cfg.model.vocab_size;
    let seq_len = cfg.seq_len();
    let train_shards = ShardSet::open_glob(&cfg.data.train, Some(vocab))?;
    let sampler = match &resume {
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

    // Model: fresh, resumed, or initialised from weights for fine-tuning. Only rank 0's
    // matters (it is broadcast), but each rank builds one of the same shape.
    train_device.seed(cfg.train.seed);
    let model = match (
        &resume,
        &cfg.checkpoint.init_from,
        &cfg.checkpoint.init_from_hf,
    ) {
        (Some(c), _, _) => c.load_model(&cfg.model, &train_device)?,
        // A fine-tune may extend the context (max_seq_len, rope_scaling, rope_theta).
        (None, Some(src), _) if rank == 0 => {
            Checkpoint::open(Path::new(src))?
                .load_model_extending(&cfg.model, &train_device)?
                .0
        }
        (None, None, Some(dir)) if rank == 0 => {
            hf::load_pretrained(Path::new(dir), &cfg.model, &train_device)
                .map_err(|e| TrainError::Other(e.to_string()))?
        }
        _ => Lm::new(&cfg.model, &train_device),
    };
    Ok((resume, sampler, val, model))
}

fn resolve_resume(
    cfg: &RunConfig,
    opts: &TrainOptions,
    ckpt_dir: &Path,
) -> Result<Option<Checkpoint>, TrainError> {
    let resume = match (opts.resume, checkpoint::latest(ckpt_dir)?) {
        (Resume::Required | Resume::Auto, Some(c)) => Some(c),
        (Resume::Required, None) => {
            return Err(checkpoint::CheckpointError::NoneFound(ckpt_dir.to_path_buf()).into());
        }
        (Resume::Never, Some(c)) => {
            return Err(TrainError::Other(format!(
                "{} already holds checkpoints (latest: step {}); continue it with --resume (or \
                 --resume auto), or start a new run with --run-dir DIR or another `name`",
                opts.run_dir.display(),
                c.state.step
            )));
        }
        (Resume::Never | Resume::Auto, None) => None,
    };
    if let Some(c) = &resume {
        check_resumable(cfg, c)?;
    }
    Ok(resume)
}

/// Creates the run directory, takes its lock, and writes the resolved config.
fn take_run_dir(cfg: &RunConfig, run_dir: &Path) -> Result<RunLock, TrainError> {
    std::fs::create_dir_all(run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    let lock = RunLock::acquire(run_dir)?;
    write_atomic(&run_dir.join("config.toml"), &cfg.to_toml())?;
    Ok(lock)
}

/// What rank 0 writes while training: metrics, the progress bar, the console lines.
struct Log {
    /// Rank 0: the others write nothing.
    main: bool,
    metrics: Option<Metrics>,
    bar: ProgressBar,
}

impl Log {
    fn say(&self, line: String) {
        if !self.main {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// The loop, once everything is set up.
fn run(cfg: &RunConfig, opts: &TrainOptions, setup: Setup) -> Result<TrainSummary, TrainError> {
    let Setup {
        spec,
        device,
        world,
        resume,
        mut sampler,
        val,
        mut model,
    } = setup;
    let run_dir = &opts.run_dir;
    let ckpt_dir = checkpoint_dir(cfg, run_dir);
    // Model code on this thread (training and evaluation) runs this attention kernel.
    mla_model::attention::sdpa::set_attention_kernel(cfg.train.attention_kernel);
    let train_device = device.clone().autodiff();
    let mut optim = optim::build(&cfg.optim);
    if let Some(c) = &resume {
        optim = c.load_optimizer(optim)?;
    }
    let schedule = Schedule::new(&cfg.optim, &cfg.schedule, cfg.max_steps());
    let mut log = Log {
        main: world.is_main(),
        metrics: if world.is_main() {
            Some(Metrics::open(
                run_dir,
                cfg.log.tensorboard,
                resume.as_ref().map(|c| c.state.step),
            )?)
        } else {
            None
        },
        bar: if world.is_main() {
            progress_bar(cfg.max_steps(), resume.as_ref().map_or(0, |c| c.state.step))
        } else {
            ProgressBar::hidden()
        },
    };
    let peak_tflops = cfg.train.peak_tflops.or_else(|| {
        resources::device_name(spec).and_then(|n| resources::known_peak_tflops(&n, cfg.train.dtype))
    });
    let flops_per_token = mla_model::accounting::flops_per_token(&cfg.model, cfg.seq_len()).total;
    let mfu_of = |tokens_per_s: f64| {
        peak_tflops.map(|p| resources::mfu(tokens_per_s, world.size(), flops_per_token, p))
    };

    let mut step = resume.as_ref().map_or(0, |c| c.state.step);
    let mut tokens = resume.as_ref().map_or(0, |c| c.state.tokens);
    let elapsed_before = resume.as_ref().map_or(0.0, |c| c.state.elapsed_s);
    let mut best_val = resume.as_ref().and_then(|c| c.state.best_val_loss);
    let mut last_checkpoint = resume.as_ref().map(|c| c.dir.clone());
    let config_toml = cfg.to_toml();
    let started = Instant::now();
    let elapsed = || elapsed_before + started.elapsed().as_secs_f64();
    if let Some(c) = &resume {
        log.say(format!(
            "resuming from {} (step {})",
            c.dir.display(),
            c.state.step
        ));
    }
    if world.size() > 1 {
        log.say(format!(
            "data parallel: {} ranks x micro_batch {} x accumulation {} = global batch {}",
            world.size(),
            cfg.train.micro_batch,
            cfg.global_batch() / (cfg.train.micro_batch * world.size()),
            cfg.global_batch()
        ));
    }

    // Rank 0 writes the checkpoint; every rank waits for it, so none runs ahead of the last
    // complete one (and a failure to write it stops them all).
    let save = |model: &Lm,
                optim: &burn::optim::ModuleOptimizer,
                sampler: &TrainSampler,
                step: u64,
                tokens: u64,
                best_val: Option<f32>|
     -> Result<PathBuf, TrainError> {
        let saved = if world.is_main() {
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
                world_size: world.size(),
            };
            Some(checkpoint::save(
                &ckpt_dir,
                model,
                optim,
                &state,
                &config_toml,
                cfg.checkpoint.keep_last,
            ))
        } else {
            None
        };
        let saved = agree(&world, saved.transpose().map_err(TrainError::from))?;
        world.barrier("the checkpoint barrier")?;
        // The other ranks know where rank 0 put it.
        Ok(saved.unwrap_or_else(|| ckpt_dir.join(format!("step_{step}"))))
    };
    // Validation loss (when there is val data), split over the ranks: logged, and the best so
    // far updated.
    let eval_at = |model: &Lm,
                   step: u64,
                   tokens: u64,
                   log: &mut Log,
                   best_val: &mut Option<f32>|
     -> Result<Option<f32>, TrainError> {
        let Some(windows) = val.as_ref() else {
            return Ok(None);
        };
        let mut sums = evaluate_sums(
            &model.valid(),
            windows,
            cfg.train.micro_batch,
            Some(cfg.eval.batches),
            &device,
            world.rank(),
            world.size(),
        );
        world.all_reduce_f64(&mut sums, "the evaluation all-reduce")?;
        let val_loss = (sums[0] / sums[1].max(1.0)) as f32;
        *best_val = Some(best_val.map_or(val_loss, |b| b.min(val_loss)));
        if let Some(metrics) = log.metrics.as_mut() {
            let rec = EvalRecord {
                step,
                tokens,
                val_loss,
                val_ppl: val_loss.exp(),
                elapsed_s: elapsed(),
            };
            metrics.eval(&rec)?;
        }
        log.say(format!(
            "step {step:>6} | val loss {val_loss:.4} | val ppl {:.2}",
            val_loss.exp()
        ));
        Ok(Some(val_loss))
    };

    let micro = MicroBatches::new(cfg, &world);
    let mut eta = Eta::new(Plan {
        max_steps: cfg.max_steps(),
        tokens_per_step: cfg.tokens_per_step(),
        micro_batches_per_step: micro.total.div_ceil(micro.world) as u64,
        evals: val.as_ref().map(|_| Evals {
            every: cfg.eval.every,
            batches: (cfg.eval.batches as u64).div_ceil(world.size() as u64),
        }),
    });
    let mut interval = (0.0f64, 0u64, Instant::now()); // (loss sum, steps, since)
    let mut run_time = (0.0f64, 0u64); // (seconds, tokens) over logged intervals, for the MFU
    let mut final_train_loss = None;
    let mut final_val = None;
    let mut last_eval_step = None;
    let mut interrupted = false;
    // Who asked to stop, as it was when the step noticed (a later signal, such as torchrun's
    // SIGTERM once another rank has exited, does not rename it).
    let mut stopped_by: Option<String> = None;

    while step < cfg.max_steps() {
        let lr = schedule.lr(step);
        let (loss, mut grads, stop) = forward_backward(
            cfg,
            &model,
            &mut sampler,
            &micro,
            &world,
            &opts.stop,
            &device,
            &train_device,
        )
        .map_err(|e| lost_a_rank(e, last_checkpoint.as_deref()))?;

        // Clip and step; a non-finite loss or gradient stops the run before it is applied.
        // The gradients are the same on every rank after the all-reduce, so is the norm.
        let grad_norm = optim::clip_grad_norm(&model, &mut grads, cfg.optim.grad_clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            log.bar.abandon();
            if let Some(m) = log.metrics.take() {
                m.close();
            }
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss: if loss.is_finite() { f32::NAN } else { loss },
                last_good: last_checkpoint,
            });
        }
        model = optim.step(lr, model, grads);
        step += 1;
        tokens += cfg.tokens_per_step();
        log.bar.set_position(step);
        if stop && stopped_by.is_none() {
            let by = opts
                .stop
                .signal_name()
                .unwrap_or("another rank's stop request");
            log.say(format!(
                "{by}: stopping after step {step} with a checkpoint (a second signal exits at once)"
            ));
            stopped_by = Some(by.to_string());
        }

        // Log the mean loss since the last line.
        interval.0 += loss as f64;
        interval.1 += 1;
        if step % cfg.log.every == 0 || step == cfg.max_steps() {
            let secs = interval.2.elapsed().as_secs_f64();
            let interval_tokens = interval.1 * cfg.tokens_per_step();
            let tokens_per_s = interval_tokens as f64 / secs.max(1e-9);
            run_time.0 += secs;
            run_time.1 += interval_tokens;
            let rec = TrainRecord {
                step,
                tokens,
                loss: (interval.0 / interval.1 as f64) as f32,
                lr,
                grad_norm,
                tokens_per_s,
                elapsed_s: elapsed(),
                mfu: mfu_of(tokens_per_s),
                peak_memory_bytes: resources::peak_memory_bytes(spec),
            };
            final_train_loss = Some(rec.loss);
            if let Some(metrics) = log.metrics.as_mut() {
                metrics.train(&rec)?;
                let line = train_line(&rec);
                log.bar.set_message(line.clone());
                if log.bar.is_hidden() {
                    eprintln!("{line}");
                }
            }
            interval = (0.0, 0, Instant::now());
        }
        if let Some(line) = eta.after_step(step) {
            log.say(line);
        }

        if cfg.eval.every > 0
            && step % cfg.eval.every == 0
            && let Some(v) = eval_at(&model, step, tokens, &mut log, &mut best_val)?
        {
            final_val = Some(v);
            last_eval_step = Some(step);
        }
        if cfg.checkpoint.every > 0 && step % cfg.checkpoint.every == 0 {
            last_checkpoint = Some(save(&model, &optim, &sampler, step, tokens, best_val)?);
        }
        if stop {
            interrupted = true;
            break;
        }
    }

    // The end (or a stop): evaluate and checkpoint unless this step already did.
    if !interrupted
        && last_eval_step != Some(step)
        && let Some(v) = eval_at(&model, step, tokens, &mut log, &mut best_val)?
    {
        final_val = Some(v);
    }
    let saved_here = last_checkpoint
        .as_ref()
        .is_some_and(|p| p.ends_with(format!("step_{step}")));
    if step > 0 && !saved_here {
        last_checkpoint = Some(save(&model, &optim, &sampler, step, tokens, best_val)?);
    }
    log.bar.finish_and_clear();
    if let Some(m) = log.metrics.take() {
        m.close();
    }

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
        stopped_by,
        world_size: world.size(),
        mfu: (run_time.0 > 0.0)
            .then(|| mfu_of(run_time.1 as f64 / run_time.0))
            .flatten(),
        peak_memory_bytes: resources::peak_memory_bytes(spec),
    };
    if world.is_main() {
        write_atomic(
            &run_dir.join("summary.json"),
            &serde_json::to_string_pretty(&summary).expect("summary serialises"),
        )?;
    }
    Ok(summary)
}

/// A failed collective mid-run means another rank is gone: say so, and where to resume from.
fn lost_a_rank(e: TrainError, last_checkpoint: Option<&Path>) -> TrainError {
    match e {
        TrainError::Dist(d @ crate::dist::DistError::Collective { .. }) => {
            TrainError::Other(format!(
                "{d}. Another rank stopped or was killed (see its output); {}",
                match last_checkpoint {
                    Some(p) => format!(
                        "the last complete checkpoint is {}: rerun with --resume auto",
                        p.display()
                    ),
                    None => "no checkpoint was written yet".to_string(),
                }
            ))
        }
        other => other,
    }
}

fn train_line(rec: &TrainRecord) -> String {
    let mut line = format!(
        "step {:>6} | loss {:.4} | lr {:.2e} | grad norm {:.3} | {:.0} tok/s",
        rec.step, rec.loss, rec.lr, rec.grad_norm, rec.tokens_per_s
    );
    if let Some(m) = rec.mfu {
        line.push_str(&format!(" | MFU {:.1}%", 100.0 * m));
    }
    if let Some(b) = rec.peak_memory_bytes {
        line.push_str(&format!(
            " | peak mem {:.2} GiB",
            b as f64 / (1u64 << 30) as f64
        ));
    }
    line
}

/// Which micro-batches of a step this rank runs. The step's global batch is one run of the
/// seeded sampler, `world x accumulation` micro-batches long; rank r takes micro-batches r,
/// r + W, r + 2W, ... and steps over the others, so the data of a step does not depend on the
/// world size.
struct MicroBatches {
    /// Micro-batches per optimizer step, over all ranks.
    total: usize,
    world: usize,
    rank: usize,
    size: usize,
}

impl MicroBatches {
    fn new(cfg: &RunConfig, world: &World) -> Self {
        MicroBatches {
            total: cfg.global_batch() / cfg.train.micro_batch,
            world: world.size(),
            rank: world.rank(),
            size: cfg.train.micro_batch,
        }
    }

    fn is_mine(&self, j: usize) -> bool {
        j % self.world == self.rank
    }
}

/// Forward and backward over this rank's micro-batches of one optimizer step, then the
/// gradients summed over the ranks. Returns the step's mean loss over the global batch, the
/// gradients, and whether any rank was asked to stop.
///
/// Each micro-batch loss is scaled by 1 / (micro-batches per step), so the summed gradient is
/// the mean; the scale is a power of two for the usual sizes, which makes 2 ranks x 1
/// micro-batch and 1 rank x 2 bit-identical. The losses travel in the first bucket, one slot
/// per global micro-batch, and are summed in micro-batch order as a single process does.
#[allow(clippy::too_many_arguments)]
fn forward_backward(
    cfg: &RunConfig,
    model: &Lm,
    sampler: &mut TrainSampler,
    micro: &MicroBatches,
    world: &World,
    stop: &StopSignal,
    device: &Device,
    train_device: &Device,
) -> Result<(f32, GradientsParams, bool), TrainError> {
    let mut accum = GradientsAccumulator::<Lm>::new();
    // One slot per global micro-batch loss, then the stop flag.
    let mut extras = vec![0.0f32; micro.total + 1];
    for (j, slot) in extras.iter_mut().enumerate().take(micro.total) {
        if !micro.is_mine(j) {
            sampler.skip(micro.size);
            continue;
        }
        let batch = TokenBatcher.make(&sampler.next_batch(micro.size), train_device);
        // Through the weights in the compute precision (a fresh view each time: backward
        // consumes its casts); gradients land on the f32 master weights.
        let compute = precision::compute_view(model, cfg.train.dtype);
        let loss = compute.loss(batch.inputs, batch.targets);
        *slot = loss.clone().into_scalar::<f32>();
        let loss = if micro.total > 1 {
            loss.div_scalar(micro.total as f64)
        } else {
            loss
        };
        accum.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
    }
    let mut grads = accum.grads();
    extras[micro.total] = f32::from(u8::from(stop.is_requested()));
    world.reduce_gradients(model, &mut grads, &mut extras, device)?;
    let loss_sum: f64 = extras[..micro.total].iter().map(|&l| l as f64).sum();
    let loss = (loss_sum / micro.total as f64) as f32;
    Ok((loss, grads, extras[micro.total] > 0.0))
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
