//! Run metrics: `metrics.jsonl` (one JSON object a line, flushed per line, so a killed run
//! leaves whole lines) and TensorBoard scalars under `tb/`.
//!
//! Train lines carry `step`, `tokens`, `loss`, `lr`, `grad_norm`, `tokens_per_s`, `elapsed_s`,
//! and where known `mfu` (a fraction) and `peak_memory_bytes` (rank 0's); eval lines carry `step`, `tokens`, `val_loss`, `val_ppl`, `elapsed_s`.

use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::error::{TrainError, io};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub step: u64,
    pub tokens: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Model FLOPs utilisation of one device (0..1), when its peak is known or given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Peak memory so far: RSS on CPU, the CUDA allocator's peak on a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub tokens: u64,
    pub val_loss: f32,
    pub val_ppl: f32,
    pub elapsed_s: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

pub struct Metrics {
    path: PathBuf,
    file: fs::File,
    tb: Option<SummaryWriter>,
}

impl Metrics {
    /// Open `run_dir/metrics.jsonl` for appending. On resume from step `resume_step`, lines of
    /// later steps (written after that checkpoint by the interrupted run) are dropped first, so
    /// the file reads as one uninterrupted run.
    pub fn open(
        run_dir: &Path,
        tensorboard: bool,
        resume_step: Option<u64>,
    ) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        match resume_step {
            Some(step) => truncate_after(&path, step)?,
            None => {
                if path.exists() {
                    fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                }
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let tb = tensorboard.then(|| SummaryWriter::new(run_dir.join("tb")));
        Ok(Self { path, file, tb })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(record).expect("records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(io(format!("writing {}", self.path.display())))
    }

    pub fn train(&mut self, r: &TrainRecord) -> Result<(), TrainError> {
        if let Some(tb) = &mut self.tb {
            let step = r.step as usize;
            tb.add_scalar("train/loss", r.loss, step);
            tb.add_scalar("train/lr", r.lr as f32, step);
            tb.add_scalar("train/grad_norm", r.grad_norm as f32, step);
            tb.add_scalar("train/tokens_per_s", r.tokens_per_s as f32, step);
            if let Some(m) = r.mfu {
                tb.add_scalar("train/mfu", m as f32, step);
            }
            if let Some(b) = r.peak_memory_bytes {
                tb.add_scalar(
                    "train/peak_memory_gib",
                    b as f32 / (1u64 << 30) as f32,
                    step,
                );
            }
        }
        self.write(&Record::Train(r.clone()))
    }

    pub fn eval(&mut self, r: &EvalRecord) -> Result<(), TrainError> {
        if let Some(tb) = &mut self.tb {
            tb.add_scalar("val/loss", r.val_loss, r.step as usize);
            tb.add_scalar("val/ppl", r.val_ppl, r.step as usize);
        }
        self.write(&Record::Eval(r.clone()))
    }

    /// Flush TensorBoard and stop its writer thread (tensorboard-rs only writes on drop).
    pub fn close(mut self) {
        if let Some(mut tb) = self.tb.take() {
            tb.flush();
            drop(tb);
        }
    }
}

/// Every record of a `metrics.jsonl` (a torn last line from a killed run is skipped).
pub fn read(path: &Path) -> Result<Vec<Record>, TrainError> {
    let file = fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut out = vec![];
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io(format!("reading {}", path.display())))?;
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

fn truncate_after(path: &Path, step: u64) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<Record> = read(path)?
        .into_iter()
        .filter(|r| r.step() <= step)
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r).expect("records serialise"));
        text.push('\n');
    }
    fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("replacing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> TrainRecord {
        TrainRecord {
            step,
            tokens: step * 64,
            loss: 1.0 / step as f32,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens_per_s: 100.0,
            elapsed_s: step as f64,
            mfu: step.is_multiple_of(2).then_some(0.25),
            peak_memory_bytes: Some(1 << 20),
        }
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Metrics::open(dir.path(), false, None).unwrap();
        for s in 1..=5 {
            m.train(&train(s)).unwrap();
        }
        m.eval(&EvalRecord {
            step: 4,
            tokens: 256,
            val_loss: 2.0,
            val_ppl: 2f32.exp(),
            elapsed_s: 4.0,
        })
        .unwrap();
        drop(m);
        // A SIGKILL mid-write leaves a torn line.
        let path = dir.path().join("metrics.jsonl");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\": 6, \"tok").unwrap();
        let m = Metrics::open(dir.path(), false, Some(4)).unwrap();
        drop(m);
        let steps: Vec<u64> = read(&path).unwrap().iter().map(Record::step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 4]);
        // Floats survive the round trip exactly.
        let Record::Train(r) = &read(&path).unwrap()[2] else {
            panic!()
        };
        assert_eq!(r.loss, 1.0 / 3.0);
    }
}
