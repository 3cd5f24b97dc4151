//! A run's TOML config: one plain serde struct per section, `deny_unknown_fields`, read with
//! `--set section.key=value` overrides and validated into a [`RunConfig`] whose every value is
//! explicit. The resolved config is what a run directory and each checkpoint store.
//!
//! Relative paths (data globs, tokenizer, checkpoints) are relative to the directory `mla` runs
//! from, as in nanoGPT and llm.c.

use std::path::{Path, PathBuf};

use mla_model::attention::sdpa::AttentionKernel;
use mla_model::{ModelConfig, ModelSection};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The whole file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Run name: the run directory is `runs/<name>/` (default: the config file's stem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub optim: OptimSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub dist: DistSection,
}

/// `[data]`: token shards and the tokenizer that made them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Glob of training shards (llm.c `.bin`), e.g. `data/shakespeare/train_*.bin`.
    pub train: String,
    /// Glob of validation shards; empty = no evaluation.
    #[serde(default)]
    pub val: String,
    /// `tokenizer.json` the shards were made with; gives `[model] vocab_size` when left out.
    #[serde(default)]
    pub tokenizer: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDType {
    /// Full f32 training (default).
    #[default]
    F32,
    /// bf16 tensors throughout (weights, activations, optimizer moments): see README.
    Bf16,
}

/// `[train]`: what one optimizer step sees, and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Tokens per sequence (default: `[model] max_seq_len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Sequences per optimizer step; a multiple of `micro_batch` (default: `micro_batch`).
    /// Gradient accumulation runs `global_batch / micro_batch` micro-steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    /// Stop after this many optimizer steps...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// ...or this many training tokens (rounded up to whole steps). Give exactly one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Seeds weight init and the data order.
    pub seed: u64,
    /// `cpu` (burn flex), `tch-cpu`, `cuda`, `cuda:N` (the last three need `--features tch`).
    pub device: String,
    pub dtype: TrainDType,
    /// `fused` (default): attention as one op with its own backward, memory linear in the
    /// context; `explicit`: scores materialised, as before it (to compare against).
    pub attention_kernel: AttentionKernel,
    /// The device's peak TFLOPS in the training dtype, for the MFU in the log (default: known
    /// for NVIDIA data-centre cards, by name; none on CPU, where MFU is then not reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_tflops: Option<f64>,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            seq_len: None,
            micro_batch: 8,
            global_batch: None,
            max_steps: None,
            max_tokens: None,
            seed: 1337,
            device: "cpu".into(),
            dtype: TrainDType::F32,
            attention_kernel: AttentionKernel::Fused,
            peak_tflops: None,
        }
    }
}

/// `[optim]`: AdamW with decoupled weight decay and global-norm gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay embeddings too (default: no decay on embeddings, norms or biases).
    pub decay_embeddings: bool,
    pub decay_norms: bool,
    /// Clip the global gradient norm to this (as `torch.nn.utils.clip_grad_norm_`); 0 = off.
    pub grad_clip: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_embeddings: false,
            decay_norms: false,
            grad_clip: 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayKind {
    /// Cosine from the peak to `min_lr` over the steps after warmup.
    #[default]
    Cosine,
    /// Warmup-stable-decay: constant peak, then linear decay to `min_lr` over the last
    /// `decay_fraction` of the steps.
    Wsd,
    /// Constant peak after warmup.
    Constant,
}

/// `[schedule]`: linear warmup, then cosine, WSD or constant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub warmup_steps: u64,
    pub decay: DecayKind,
    /// Final learning rate (absolute).
    pub min_lr: f64,
    /// WSD only: fraction of all steps spent decaying.
    pub decay_fraction: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            decay: DecayKind::Cosine,
            min_lr: 1e-4,
            decay_fraction: 0.2,
        }
    }
}

/// `[eval]`: validation loss every `every` steps over `batches` micro-batches, and at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// 0 = only at the end.
    pub every: u64,
    pub batches: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every: 0,
            batches: 20,
        }
    }
}

/// `[checkpoint]`: periodic checkpoints, and where a fine-tune starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// 0 = only at the end (and on Ctrl-C).
    pub every: u64,
    /// Keep the last K checkpoints (at least 1).
    pub keep_last: usize,
    /// Directory (default `<run dir>/checkpoints`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Fine-tune: load model weights (only) from this run directory or checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Fine-tune: load model weights from a HuggingFace directory (DeepseekV2 / Llama).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from_hf: Option<String>,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 0,
            keep_last: 3,
            dir: None,
            init_from: None,
            init_from_hf: None,
        }
    }
}

/// `[log]`: console/metrics.jsonl cadence and TensorBoard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub every: u64,
    pub tensorboard: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            every: 10,
            tensorboard: true,
        }
    }
}

/// `[dist]`: data-parallel training under torchrun (read only when WORLD_SIZE > 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// How long a rank waits for the others (joining, and each collective) before it gives up
    /// with an error. A rank that dies is usually noticed at once (its sockets close); this
    /// bounds the rest (a hung or unreachable peer).
    pub timeout_s: u64,
}

impl Default for DistSection {
    fn default() -> Self {
        Self { timeout_s: 300 }
    }
}

/// A validated run config: the model resolved, every default explicit.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub name: String,
    pub model: ModelConfig,
    pub data: DataSection,
    pub train: TrainSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    pub eval: EvalSection,
    pub checkpoint: CheckpointSection,
    pub log: LogSection,
    pub dist: DistSection,
    /// `[model]` keys of another attention type than the one chosen, set aside rather than
    /// refused (a recipe switched with `--set model.attention=mha`); the CLI names them.
    pub set_aside: Vec<&'static str>,
}

impl RunConfig {
    pub fn seq_len(&self) -> usize {
        self.train.seq_len.expect("resolved")
    }

    pub fn global_batch(&self) -> usize {
        self.train.global_batch.expect("resolved")
    }

    pub fn grad_accum(&self) -> usize {
        self.global_batch() / self.train.micro_batch
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.global_batch() * self.seq_len()) as u64
    }

    pub fn max_steps(&self) -> u64 {
        self.train.max_steps.expect("resolved")
    }

    /// The resolved config as a TOML file that resolves back to itself.
    pub fn to_toml(&self) -> String {
        let file = RunFile {
            name: Some(self.name.clone()),
            model: self.model.to_section(),
            data: self.data.clone(),
            train: self.train.clone(),
            optim: self.optim.clone(),
            schedule: self.schedule.clone(),
            eval: self.eval.clone(),
            checkpoint: self.checkpoint.clone(),
            log: self.log.clone(),
            dist: self.dist.clone(),
        };
        toml::to_string(&file).expect("a resolved config always serialises")
    }

    /// Read a resolved config as written by [`Self::to_toml`] (run directories, checkpoints).
    pub fn from_resolved_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            cause: e,
        })?;
        let table = parse_table(path, &text)?;
        let file = deserialize(path, table)?;
        let name = file.name.clone().unwrap_or_else(|| stem(path));
        resolve(file, name, None)
    }
}

/// Gives the vocabulary size of the tokenizer at a path (or why it cannot).
pub type VocabOf<'a> = &'a dyn Fn(&Path) -> Result<usize, String>;

/// Read `path`, apply `--set section.key=value` overrides, validate.
///
/// `vocab_from_tokenizer` is asked for the vocabulary size when `[model] vocab_size` is left
/// out (and to check one that is given); it gets the `[data] tokenizer` path.
pub fn load(
    path: &Path,
    overrides: &[String],
    vocab_from_tokenizer: VocabOf,
) -> Result<RunConfig, ConfigError> {
    load_inheriting(path, overrides, vocab_from_tokenizer, None)
}

/// As [`load`], except that a file without a `[model]` section takes `inherit` (a fine-tune's
/// source model), before the overrides (so `--set model.max_seq_len=...` extends it).
pub fn load_inheriting(
    path: &Path,
    overrides: &[String],
    vocab_from_tokenizer: VocabOf,
    inherit: Option<&ModelSection>,
) -> Result<RunConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        cause: e,
    })?;
    let mut table = parse_table(path, &text)?;
    if let Some(model) = inherit
        && !table.contains_key("model")
    {
        let value = toml::Value::try_from(model).expect("a model section serialises");
        table.insert("model".into(), value);
    }
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    let file = deserialize(path, table)?;
    let name = file.name.clone().unwrap_or_else(|| stem(path));
    resolve(file, name, Some(vocab_from_tokenizer))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned())
}

fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn deserialize(path: &Path, table: toml::Table) -> Result<RunFile, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
        key: e.path().to_string(),
        message: format!("{} (in {})", e.inner(), path.display()),
    })
}

/// `section.key=value`: the value is TOML (`3`, `1e-3`, `true`, `"text"`, `[1, 2]`); anything
/// that does not parse as TOML is taken as a string, so `--set data.train=data/x/*.bin` works.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Override {
        assignment: assignment.to_string(),
        message,
    };
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value".into()))?;
    let key = key.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!("{key:?} is not a dotted key")));
    }
    let (last, path) = parts.split_last().expect("non-empty");
    let mut node = table;
    for part in path {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| bad(format!("{part} is not a section")))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

fn resolve(
    mut f: RunFile,
    name: String,
    vocab_from_tokenizer: Option<VocabOf>,
) -> Result<RunConfig, ConfigError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(invalid(
            "name",
            format!("{name:?} must be a plain directory name"),
        ));
    }
    // Vocabulary: from the tokenizer when left out; never smaller than the tokenizer's.
    if let Some(vocab_of) = vocab_from_tokenizer
        && !f.data.tokenizer.is_empty()
    {
        let path = PathBuf::from(&f.data.tokenizer);
        let tok_vocab = vocab_of(&path).map_err(|e| invalid("data.tokenizer", e))?;
        let with_preset = f.model.with_preset().map_err(model_err)?;
        match with_preset.vocab_size {
            None => f.model.vocab_size = Some(tok_vocab),
            Some(v) if v < tok_vocab => {
                return Err(invalid(
                    "model.vocab_size",
                    format!(
                        "{v} is smaller than the tokenizer's vocabulary ({tok_vocab} ids in {}); \
                         raise it or leave it out to take the tokenizer's",
                        path.display()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let set_aside = f.model.set_aside_other_family();
    let model = f.model.resolve().map_err(model_err)?;

    if f.data.train.is_empty() {
        return Err(invalid(
            "data.train",
            "missing; give a glob of training shards, e.g. \"data/shakespeare/train_*.bin\"",
        ));
    }
    let t = &mut f.train;
    let seq_len = t.seq_len.unwrap_or(model.max_seq_len);
    if seq_len == 0 || seq_len > model.max_seq_len {
        return Err(invalid(
            "train.seq_len",
            format!(
                "must be in 1..={} ([model] max_seq_len), got {seq_len}",
                model.max_seq_len
            ),
        ));
    }
    t.seq_len = Some(seq_len);
    if t.micro_batch == 0 {
        return Err(invalid("train.micro_batch", "must be positive"));
    }
    let global = t.global_batch.unwrap_or(t.micro_batch);
    if global == 0 || !global.is_multiple_of(t.micro_batch) {
        return Err(invalid(
            "train.global_batch",
            format!(
                "must be a positive multiple of micro_batch = {}, got {global}",
                t.micro_batch
            ),
        ));
    }
    t.global_batch = Some(global);
    let tokens_per_step = (global * seq_len) as u64;
    t.max_steps = match (t.max_steps, t.max_tokens) {
        (Some(0), _) => return Err(invalid("train.max_steps", "must be positive")),
        (Some(s), None) => Some(s),
        (None, Some(0)) => return Err(invalid("train.max_tokens", "must be positive")),
        (None, Some(n)) => Some(n.div_ceil(tokens_per_step)),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "train.max_tokens",
                "give either max_steps or max_tokens, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "train.max_steps",
                "missing; give max_steps or max_tokens",
            ));
        }
    };
    crate::device::parse(&t.device).map_err(|e| invalid("train.device", e.to_string()))?;

    let o = &f.optim;
    let positive = |key: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(invalid(key, format!("must be a positive number, got {v}")))
        }
    };
    positive("optim.lr", o.lr)?;
    positive("optim.eps", o.eps)?;
    for (key, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(invalid(key, format!("must be in [0, 1), got {b}")));
        }
    }
    if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
        return Err(invalid("optim.weight_decay", "must be >= 0"));
    }
    if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
        return Err(invalid(
            "optim.grad_clip",
            "must be >= 0 (0 turns clipping off)",
        ));
    }
    let s = &f.schedule;
    if !(s.min_lr >= 0.0 && s.min_lr <= o.lr) {
        return Err(invalid(
            "schedule.min_lr",
            format!("must be in [0, optim.lr = {}], got {}", o.lr, s.min_lr),
        ));
    }
    if s.warmup_steps > t.max_steps.unwrap() {
        return Err(invalid(
            "schedule.warmup_steps",
            format!(
                "{} is more than the {} training steps",
                s.warmup_steps,
                t.max_steps.unwrap()
            ),
        ));
    }
    if !(s.decay_fraction > 0.0 && s.decay_fraction <= 1.0) {
        return Err(invalid("schedule.decay_fraction", "must be in (0, 1]"));
    }
    if f.eval.batches == 0 {
        return Err(invalid("eval.batches", "must be positive"));
    }
    if f.checkpoint.keep_last == 0 {
        return Err(invalid(
            "checkpoint.keep_last",
            "must be at least 1 (resume needs one)",
        ));
    }
    if f.checkpoint.init_from.is_some() && f.checkpoint.init_from_hf.is_some() {
        return Err(invalid(
            "checkpoint.init_from_hf",
            "give either init_from or init_from_hf, not both",
        ));
    }
    if f.log.every == 0 {
        return Err(invalid("log.every", "must be positive"));
    }
    if let Some(p) = f.train.peak_tflops
        && !(p.is_finite() && p > 0.0)
    {
        return Err(invalid(
            "train.peak_tflops",
            format!("must be a positive number of TFLOPS, got {p}"),
        ));
    }
    if f.dist.timeout_s == 0 {
        return Err(invalid("dist.timeout_s", "must be at least 1 second"));
    }
    Ok(RunConfig {
        name,
        model,
        data: f.data,
        train: f.train,
        optim: f.optim,
        schedule: f.schedule,
        eval: f.eval,
        checkpoint: f.checkpoint,
        log: f.log,
        dist: f.dist,
        set_aside,
    })
}

fn model_err(e: mla_model::ConfigError) -> ConfigError {
    ConfigError::Invalid {
        key: format!("model.{}", e.key),
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
preset = "tiny-mla"
[data]
train = "data/x/train_*.bin"
[train]
max_steps = 10
"#;

    fn load_str(text: &str, overrides: &[&str]) -> Result<RunConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        load(&path, &overrides, &|_| Ok(100))
    }

    #[test]
    fn defaults_resolve_and_round_trip() {
        let cfg = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(cfg.name, "cfg");
        assert_eq!(cfg.seq_len(), 64);
        assert_eq!(cfg.grad_accum(), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, cfg.to_toml()).unwrap();
        assert_eq!(RunConfig::from_resolved_file(&path).unwrap(), cfg);
    }

    #[test]
    fn overrides_apply_with_types() {
        let cfg = load_str(
            MINIMAL,
            &[
                "train.micro_batch=4",
                "train.global_batch=16",
                "optim.lr=3e-4",
                "data.train=data/y/*.bin",
                "log.tensorboard=false",
            ],
        )
        .unwrap();
        assert_eq!(cfg.grad_accum(), 4);
        assert_eq!(cfg.optim.lr, 3e-4);
        assert_eq!(cfg.data.train, "data/y/*.bin");
        assert!(!cfg.log.tensorboard);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["train.micro_bach=4"],
                "train",
                "unknown field `micro_bach`",
            ),
            (
                &["train.micro_batch=\"four\""],
                "train.micro_batch",
                "invalid type",
            ),
            (
                &["train.global_batch=12", "train.micro_batch=8"],
                "train.global_batch",
                "multiple",
            ),
            (&["train.seq_len=65"], "train.seq_len", "max_seq_len"),
            (
                &["model.preset=\"tiny-mha\"", "model.n_heads=3"],
                "model.n_heads",
                "divide",
            ),
            (&["optim.beta2=1.5"], "optim.beta2", "[0, 1)"),
            (&["train.max_tokens=100"], "train.max_tokens", "not both"),
            (&["schedule.min_lr=1.0"], "schedule.min_lr", "optim.lr"),
            (&["train.device=tpu"], "train.device", "tpu"),
            (
                &["checkpoint.keep_last=0"],
                "checkpoint.keep_last",
                "at least 1",
            ),
            (&["bogus.key=1"], "", "unknown field `bogus`"),
            (
                &["data.tokenizer=t.json", "model.vocab_size=50"],
                "model.vocab_size",
                "smaller than the tokenizer",
            ),
        ];
        for (overrides, key, needle) in cases {
            let e = load_str(MINIMAL, overrides).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(needle), "{overrides:?}: {msg}");
            if let ConfigError::Invalid { key: k, .. } = &e {
                assert!(k.starts_with(key), "{overrides:?}: key {k}");
            }
        }
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = load_str("[model]\npreset = \n", &[]).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn vocab_comes_from_the_tokenizer() {
        let no_vocab = "[model]\nattention = 'mha'\nd_model = 32\nn_layers = 1\nn_heads = 2\n\
                        max_seq_len = 16\n[data]\ntrain = 'x'\ntokenizer = 't.json'\n\
                        [train]\nmax_steps = 1\n";
        assert_eq!(load_str(no_vocab, &[]).unwrap().model.vocab_size, 100);
        // Given and large enough: kept.
        let cfg = load_str(MINIMAL, &["data.tokenizer=t.json"]).unwrap();
        assert_eq!(cfg.model.vocab_size, 256);
    }
}
