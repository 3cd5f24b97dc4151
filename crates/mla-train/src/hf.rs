//! HuggingFace directories: import weights for fine-tuning, export a checkpoint so that
//! `transformers` loads it without custom code (`DeepseekV2ForCausalLM` for MLA,
//! `LlamaForCausalLM` for mha/gqa/mqa). The weight mapping itself is `mla_model::hf`; the
//! config keys follow scripts/reference/hf_config.md (checked with transformers 5.24).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use mla_model::hf::{self, HfArch, HfError, Layout};
use mla_model::{AttentionConfig, Lm, ModelConfig};
use serde_json::{Value, json};

/// A model with `cfg`'s architecture and the weights of the HF directory `dir`.
pub fn load_pretrained(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Lm, HfError> {
    let tensors = hf::read_dir(dir)?;
    hf::import(Lm::new(cfg, device), tensors, Layout::Hf).map_err(|source| HfError::Mismatch {
        path: dir.to_path_buf(),
        source,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "transformers requires d_model ({d_model}) to be a multiple of n_heads ({n_heads}) \
         for {arch}; this model cannot be exported to it"
    )]
    HeadsDoNotDivide {
        d_model: usize,
        n_heads: usize,
        arch: &'static str,
    },
    #[error("{0} exists and is not empty; choose another --out or remove it")]
    Exists(PathBuf),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// Write `model.safetensors`, `config.json` and (when given) `tokenizer.json` into `out`,
/// through a temporary directory renamed into place.
pub fn export(
    model: &Lm,
    out: &Path,
    tokenizer: Option<&Path>,
    eos_token_id: Option<u32>,
) -> Result<(), ExportError> {
    let cfg = model.config();
    let arch = HfArch::of(cfg);
    if !cfg.d_model.is_multiple_of(cfg.n_heads) {
        return Err(ExportError::HeadsDoNotDivide {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            arch: arch.class_name(),
        });
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ExportError::Exists(out.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ExportError::Io {
            path,
            message: e.to_string(),
        }
    };
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    hf::write_safetensors(
        &tmp.join("model.safetensors"),
        &hf::export(model, Layout::Hf),
        Some(metadata),
    )?;
    let config = serde_json::to_string_pretty(&config_json(cfg, eos_token_id)).expect("json");
    std::fs::write(tmp.join("config.json"), config).map_err(io(&tmp))?;
    if let Some(t) = tokenizer {
        std::fs::copy(t, tmp.join("tokenizer.json")).map_err(io(t))?;
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))
}

/// `config.json` for `transformers` (both the 5.x `rope_parameters` and the 4.x
/// `rope_theta`/`rope_scaling` spellings, identical).
pub fn config_json(cfg: &ModelConfig, eos_token_id: Option<u32>) -> Value {
    let arch = HfArch::of(cfg);
    let rope = match &cfg.rope_scaling {
        None => json!({"rope_type": "default", "rope_theta": cfg.rope_theta}),
        Some(y) => json!({
            "rope_type": "yarn",
            "type": "yarn",
            "rope_theta": cfg.rope_theta,
            "factor": y.factor,
            "original_max_position_embeddings": y.original_max_position_embeddings,
            "beta_fast": y.beta_fast,
            "beta_slow": y.beta_slow,
            "mscale": y.mscale,
            "mscale_all_dim": y.mscale_all_dim,
            // transformers only infers this ratio when both mscales are non-zero.
            "attention_factor": y.attention_factor(),
        }),
    };
    let mut c = json!({
        "architectures": [arch.class_name()],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope.clone(),
        "rope_theta": cfg.rope_theta,
        "rope_scaling": if cfg.rope_scaling.is_some() { rope } else { Value::Null },
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": cfg.init_std,
        "dtype": "float32",
        "torch_dtype": "float32",
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": Value::Null,
    });
    let m = c.as_object_mut().expect("object");
    match cfg.attention {
        AttentionConfig::Standard(a) => {
            m.insert("model_type".into(), json!("llama"));
            m.insert("num_key_value_heads".into(), json!(a.n_kv_heads));
            m.insert("head_dim".into(), json!(a.head_dim));
        }
        AttentionConfig::Latent(l) => {
            // No head_dim: DeepseekV2Config derives it. K/V are expanded per head.
            m.insert("model_type".into(), json!("deepseek_v2"));
            m.insert("num_key_value_heads".into(), json!(cfg.n_heads));
            m.insert("q_lora_rank".into(), json!(l.q_lora_rank));
            m.insert("kv_lora_rank".into(), json!(l.kv_lora_rank));
            m.insert("qk_nope_head_dim".into(), json!(l.qk_nope_head_dim));
            m.insert("qk_rope_head_dim".into(), json!(l.qk_rope_head_dim));
            m.insert("v_head_dim".into(), json!(l.v_head_dim));
            // A dense SwiGLU in every layer: no experts.
            m.insert("first_k_dense_replace".into(), json!(cfg.n_layers));
        }
    }
    c
}

/// The YaRN factor an export folds into Llama's q_proj (documented for users).
pub fn llama_q_fold(cfg: &ModelConfig) -> Option<f64> {
    match (&cfg.attention, &cfg.rope_scaling) {
        (AttentionConfig::Standard(_), Some(y)) if y.softmax_factor() != 1.0 => {
            Some(y.softmax_factor())
        }
        _ => None,
    }
}
