//! Statistics of a source model's attention inputs over calibration tokens: what 2norm pair
//! selection, activation-aware factorisation and balancing need.

use burn::tensor::{Int, Tensor, TensorData};
use nalgebra::{DMatrix, DVector};

use super::partial_rope::pair_row;
use crate::config::{ModelConfig, StandardAttention};
use crate::fused::rms_norm;
use crate::rope::Rope;
use crate::transformer::Lm;

/// Rows of `n` kept per layer to measure the latent norm's effect (a subsample keeps memory
/// bounded for wide models).
pub const MAX_SAMPLES: usize = 2048;

/// One layer's statistics.
pub struct LayerStats {
    pub tokens: usize,
    /// `[d, d]`: `E[x xᵀ]` of the attention input `x` (after `input_layernorm`).
    pub cov_x: DMatrix<f64>,
    /// `[n_heads][head_dim / 2]`: mean over tokens of `‖q_pair‖·‖k_pair‖` for each query head
    /// and its key/value head (RoPE rotates pairs, so it leaves these norms unchanged).
    pub qk_norm: Vec<Vec<f64>>,
    /// Up to [`MAX_SAMPLES`] rows of `x`.
    pub samples: Vec<DVector<f64>>,
}

/// Run `model` over `windows` (each `seq_len + 1` tokens; the inputs are the first `seq_len`)
/// in batches of `batch`, collecting every layer's statistics. `q` and `k` are the layers'
/// `q_proj` / `k_proj` weights, `[out, in]`.
pub fn collect(
    model: &Lm,
    a: StandardAttention,
    q: &[DMatrix<f64>],
    k: &[DMatrix<f64>],
    windows: &[Vec<u32>],
    batch: usize,
) -> Vec<LayerStats> {
    let cfg: &ModelConfig = model.config();
    let device = model.embed_tokens.weight.device();
    let rope = Rope::new(cfg, &device);
    let (d, h, hd) = (cfg.d_model, cfg.n_heads, a.head_dim);
    let groups = h / a.n_kv_heads;
    let mut stats: Vec<LayerStats> = (0..cfg.n_layers)
        .map(|_| LayerStats {
            tokens: 0,
            cov_x: DMatrix::zeros(d, d),
            qk_norm: vec![vec![0.0; hd / 2]; h],
            samples: vec![],
        })
        .collect();
    for chunk in windows.chunks(batch.max(1)) {
        let t = chunk[0].len() - 1;
        let ids: Vec<i64> = chunk
            .iter()
            .flat_map(|w| w[..t].iter().map(|&i| i as i64))
            .collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), t]), &device);
        let mut hidden = model.embed_tokens.forward(tokens); // [b, t, d]
        for (l, layer) in model.layers.iter().enumerate() {
            let x = rms_norm(&layer.input_layernorm, hidden.clone()); // [b, t, d]
            let rows = chunk.len() * t;
            // [b, t, d] -> [b * t, d]
            let data: Vec<f32> = x
                .reshape([rows, d])
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32");
            let x = DMatrix::from_row_iterator(rows, d, data.into_iter().map(f64::from));
            accumulate(&mut stats[l], &x, &q[l], &k[l], a, groups, cfg.rope_style);
            hidden = layer.forward(hidden, &rope, None);
        }
    }
    for st in &mut stats {
        let n = st.tokens.max(1) as f64;
        st.cov_x /= n;
        st.qk_norm.iter_mut().flatten().for_each(|v| *v /= n);
    }
    stats
}

/// Add a batch of attention inputs `x` (`[rows, d]`) to a layer's sums.
fn accumulate(
    st: &mut LayerStats,
    x: &DMatrix<f64>,
    q_w: &DMatrix<f64>,
    k_w: &DMatrix<f64>,
    a: StandardAttention,
    groups: usize,
    style: crate::config::RopeStyle,
) {
    let hd = a.head_dim;
    st.tokens += x.nrows();
    st.cov_x += x.transpose() * x;
    let q = x * q_w.transpose(); // [rows, h * hd]
    let k = x * k_w.transpose(); // [rows, kv * hd]
    let pair_norm = |m: &DMatrix<f64>, row: usize, head: usize, p: usize| {
        let a = m[(row, head * hd + pair_row(style, hd, p, 0))];
        let b = m[(row, head * hd + pair_row(style, hd, p, 1))];
        (a * a + b * b).sqrt()
    };
    for row in 0..x.nrows() {
        for (j, norms) in st.qk_norm.iter_mut().enumerate() {
            for (p, acc) in norms.iter_mut().enumerate() {
                *acc += pair_norm(&q, row, j, p) * pair_norm(&k, row, j / groups, p);
            }
        }
        if st.samples.len() < MAX_SAMPLES {
            st.samples.push(x.row(row).transpose());
        }
    }
}
