//! `mla export` (HuggingFace directory) and `mla logits` (dump a prompt's logits to compare
//! with another implementation).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::{Int, Tensor, TensorData};
use mla_model::hf::{self, HfTensor};
use mla_train::checkpoint::Checkpoint;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    /// Output format; `hf` = HuggingFace transformers (safetensors + config.json).
    #[arg(long, default_value = "hf")]
    format: String,
    /// Output directory (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    /// Text to run (encoded with the run's tokenizer, no special tokens added)...
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// ...or token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<u32>,
    /// Safetensors file to write: `input_ids` (int64 [1, T]) and `logits` (f32 [1, T, V]).
    #[arg(long)]
    out: PathBuf,
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    if args.format != "hf" {
        bail!(
            "unknown --format {:?}; the only format is \"hf\"",
            args.format
        );
    }
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let cfg = ckpt.config()?;
    let device = mla_train::device::parse("cpu")?.device()?;
    let model = ckpt.load_model(&cfg.model, &device)?;
    let tokenizer = (!cfg.data.tokenizer.is_empty()).then(|| PathBuf::from(&cfg.data.tokenizer));
    let tokenizer = tokenizer.filter(|t| {
        let ok = t.exists();
        if !ok {
            eprintln!(
                "warning: tokenizer {} not found; exporting without tokenizer.json",
                t.display()
            );
        }
        ok
    });
    let eos = match &tokenizer {
        Some(t) => mla_data::Tokenizer::from_file(t)?.eot_id(),
        None => None,
    };
    mla_train::hf::export(&model, &args.out, tokenizer.as_deref(), eos)?;
    if let Some(k) = mla_train::hf::llama_q_fold(&cfg.model) {
        eprintln!("note: Llama has no YaRN softmax factor; {k:.4} is folded into q_proj");
    }
    println!(
        "exported {} (step {}) as {} to {}",
        ckpt.dir.display(),
        ckpt.state.step,
        hf::HfArch::of(&cfg.model).class_name(),
        args.out.display()
    );
    Ok(())
}

pub fn run_logits(args: LogitsArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let cfg = ckpt.config()?;
    let ids: Vec<u32> = match &args.prompt {
        Some(text) => mla_data::Tokenizer::from_file(&cfg.data.tokenizer)
            .with_context(|| "the run's tokenizer is needed to encode --prompt")?
            .encode(text)?,
        None => args.ids.clone(),
    };
    if ids.is_empty() || ids.len() > cfg.model.max_seq_len {
        bail!(
            "need 1..={} tokens, got {}",
            cfg.model.max_seq_len,
            ids.len()
        );
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= cfg.model.vocab_size) {
        bail!(
            "token id {bad} is outside the vocabulary ({})",
            cfg.model.vocab_size
        );
    }
    let device = mla_train::device::parse("cpu")?.device()?;
    let model = ckpt.load_model(&cfg.model, &device)?;
    let t = ids.len();
    let input: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let logits = model.forward(Tensor::<2, Int>::from_data(
        TensorData::new(input, [1, t]),
        &device,
    ));
    let v = cfg.model.vocab_size;
    let mut out = BTreeMap::new();
    out.insert(
        "input_ids".to_string(),
        HfTensor {
            shape: vec![1, t],
            data: ids.iter().map(|&i| i as f32).collect(),
        },
    );
    out.insert(
        "logits".to_string(),
        HfTensor {
            shape: vec![1, t, v],
            data: logits
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 logits"),
        },
    );
    let meta = HashMap::from([("checkpoint".to_string(), ckpt.dir.display().to_string())]);
    write_with_int_ids(&args.out, out, meta)?;
    println!("wrote {} ({t} tokens)", args.out.display());
    Ok(())
}

/// `input_ids` as int64 (what PyTorch wants), `logits` as f32.
fn write_with_int_ids(
    path: &std::path::Path,
    tensors: BTreeMap<String, HfTensor>,
    meta: HashMap<String, String>,
) -> anyhow::Result<()> {
    use safetensors::{Dtype, tensor::TensorView};
    let ids: Vec<u8> = tensors["input_ids"]
        .data
        .iter()
        .flat_map(|&x| (x as i64).to_le_bytes())
        .collect();
    let logits: Vec<u8> = tensors["logits"]
        .data
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let views = vec![
        (
            "input_ids",
            TensorView::new(Dtype::I64, tensors["input_ids"].shape.clone(), &ids)?,
        ),
        (
            "logits",
            TensorView::new(Dtype::F32, tensors["logits"].shape.clone(), &logits)?,
        ),
    ];
    safetensors::serialize_to_file(views, Some(meta), path)
        .with_context(|| format!("writing {}", path.display()))
}
