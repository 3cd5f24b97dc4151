//! HuggingFace directories: import weights for fine-tuning, export a checkpoint so that
//! `transformers` loads it without custom code (`DeepseekV2ForCausalLM` for MLA,
//! `LlamaForCausalLM` for mha/gqa/mqa). The weight mapping itself is `mla_model::hf`.

use std::path::Path;

use burn::tensor::Device;
use mla_model::hf::{self, HfArch, HfError};
use mla_model::{AttentionConfig, Lm, ModelConfig};
use serde_json::{Value, json};

/// A model with `cfg`'s architecture and the weights of the HF directory `dir`.
pub fn load_pretrained(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Lm, HfError> {
    let tensors = hf::read_dir(dir)?;
    hf::import(Lm::new(cfg, device), tensors).map_err(|source| HfError::Mismatch {
        path: dir.to_path_buf(),
        source,
    })
}

/// `config.json` for `transformers`.
pub fn config_json(cfg: &ModelConfig, eos_token_id: Option<u32>) -> Value {
    let arch = HfArch::of(cfg);
    let mut c = json!({
        "architectures": [arch.class_name()],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let m = c.as_object_mut().expect("object");
    if let Some(eos) = eos_token_id {
        m.insert("eos_token_id".into(), json!(eos));
        m.insert("bos_token_id".into(), json!(eos));
    }
    match cfg.attention {
        AttentionConfig::Standard(a) => {
            m.insert("model_type".into(), json!("llama"));
            m.insert("num_key_value_heads".into(), json!(a.n_kv_heads));
            m.insert("head_dim".into(), json!(a.head_dim));
            m.insert("mlp_bias".into(), json!(false));
        }
        AttentionConfig::Latent(l) => {
            m.insert("model_type".into(), json!("deepseek_v2"));
            m.insert("num_key_value_heads".into(), json!(cfg.n_heads));
            m.insert("q_lora_rank".into(), json!(l.q_lora_rank));
            m.insert("kv_lora_rank".into(), json!(l.kv_lora_rank));
            m.insert("qk_nope_head_dim".into(), json!(l.qk_nope_head_dim));
            m.insert("qk_rope_head_dim".into(), json!(l.qk_rope_head_dim));
            m.insert("v_head_dim".into(), json!(l.v_head_dim));
            m.insert("head_dim".into(), json!(l.qk_rope_head_dim));
            // Dense SwiGLU in every layer: no experts.
            m.insert("first_k_dense_replace".into(), json!(cfg.n_layers));
            m.insert("moe_intermediate_size".into(), json!(cfg.d_ff));
        }
    }
    if let Some(y) = &cfg.rope_scaling {
        m.insert(
            "rope_scaling".into(),
            json!({
                "type": "yarn",
                "rope_type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "mscale": y.mscale,
                "mscale_all_dim": y.mscale_all_dim,
            }),
        );
    }
    c
}
