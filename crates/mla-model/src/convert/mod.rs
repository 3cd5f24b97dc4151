//! Weight surgery: a trained mha/gqa/mqa model into DeepSeek-V2's MLA, as MHA2MLA
//! (arXiv:2502.14837) and TransMLA (arXiv:2502.07864) do it, then recovered by fine-tuning.
//!
//! 1. **Partial RoPE** ([`partial_rope`]): each key/value head keeps rotary position on `k`
//!    of its pairs, chosen by a strategy (high, low, uniform, 2norm); its other dims carry no
//!    position and become the head's `nope` part.
//! 2. **One shared rotary key.** MLA caches ONE rotary key for all heads. Here it is the
//!    concatenation of the key/value heads' kept pairs: `qk_rope_head_dim = D` holds
//!    `k = D / (2 n_kv_heads)` pairs of each key/value head, and each query head's rotary
//!    slice is its own pairs in its head's block and zeros elsewhere. This is exact (the
//!    scores are those of the source with partial RoPE); what it costs is that each head keeps
//!    `D / n_kv_heads` rotated dims instead of the `D` that per-head rotary keys (MHA2MLA's
//!    cache, `n_kv_heads x D` elements) would keep. The fine-tune may then let every head use
//!    every block. The pairs are chosen once for the model (MLA's rotary frequencies are a
//!    property of the model, one table for all layers): 2norm sums each layer's normalised
//!    scores.
//! 3. **Low-rank K/V** ([`lowrank`]): per layer, a joint truncated SVD of the stacked nope-key
//!    and value projections of every query head (GQA/MQA heads replicated) gives the latent
//!    rows of `kv_a_proj_with_mqa` and `kv_b_proj`; activation-aware (PCA of the K/V outputs)
//!    with calibration tokens, and with keys optionally balanced against values first
//!    (TransMLA's BKV). The latent norm (`kv_a_layernorm`) is kept: see [`lowrank`] for how
//!    its gain absorbs it exactly at rank >= d_model, and what it costs below.
//! 4. Queries and `o_proj` are carried over, the query rows permuted into `[nope | rope]`
//!    order and scaled by `sqrt((nope + rope) / head_dim)` (MLA's softmax scale is
//!    `1/sqrt(nope + rope)`); everything else is copied.

pub mod calibration;
pub mod lowrank;
pub mod partial_rope;

use nalgebra::{DMatrix, DVector};

use crate::accounting::{self, CacheMode};
use crate::attention::mla::LATENT_NORM_EPS;
use crate::config::{
    AttentionConfig, ConfigError, LatentAttention, ModelConfig, PartialRope, StandardAttention,
    YarnConfig,
};
use crate::hf::{self, HfMismatch, HfTensor, Layout};
use crate::transformer::Lm;
use calibration::LayerStats;
use lowrank::{LowRankInput, factorise};
pub use partial_rope::RopeSelect;
use partial_rope::{pair_row, select};

/// What `mla convert` asks for.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The latent width `R` (`kv_lora_rank`).
    pub kv_lora_rank: usize,
    /// Width `D` of the shared rotary key (`qk_rope_head_dim`).
    pub qk_rope_head_dim: usize,
    pub rope_select: RopeSelect,
    /// Scale keys against values before the SVD (TransMLA's balanced KV).
    pub balance_kv: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "the source is already an MLA model (attention = \"mla\"); convert takes an mha, gqa \
         or mqa model"
    )]
    AlreadyLatent,
    #[error("--qk-rope-head-dim {got}: {reason}")]
    RopeDim { got: usize, reason: String },
    #[error(
        "--kv-lora-rank {got}: must be in 1..={full} (full rank: {heads} heads x ({nope} nope + \
         {v} value dims))"
    )]
    Rank {
        got: usize,
        full: usize,
        heads: usize,
        nope: usize,
        v: usize,
    },
    #[error(
        "--rope-select 2norm ranks pairs by query and key norms on calibration tokens: give \
         --calib SHARDS"
    )]
    NeedsCalibration,
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("the converted config is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error("rebuilding the model: {0}")]
    Weights(#[from] HfMismatch),
}

/// Calibration tokens: windows of `seq_len + 1` tokens, all of one length.
pub struct Calibration<'a> {
    pub windows: &'a [Vec<u32>],
    /// Windows per forward pass.
    pub batch: usize,
}

/// One layer's factorisation, as `mla convert` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    pub layer: usize,
    /// Singular-value energy kept by the rank-R truncation (weighted as factorised).
    pub energy_kept: f64,
    /// Relative K/V error of the truncation alone (calibration-weighted when calibrated).
    pub kv_error_truncated: f64,
    /// Relative K/V error through the latent norm, on calibration tokens (none without).
    pub kv_error_normed: Option<f64>,
    /// Key/value balance `sqrt(E‖k_nope‖² / E‖v‖²)` the keys were divided by (1 = none).
    pub kv_balance: f64,
    pub attention_params_before: usize,
    pub attention_params_after: usize,
    pub kv_cache_before: usize,
    pub kv_cache_after: usize,
}

/// A converted model, the references it is measured against, and the report.
pub struct Conversion {
    pub model: Lm,
    /// The source with exactly the partial RoPE the converted model uses (at full rank the
    /// converted model computes the same function).
    pub partial_source: Lm,
    /// The source with the per-head partial RoPE that per-head rotary keys of width D would
    /// keep (`D / 2` pairs per key/value head); `None` when it equals `partial_source`.
    pub per_head_source: Option<Lm>,
    /// The rotary pairs each key/value head keeps.
    pub pairs: Vec<Vec<usize>>,
    pub layers: Vec<LayerReport>,
}

/// The source's dims, checked against the options.
struct Plan {
    a: StandardAttention,
    groups: usize,
    /// Pairs per key/value head in the shared key.
    k: usize,
    nope: usize,
}

fn plan(cfg: &ModelConfig, opts: &ConvertOptions) -> Result<Plan, ConvertError> {
    let AttentionConfig::Standard(a) = cfg.attention else {
        return Err(ConvertError::AlreadyLatent);
    };
    let (hd, kv, d) = (a.head_dim, a.n_kv_heads, opts.qk_rope_head_dim);
    let rope_err = |reason: String| ConvertError::RopeDim { got: d, reason };
    if d == 0 || !d.is_multiple_of(2 * kv) {
        return Err(rope_err(format!(
            "must be a positive multiple of 2 x n_kv_heads = {}: the shared rotary key holds \
             the same number of rotary pairs of each of the {kv} key/value heads",
            2 * kv
        )));
    }
    let k = d / (2 * kv);
    if 2 * k >= hd {
        return Err(rope_err(format!(
            "keeps {k} of each head's {} pairs rotary, leaving no nope dims; at most {} \
             ({} pairs per head)",
            hd / 2,
            2 * kv * (hd / 2 - 1),
            hd / 2 - 1
        )));
    }
    if cfg.partial_rope.is_some() {
        return Err(rope_err(
            "the source already has partial RoPE; convert its full-RoPE parent".into(),
        ));
    }
    let nope = hd - 2 * k;
    let full = cfg.n_heads * (nope + hd);
    let r = opts.kv_lora_rank;
    if r == 0 || r > full {
        return Err(ConvertError::Rank {
            got: r,
            full,
            heads: cfg.n_heads,
            nope,
            v: hd,
        });
    }
    Ok(Plan {
        a,
        groups: cfg.n_heads / kv,
        k,
        nope,
    })
}

fn matrix(t: &HfTensor) -> DMatrix<f64> {
    DMatrix::from_row_iterator(t.shape[0], t.shape[1], t.data.iter().map(|&x| f64::from(x)))
}

fn tensor(m: &DMatrix<f64>) -> HfTensor {
    let mut data = Vec::with_capacity(m.len());
    for r in 0..m.nrows() {
        data.extend(m.row(r).iter().map(|&x| x as f32));
    }
    HfTensor {
        shape: vec![m.nrows(), m.ncols()],
        data,
    }
}

/// Pairs per key/value head for `k` pairs each: 2norm sums every layer's scores, each layer's
/// normalised to sum 1 per head so that every layer has the same say.
fn choose_pairs(
    strategy: RopeSelect,
    a: StandardAttention,
    groups: usize,
    k: usize,
    stats: Option<&[LayerStats]>,
) -> Vec<Vec<usize>> {
    let n = a.head_dim / 2;
    (0..a.n_kv_heads)
        .map(|g| {
            let scores = stats.map(|layers| {
                let mut total = vec![0.0; n];
                for st in layers {
                    let head: Vec<f64> = (0..n)
                        .map(|p| (0..groups).map(|i| st.qk_norm[g * groups + i][p]).sum())
                        .collect();
                    let sum: f64 = head.iter().sum();
                    for (t, s) in total.iter_mut().zip(&head) {
                        *t += if sum > 0.0 { s / sum } else { 0.0 };
                    }
                }
                total
            });
            select(strategy, n, k, scores.as_deref())
        })
        .collect()
}

fn with_partial(cfg: &ModelConfig, pairs: &[Vec<usize>]) -> ModelConfig {
    let mut c = cfg.clone();
    c.partial_rope = Some(PartialRope {
        dim: cfg.rope_dim(),
        pairs: pairs.concat(),
    });
    c
}

/// `source`'s weights in a model of config `cfg` (the configs differ only in their RoPE).
fn rebuild(source: &Lm, cfg: &ModelConfig) -> Result<Lm, HfMismatch> {
    let device = source.embed_tokens.weight.device();
    hf::import(
        Lm::new(cfg, &device),
        hf::export(source, Layout::Native),
        Layout::Native,
    )
}

/// Convert `source` (mha/gqa/mqa) to MLA. Calibration tokens, when given, drive 2norm,
/// the activation-aware SVD, balancing and the gain of the latent norm.
pub fn convert(
    source: &Lm,
    opts: &ConvertOptions,
    calib: Option<Calibration<'_>>,
) -> Result<Conversion, ConvertError> {
    let cfg = source.config().clone();
    let plan = plan(&cfg, opts)?;
    let Plan { a, groups, k, nope } = plan;
    let (h, kv, hd, d) = (cfg.n_heads, a.n_kv_heads, a.head_dim, cfg.d_model);
    if opts.rope_select.needs_calibration() && calib.is_none() {
        return Err(ConvertError::NeedsCalibration);
    }
    let mut tensors = hf::export(source, Layout::Native);
    let attn = |l: usize, w: &str| format!("model.layers.{l}.self_attn.{w}.weight");
    let q_w: Vec<DMatrix<f64>> = (0..cfg.n_layers)
        .map(|l| matrix(&tensors[&attn(l, "q_proj")]))
        .collect();
    let k_w: Vec<DMatrix<f64>> = (0..cfg.n_layers)
        .map(|l| matrix(&tensors[&attn(l, "k_proj")]))
        .collect();
    let stats = match &calib {
        Some(c) => {
            if c.windows.is_empty() || c.windows[0].len() < 2 {
                return Err(ConvertError::Calibration("no calibration tokens".into()));
            }
            Some(calibration::collect(
                source, a, &q_w, &k_w, c.windows, c.batch,
            ))
        }
        None => None,
    };

    let pairs = choose_pairs(opts.rope_select, a, groups, k, stats.as_deref());
    let flat = pairs.concat(); // slot s of the shared key is pair flat[s] of head s / k
    let partial_cfg = with_partial(&cfg, &pairs);
    let per_head_k = opts.qk_rope_head_dim / 2;
    let per_head_cfg = (kv > 1).then(|| {
        if per_head_k >= hd / 2 {
            cfg.clone()
        } else {
            let p = choose_pairs(opts.rope_select, a, groups, per_head_k, stats.as_deref());
            with_partial(&cfg, &p)
        }
    });

    let mut target = cfg.clone();
    let rope = opts.qk_rope_head_dim;
    target.attention = AttentionConfig::Latent(LatentAttention {
        q_lora_rank: None,
        kv_lora_rank: opts.kv_lora_rank,
        qk_nope_head_dim: nope,
        qk_rope_head_dim: rope,
        v_head_dim: hd,
    });
    target.partial_rope = Some(PartialRope {
        dim: hd,
        pairs: flat.clone(),
    });
    // A selection that is the standard RoPE of the rope slice needs no table of its own.
    let mut standard = target.clone();
    standard.partial_rope = None;
    let same = crate::rope::table_freqs(&target)
        .iter()
        .flatten()
        .zip(crate::rope::table_freqs(&standard).iter().flatten())
        .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs());
    if same {
        target.partial_rope = None;
    }
    let target = target.to_section().resolve()?;

    let style = cfg.rope_style;
    // Scores: MLA scales by 1/sqrt(nope + rope), the source by 1/sqrt(head_dim); the dims a
    // head leaves unrotated lost YaRN's table factor on q and k, which their query rows take.
    let q_fix = ((nope + rope) as f64 / hd as f64).sqrt();
    let table_factor = cfg
        .rope_scaling
        .as_ref()
        .map_or(1.0, YarnConfig::attention_factor);
    let nope_fix = table_factor * table_factor;
    // Rows of head `g` (within its head_dim) that are not rotated, pair by pair.
    let unrotated: Vec<Vec<usize>> = pairs
        .iter()
        .map(|kept| {
            (0..hd / 2)
                .filter(|p| !kept.contains(p))
                .flat_map(|p| [pair_row(style, hd, p, 0), pair_row(style, hd, p, 1)])
                .collect()
        })
        .collect();

    let mut layers = vec![];
    for l in 0..cfg.n_layers {
        let v_w = matrix(&tensors[&attn(l, "v_proj")]);
        let gamma = tensors[&format!("model.layers.{l}.input_layernorm.weight")]
            .data
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<f64>>();
        let (wq, wk) = (&q_w[l], &k_w[l]);

        // q_proj: per head [nope (unrotated rows) | rope (D: its block, zeros elsewhere)]
        let mut q = DMatrix::zeros(h * (nope + rope), d);
        for j in 0..h {
            let g = j / groups;
            let base = j * (nope + rope);
            for (i, &r) in unrotated[g].iter().enumerate() {
                q.set_row(base + i, &(wq.row(j * hd + r) * (q_fix * nope_fix)));
            }
            for (s, &p) in flat.iter().enumerate().filter(|(s, _)| s / k == g) {
                for c in 0..2 {
                    let row = wq.row(j * hd + pair_row(style, hd, p, c)) * q_fix;
                    q.set_row(base + nope + pair_row(style, rope, s, c), &row);
                }
            }
        }
        // The shared rotary key: slot s is pair flat[s] of key/value head s / k.
        let mut k_pe = DMatrix::zeros(rope, d);
        for (s, &p) in flat.iter().enumerate() {
            for c in 0..2 {
                let row = wk.row((s / k) * hd + pair_row(style, hd, p, c));
                k_pe.set_row(pair_row(style, rope, s, c), &row);
            }
        }
        // Stacked [k_nope | v] of every query head (GQA/MQA heads replicated).
        let m = h * (nope + hd);
        let mut w = DMatrix::zeros(m, d);
        for j in 0..h {
            let g = j / groups;
            let base = j * (nope + hd);
            for (i, &r) in unrotated[g].iter().enumerate() {
                w.set_row(base + i, &wk.row(g * hd + r));
            }
            for i in 0..hd {
                w.set_row(base + nope + i, &v_w.row(g * hd + i));
            }
        }

        // n = x / gamma: the calibration statistics in the space the factorisation works in
        let inv_g: Vec<f64> = gamma
            .iter()
            .map(|&g| if g != 0.0 { 1.0 / g } else { 0.0 })
            .collect();
        let inv = DMatrix::from_diagonal(&DVector::from_column_slice(&inv_g));
        let cov = stats.as_ref().map(|s| &inv * &s[l].cov_x * &inv);
        let samples: Vec<DVector<f64>> = stats.as_ref().map_or(vec![], |s| {
            s[l].samples
                .iter()
                .map(|x| x.component_mul(&DVector::from_column_slice(&inv_g)))
                .collect()
        });
        let key_rows: Vec<bool> = (0..m).map(|i| i % (nope + hd) < nope).collect();
        let kv_balance = if opts.balance_kv {
            let w_n = &w * DMatrix::from_diagonal(&DVector::from_column_slice(&gamma));
            let energy = |keys: bool| -> f64 {
                let rows: Vec<usize> = (0..m).filter(|&i| key_rows[i] == keys).collect();
                let sub = w_n.select_rows(&rows);
                match &cov {
                    Some(c) => (&sub * c * sub.transpose()).trace(),
                    None => sub.norm_squared(),
                }
            };
            let (ek, ev) = (energy(true), energy(false));
            if ek > 0.0 && ev > 0.0 {
                (ek / ev).sqrt()
            } else {
                1.0
            }
        } else {
            1.0
        };
        let row_weight: Vec<f64> = key_rows
            .iter()
            .map(|&key| if key { 1.0 / kv_balance } else { 1.0 })
            .collect();
        let f = factorise(&LowRankInput {
            w: &w,
            gamma: &gamma,
            row_weight: &row_weight,
            cov: cov.as_ref(),
            samples: &samples,
            rank: opts.kv_lora_rank,
            norm_eps: LATENT_NORM_EPS,
        });

        let mut kv_a = DMatrix::zeros(opts.kv_lora_rank + rope, d);
        kv_a.rows_mut(0, opts.kv_lora_rank).copy_from(&f.down);
        kv_a.rows_mut(opts.kv_lora_rank, rope).copy_from(&k_pe);
        for name in ["q_proj", "k_proj", "v_proj"] {
            tensors.remove(&attn(l, name));
        }
        tensors.insert(attn(l, "q_proj"), tensor(&q));
        tensors.insert(attn(l, "kv_a_proj_with_mqa"), tensor(&kv_a));
        tensors.insert(attn(l, "kv_b_proj"), tensor(&f.up));
        tensors.insert(
            format!("model.layers.{l}.self_attn.kv_a_layernorm.weight"),
            HfTensor {
                shape: vec![opts.kv_lora_rank],
                data: vec![f.gain as f32; opts.kv_lora_rank],
            },
        );
        layers.push(LayerReport {
            layer: l,
            energy_kept: f.energy_kept,
            kv_error_truncated: f.error_truncated,
            kv_error_normed: f.error_normed,
            kv_balance,
            attention_params_before: accounting::attention_params_per_layer(&cfg),
            attention_params_after: accounting::attention_params_per_layer(&target),
            kv_cache_before: accounting::kv_cache(&cfg, CacheMode::Latent)
                .elements_per_token_per_layer,
            kv_cache_after: accounting::kv_cache(&target, CacheMode::Latent)
                .elements_per_token_per_layer,
        });
    }
    let device = source.embed_tokens.weight.device();
    let model = hf::import(Lm::new(&target, &device), tensors, Layout::Native)?;
    Ok(Conversion {
        model,
        partial_source: rebuild(source, &partial_cfg)?,
        per_head_source: per_head_cfg.map(|c| rebuild(source, &c)).transpose()?,
        pairs,
        layers,
    })
}
