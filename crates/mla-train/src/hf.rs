//! HuggingFace directories: import weights for fine-tuning, export a checkpoint so that
//! `transformers` loads it without custom code (`DeepseekV2ForCausalLM` for MLA,
//! `LlamaForCausalLM` for mha/gqa/mqa). The weight mapping itself is `mla_model::hf`; the
//! config keys follow scripts/reference/hf_config.md (checked with transformers 5.24).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use mla_model::hf::{self, HfArch, HfError, Layout};
use mla_model::{
    AttentionConfig, AttentionKind, Lm, ModelConfig, ModelSection, RopeStyle, YarnConfig,
};
use serde_json::{Value, json};

/// A model with `cfg`'s architecture and the weights of the HF directory `dir`.
pub fn load_pretrained(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Lm, HfError> {
    let tensors = hf::read_dir(dir)?;
    hf::import(Lm::new(cfg, device), tensors, Layout::Hf).map_err(|cause| HfError::Mismatch {
        path: dir.to_path_buf(),
        cause,
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
    #[error(
        "this model has partial RoPE (rotary frequencies of pairs {pairs:?} of a {dim}-wide RoPE, \
         as `mla convert` chooses them); {arch}'s config computes its frequencies from the \
         rotary width alone and cannot express them. Convert with --rope-select uniform (and a \
         rope width that divides the head width) for an exportable model"
    )]
    PartialRope {
        pairs: Vec<usize>,
        dim: usize,
        arch: &'static str,
    },
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
    if let Some(p) = &cfg.partial_rope {
        return Err(ExportError::PartialRope {
            pairs: p.pairs.clone(),
            dim: p.dim,
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

#[derive(Debug, thiserror::Error)]
pub enum HfConfigError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The model config of an HF Llama directory (`config.json`, `LlamaForCausalLM`): mha, gqa or
/// mqa by `num_key_value_heads`, rotate-half RoPE (as Llama's weights), YaRN when
/// `rope_scaling`/`rope_parameters` say so. The inverse of [`config_json`] for Llama.
pub fn llama_config(dir: &Path) -> Result<ModelConfig, HfConfigError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| HfConfigError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| HfConfigError::Invalid {
        path: path.clone(),
        message,
    };
    let c: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let model_type = c["model_type"].as_str().unwrap_or("");
    if model_type != "llama" {
        return Err(invalid(format!(
            "model_type {model_type:?}: only Llama directories (model_type \"llama\") are read"
        )));
    }
    let int = |key: &str| -> Result<usize, HfConfigError> {
        c[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| invalid(format!("{key} is missing or not an integer")))
    };
    let (d, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    let kv = c["num_key_value_heads"]
        .as_u64()
        .map_or(heads, |v| v as usize);
    let head_dim = c["head_dim"]
        .as_u64()
        .map_or(d / heads.max(1), |v| v as usize);
    let attention = if kv == heads {
        AttentionKind::Mha
    } else if kv == 1 {
        AttentionKind::Mqa
    } else {
        AttentionKind::Gqa
    };
    for key in ["attention_bias", "mlp_bias"] {
        if c[key].as_bool() == Some(true) {
            return Err(invalid(format!("{key} = true: this model has no biases")));
        }
    }
    let rope = if c["rope_parameters"].is_object() {
        &c["rope_parameters"]
    } else {
        &c["rope_scaling"]
    };
    let rope_type = rope["rope_type"]
        .as_str()
        .or(rope["type"].as_str())
        .unwrap_or("default");
    let rope_theta = rope["rope_theta"]
        .as_f64()
        .or(c["rope_theta"].as_f64())
        .unwrap_or(10000.0);
    let rope_scaling = match rope_type {
        "default" => None,
        "yarn" => {
            let f = |key: &str, default: f64| rope[key].as_f64().unwrap_or(default);
            let y = YarnConfig {
                kind: "yarn".into(),
                factor: f("factor", 1.0),
                original_max_position_embeddings: rope["original_max_position_embeddings"]
                    .as_u64()
                    .ok_or_else(|| {
                        invalid("rope yarn needs original_max_position_embeddings".into())
                    })? as usize,
                beta_fast: f("beta_fast", 32.0),
                beta_slow: f("beta_slow", 1.0),
                mscale: f("mscale", 1.0),
                mscale_all_dim: f("mscale_all_dim", 0.0),
            };
            if let Some(af) = rope["attention_factor"].as_f64()
                && (af - y.attention_factor()).abs() > 1e-9
            {
                return Err(invalid(format!(
                    "rope attention_factor {af} differs from the mscale ratio {}; not supported",
                    y.attention_factor()
                )));
            }
            Some(y)
        }
        other => {
            return Err(invalid(format!(
                "rope type {other:?} is not supported (default or yarn)"
            )));
        }
    };
    let section = ModelSection {
        attention: Some(attention),
        vocab_size: Some(int("vocab_size")?),
        d_model: Some(d),
        n_layers: Some(int("num_hidden_layers")?),
        n_heads: Some(heads),
        n_kv_heads: Some(kv),
        head_dim: Some(head_dim),
        d_ff: Some(int("intermediate_size")?),
        max_seq_len: Some(int("max_position_embeddings")?),
        rope_theta: Some(rope_theta),
        rope_style: Some(RopeStyle::Half),
        rope_scaling,
        tie_embeddings: Some(c["tie_word_embeddings"].as_bool().unwrap_or(false)),
        rms_norm_eps: c["rms_norm_eps"].as_f64(),
        init_std: c["initializer_range"].as_f64(),
        ..Default::default()
    };
    section.resolve().map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our Llama config.json reads back into the config it came from (rope_style aside: HF
    /// weights are rotate-half, and the reader says so).
    #[test]
    fn llama_config_round_trips() {
        for extra in [
            "attention = 'mha'\nn_heads = 4",
            "attention = 'gqa'\nn_heads = 4\nn_kv_heads = 2\nrope_theta = 500000.0",
            "attention = 'mqa'\nn_heads = 4\nrope_scaling = { type = 'yarn', factor = 4.0, original_max_position_embeddings = 8, mscale_all_dim = 1.0 }",
        ] {
            let cfg: ModelSection = toml::from_str(&format!(
                "vocab_size = 40\nd_model = 32\nn_layers = 2\nd_ff = 48\nmax_seq_len = 16\nrope_style = 'half'\n{extra}"
            ))
            .unwrap();
            let cfg = cfg.resolve().unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("config.json"),
                config_json(&cfg, Some(3)).to_string(),
            )
            .unwrap();
            assert_eq!(llama_config(dir.path()).unwrap(), cfg, "{extra}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::preset("tiny-mla").unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            config_json(&cfg, None).to_string(),
        )
        .unwrap();
        let e = llama_config(dir.path()).unwrap_err().to_string();
        assert!(e.contains("deepseek_v2"), "{e}");
    }
}
