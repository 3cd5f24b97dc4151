//! Checkpoints: everything needed to continue a run exactly.
//!
//! `checkpoints/step_<N>/` holds `model.bpk` and `optim.bpk` (burnpack: parameter ids are
//! kept, so the optimizer state re-attaches), `config.toml` (the resolved run config) and
//! `state.json` ([`TrainState`]: format and version, step, tokens, data-sampler position,
//! schedule, timing). A checkpoint is written into a temporary directory, synced, and renamed
//! into place, so a crash mid-write leaves the previous one intact; `state.json` is written
//! last, and a directory without a readable one is never taken for a checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use mla_data::SamplerState;
use mla_model::Lm;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;

pub const FORMAT: &str = "mla-checkpoint";
pub const VERSION: u32 = 1;
const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const STATE_FILE: &str = "state.json";
const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} is not a checkpoint: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no checkpoint found in {0} (expected step_<N>/ directories with a state.json)")]
    NoneFound(PathBuf),
    #[error(
        "{path}: the checkpoint's model differs from the config's; differing fields: {}",
        .fields.join(", ")
    )]
    Mismatch { path: PathBuf, fields: Vec<String> },
    #[error(
        "{path}: the checkpoint's model differs from the config's in fields a fine-tune cannot \
         change: {}; only max_seq_len, rope_scaling and rope_theta may differ (a context \
         extension)",
        .fields.join(", ")
    )]
    NotAContextExtension { path: PathBuf, fields: Vec<String> },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The scheduler's position: the LR is a pure function of the step, recorded for inspection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub next_step: u64,
    pub next_lr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Where the training batches continue from (seed, epoch, cursor).
    pub sampler: SamplerState,
    pub schedule: ScheduleState,
    /// Training wall time so far (seconds), so tokens/s and ETA continue across resumes.
    pub elapsed_s: f64,
    pub best_val_loss: Option<f32>,
    /// Backend and dtype it was trained on: resume is bit-exact only on the same one.
    pub device: String,
    pub dtype: String,
    /// Ranks that trained it. The sampler position is global, so a resume may use any world
    /// size that divides the global batch.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// A checkpoint directory, validated.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
}

impl Checkpoint {
    /// Open `path`: a checkpoint directory, a `checkpoints/` directory, or a run directory
    /// (then its latest valid checkpoint).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        if path.join(STATE_FILE).exists() {
            return Self::open_dir(path);
        }
        let dir = if path.join("checkpoints").is_dir() {
            path.join("checkpoints")
        } else {
            path.to_path_buf()
        };
        if !dir.is_dir() {
            return Err(CheckpointError::Invalid {
                path: path.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        latest(&dir)?.ok_or(CheckpointError::NoneFound(dir))
    }

    fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let invalid = |reason: String| CheckpointError::Invalid {
            path: dir.to_path_buf(),
            reason,
        };
        let state_path = dir.join(STATE_FILE);
        let text =
            fs::read_to_string(&state_path).map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
        if state.format != FORMAT {
            return Err(invalid(format!(
                "format {:?}, expected {FORMAT:?}",
                state.format
            )));
        }
        if state.version != VERSION {
            return Err(invalid(format!(
                "format version {}, this build reads version {VERSION}",
                state.version
            )));
        }
        for f in [MODEL_FILE, OPTIM_FILE, CONFIG_FILE] {
            if !dir.join(f).is_file() {
                return Err(invalid(format!("{f} is missing")));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
        })
    }

    pub fn config(&self) -> Result<RunConfig, crate::error::ConfigError> {
        RunConfig::from_resolved_file(&self.dir.join(CONFIG_FILE))
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// The model with this checkpoint's weights, on `device`.
    pub fn load_model(
        &self,
        cfg: &mla_model::ModelConfig,
        device: &Device,
    ) -> Result<Lm, CheckpointError> {
        let stored = self
            .config()
            .map_err(|e| CheckpointError::Invalid {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?
            .model;
        let fields = stored.differing_fields(cfg);
        if !fields.is_empty() {
            return Err(CheckpointError::Mismatch {
                path: self.dir.clone(),
                fields,
            });
        }
        Lm::new(cfg, device)
            .try_load_file(self.model_path())
            .map_err(|e| CheckpointError::Invalid {
                path: self.model_path(),
                reason: format!("{e:?}"),
            })
    }

    /// The model with this checkpoint's weights in `cfg`, which may differ from the stored
    /// model in the fields of a context extension only ([`mla_model::CONTEXT_FIELDS`]: the
    /// RoPE tables are rebuilt from `cfg`, the weights are the same). Returns the changed
    /// fields too (`field: stored vs cfg`).
    pub fn load_model_extending(
        &self,
        cfg: &mla_model::ModelConfig,
        device: &Device,
    ) -> Result<(Lm, Vec<String>), CheckpointError> {
        let stored = self
            .config()
            .map_err(|e| CheckpointError::Invalid {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?
            .model;
        let (context, other) = cfg.context_extension_of(&stored);
        if !other.is_empty() {
            return Err(CheckpointError::NotAContextExtension {
                path: self.dir.clone(),
                fields: other,
            });
        }
        let model = Lm::new(cfg, device)
            .try_load_file(self.model_path())
            .map_err(|e| CheckpointError::Invalid {
                path: self.model_path(),
                reason: format!("{e:?}"),
            })?;
        Ok((model, context))
    }

    /// The optimizer state, re-attached to the parameters of a model loaded from here.
    pub fn load_optimizer(
        &self,
        optim: ModuleOptimizer,
    ) -> Result<ModuleOptimizer, CheckpointError> {
        let path = self.dir.join(OPTIM_FILE);
        optim.load(&path).map_err(|e| CheckpointError::Invalid {
            path,
            reason: format!("{e:?}"),
        })
    }
}

/// The valid checkpoint with the highest step in `dir`, skipping incomplete ones.
pub fn latest(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let mut steps = list(dir)?;
    steps.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(steps
        .into_iter()
        .find_map(|(_, p)| Checkpoint::open_dir(&p).ok()))
}

/// `(step, path)` of every `step_<N>` directory (valid or not).
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step_"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    Ok(out)
}

/// Write a checkpoint for `state.step` into `dir` atomically, then keep only the newest
/// `keep_last` valid ones.
pub fn save(
    dir: &Path,
    model: &Lm,
    optim: &ModuleOptimizer,
    state: &TrainState,
    config_toml: &str,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let final_dir = dir.join(format!("step_{}", state.step));
    let tmp = dir.join(format!(".tmp-step_{}-{}", state.step, std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;

    let rec_err = |p: PathBuf| {
        move |e: burn::store::RecordError| CheckpointError::Io {
            path: p,
            message: format!("{e:?}"),
        }
    };
    let model_path = tmp.join(MODEL_FILE);
    model
        .valid()
        .save_file(&model_path)
        .map_err(rec_err(model_path.clone()))?;
    let optim_path = tmp.join(OPTIM_FILE);
    optim
        .save(&optim_path)
        .map_err(rec_err(optim_path.clone()))?;
    write_synced(&tmp.join(CONFIG_FILE), config_toml.as_bytes())?;
    for f in [&model_path, &optim_path] {
        fs::File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_err(f))?;
    }
    // Written last: its presence marks the checkpoint complete.
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    write_synced(&tmp.join(STATE_FILE), json.as_bytes())?;

    // A re-save of the same step (e.g. after a resume) replaces the old one only now.
    if final_dir.exists() {
        let old = dir.join(format!(".old-step_{}-{}", state.step, std::process::id()));
        fs::rename(&final_dir, &old).map_err(io_err(&final_dir))?;
        fs::rename(&tmp, &final_dir).map_err(io_err(&tmp))?;
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        fs::rename(&tmp, &final_dir).map_err(io_err(&tmp))?;
    }
    sync_dir(dir);
    prune(dir, keep_last)?;
    Ok(final_dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on filesystems that need it.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Remove all but the newest `keep` valid checkpoints, and leftovers of interrupted writes.
pub fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let mut steps = list(dir)?;
    steps.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    let mut kept = 0;
    for (_, path) in steps {
        if kept < keep && Checkpoint::open_dir(&path).is_ok() {
            kept += 1;
        } else {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.ends_with(&format!("-{}", std::process::id()));
        if (name.starts_with(".tmp-step_") || name.starts_with(".old-step_")) && !ours {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            format: FORMAT.into(),
            version: VERSION,
            step,
            tokens: step * 10,
            sampler: SamplerState {
                seed: 1,
                epoch: 0,
                cursor: step,
                seq_len: 8,
                tokens: 1000,
            },
            schedule: ScheduleState {
                next_step: step,
                next_lr: 1e-3,
            },
            elapsed_s: 1.0,
            best_val_loss: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            world_size: 1,
        }
    }

    #[test]
    fn incomplete_checkpoints_are_skipped_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = mla_model::ModelConfig::preset("tiny-mha").unwrap();
        let device = Device::flex().autodiff();
        let model = Lm::new(&cfg, &device);
        let optim = crate::optim::build(&Default::default());
        for step in [2, 4, 6] {
            save(dir.path(), &model, &optim, &state(step), "x = 1\n", 2).unwrap();
        }
        assert!(!dir.path().join("step_2").exists(), "pruned to the last 2");
        // A crash while writing step 8: directory without state.json.
        fs::create_dir_all(dir.path().join("step_8")).unwrap();
        fs::write(dir.path().join("step_8/model.bpk"), b"partial").unwrap();
        let latest = latest(dir.path()).unwrap().unwrap();
        assert_eq!(latest.state.step, 6);
        // A corrupt state.json is not a checkpoint either.
        fs::write(dir.path().join("step_8/state.json"), b"{").unwrap();
        assert_eq!(super::latest(dir.path()).unwrap().unwrap().state.step, 6);
        let e = Checkpoint::open(&dir.path().join("step_8")).unwrap_err();
        assert!(e.to_string().contains("state.json"), "{e}");
    }

    #[test]
    fn wrong_version_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = mla_model::ModelConfig::preset("tiny-mha").unwrap();
        let model = Lm::new(&cfg, &Device::flex().autodiff());
        let optim = crate::optim::build(&Default::default());
        let p = save(dir.path(), &model, &optim, &state(3), "x = 1\n", 2).unwrap();
        let mut s = state(3);
        s.version = 99;
        fs::write(p.join(STATE_FILE), serde_json::to_string(&s).unwrap()).unwrap();
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
    }
}
