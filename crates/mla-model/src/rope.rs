//! Rotary position embedding (RoPE), with DeepSeek-V2's YaRN extension.
//!
//! Rotating pair `i` of a query and a key by `pos * inv_freq[i]` makes their dot product depend
//! only on the difference of their positions. MLA applies it to the decoupled `rope` slices only
//! (RoPE cannot pass through the latent compression); mha/gqa/mqa rotate whole heads.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{AttentionConfig, ModelConfig, RopeStyle, YarnConfig};

/// Precomputed cos/sin tables for positions `0..max_seq_len` (module constants: rebuilt from the
/// config, never trained or saved). One table serves every head, except for an mha/gqa/mqa
/// model with partial RoPE, whose key/value heads each keep their own pairs (one table each).
#[derive(Module, Debug)]
pub struct Rope {
    /// `[tables, max_seq_len, rope_dim / 2]`
    cos: Tensor<3>,
    /// `[tables, max_seq_len, rope_dim / 2]`
    sin: Tensor<3>,
    #[module(skip)]
    style: RopeStyle,
}

/// Inverse frequencies `theta^(-2i/dim)` for `i < dim/2`, interpolated by YaRN where configured
/// (`DeepseekV2YarnRotaryEmbedding`).
pub fn inv_freq(dim: usize, theta: f64, yarn: Option<&YarnConfig>) -> Vec<f64> {
    let half = dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    let Some(y) = yarn else {
        return base;
    };
    // Dimension whose wavelength makes `rotations` turns over the original context.
    let correction_dim = |rotations: f64| {
        dim as f64
            * (y.original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI))
                .ln()
            / (2.0 * theta.ln())
    };
    let low = correction_dim(y.beta_fast).floor().max(0.0);
    let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            // ramp = 0: keep the original (extrapolated) frequency; 1: interpolate by `factor`.
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            f / y.factor * ramp + f * (1.0 - ramp)
        })
        .collect()
}

/// The inverse frequency of every rotated pair, one row per table (see [`Rope`]). Partial RoPE
/// takes its frequencies from a RoPE of its own `dim` (YaRN included), and gives the pairs an
/// mha/gqa/mqa head does not keep frequency 0: they are not rotated.
pub fn table_freqs(cfg: &ModelConfig) -> Vec<Vec<f64>> {
    let dim = cfg.rope_dim();
    let (theta, yarn) = (cfg.rope_theta, cfg.rope_scaling.as_ref());
    let Some(p) = &cfg.partial_rope else {
        return vec![inv_freq(dim, theta, yarn)];
    };
    let all = inv_freq(p.dim, theta, yarn);
    match cfg.attention {
        AttentionConfig::Latent(_) => vec![p.pairs.iter().map(|&i| all[i]).collect()],
        AttentionConfig::Standard(a) => {
            let k = p.pairs.len() / a.n_kv_heads;
            p.pairs
                .chunks(k)
                .map(|kept| {
                    (0..dim / 2)
                        .map(|i| if kept.contains(&i) { all[i] } else { 0.0 })
                        .collect()
                })
                .collect()
        }
    }
}

/// Where the `t` tokens of each row of a batch sit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Every row at `offset..offset + t` (one sequence, or a batch of equal lengths).
    From(usize),
    /// Row `i` at `starts[i]..starts[i] + t` (a batch of sequences of different lengths).
    Rows(Vec<usize>),
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let freqs = table_freqs(cfg);
        let mscale = cfg
            .rope_scaling
            .as_ref()
            .map_or(1.0, YarnConfig::attention_factor);
        let (tables, half, n) = (freqs.len(), cfg.rope_dim() / 2, cfg.max_seq_len);
        let mut cos = Vec::with_capacity(tables * n * half);
        let mut sin = Vec::with_capacity(tables * n * half);
        for table in &freqs {
            for pos in 0..n {
                for &f in table {
                    // Angles in f64: pos * f loses precision in f32 at long contexts.
                    let angle = pos as f64 * f;
                    cos.push((angle.cos() * mscale) as f32);
                    sin.push((angle.sin() * mscale) as f32);
                }
            }
        }
        let table =
            |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [tables, n, half]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
            style: cfg.rope_style,
        }
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[1]
    }

    /// Rotate `x` at `positions`: one offset for every row, or each row its own.
    ///
    /// # Shapes
    /// - x: `[b, h, t, r]` -> `[b, h, t, r]`
    pub fn apply_at(&self, x: Tensor<4>, positions: &Positions) -> Tensor<4> {
        match positions {
            Positions::From(offset) => self.apply(x, *offset),
            Positions::Rows(starts) => self.apply_rows(x, starts),
        }
    }

    /// Rotate `x` as if its tokens sat at positions `offset..offset + t`.
    ///
    /// # Shapes
    /// - x: `[b, h, t, r]` -> `[b, h, t, r]`
    pub fn apply(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        let [_, h, t, _] = x.dims();
        self.check_range(offset, t);
        let tables = self.cos.dims()[0];
        let half = self.cos.dims()[2];
        // [tables, t, r/2] -> [1, 1, t, r/2] (broadcast over batch and heads), or per head:
        // [tables, 1, t, r/2] -> [tables, h / tables, t, r/2] -> [1, h, t, r/2], where query
        // head i follows table (key/value head) i / (h / tables); in x's precision
        let table = |full: &Tensor<3>| {
            let part = full.clone().slice([0..tables, offset..offset + t, 0..half]);
            let part = if tables == 1 {
                part.reshape([1, 1, t, half])
            } else {
                part.reshape([tables, 1, t, half])
                    .expand([tables, h / tables, t, half])
                    .reshape([1, h, t, half])
            };
            part.cast(x.dtype())
        };
        let (cos, sin) = (table(&self.cos), table(&self.sin));
        self.rotate(x, cos, sin)
    }

    /// Rotate `x` whose row `i` holds tokens at positions `starts[i]..starts[i] + t`: a batch
    /// of sequences of different lengths, each decoding at its own position. The angles are
    /// the same table entries [`Self::apply`] reads, so a row rotates exactly as it would alone.
    ///
    /// # Shapes
    /// - x: `[b, h, t, r]` -> `[b, h, t, r]`, `starts.len() == b`
    pub fn apply_rows(&self, x: Tensor<4>, starts: &[usize]) -> Tensor<4> {
        let [b, h, t, _] = x.dims();
        assert_eq!(starts.len(), b, "one start position per row");
        let positions: Vec<i64> = starts
            .iter()
            .flat_map(|&s| {
                self.check_range(s, t);
                (s..s + t).map(|p| p as i64)
            })
            .collect();
        let device = self.cos.device();
        let index = Tensor::<1, Int>::from_data(TensorData::new(positions, [b * t]), &device);
        let tables = self.cos.dims()[0];
        let half = self.cos.dims()[2];
        let table = |full: &Tensor<3>| {
            // [tables, n, r/2] -> [tables, b * t, r/2]
            let rows = full.clone().select(1, index.clone());
            let rows = if tables == 1 {
                rows.reshape([b, 1, t, half])
            } else {
                // [tables, b, t, r/2] -> [b, tables, t, r/2] -> [b, tables, h / tables, t, r/2]
                // -> [b, h, t, r/2]: query head i follows table i / (h / tables)
                rows.reshape([tables, b, t, half])
                    .swap_dims(0, 1)
                    .unsqueeze_dim::<5>(2)
                    .expand([b, tables, h / tables, t, half])
                    .reshape([b, h, t, half])
            };
            rows.cast(x.dtype())
        };
        let (cos, sin) = (table(&self.cos), table(&self.sin));
        self.rotate(x, cos, sin)
    }

    fn check_range(&self, offset: usize, t: usize) {
        assert!(
            offset + t <= self.max_positions(),
            "RoPE tables cover {} positions, asked for {}..{}",
            self.max_positions(),
            offset,
            offset + t
        );
    }

    /// The rotation itself, given angles broadcastable to `[b, h, t, r/2]`.
    ///
    /// # Shapes
    /// - x: `[b, h, t, r]`, cos/sin: `[1 or b, 1 or h, t, r/2]` -> `[b, h, t, r]`
    fn rotate(&self, x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let [b, h, t, r] = x.dims();
        let half = r / 2;
        match self.style {
            RopeStyle::Interleaved => {
                // [b, h, t, r] -> [b, h, t, r/2, 2]: pair i is (x[2i], x[2i+1])
                let pairs = x.reshape([b, h, t, half, 2]);
                let x0 = pairs.clone().slice_dim(4, 0..1).reshape([b, h, t, half]);
                let x1 = pairs.slice_dim(4, 1..2).reshape([b, h, t, half]);
                let y0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let y1 = x0 * sin + x1 * cos;
                // [b, h, t, r/2, 2] -> [b, h, t, r]
                Tensor::stack::<5>(vec![y0, y1], 4).reshape([b, h, t, r])
            }
            RopeStyle::Half => {
                // pair i is (x[i], x[i + r/2])
                let x0 = x.clone().slice_dim(3, 0..half);
                let x1 = x.slice_dim(3, half..r);
                let y0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let y1 = x1 * cos + x0 * sin;
                Tensor::cat(vec![y0, y1], 3)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSection;
    use burn::tensor::{Distribution, Tolerance};

    fn cfg(style: &str, yarn: bool) -> ModelConfig {
        let yarn = if yarn {
            "rope_scaling = { type = 'yarn', factor = 4.0, original_max_position_embeddings = 8, mscale = 0.707, mscale_all_dim = 0.707 }"
        } else {
            ""
        };
        let s: ModelSection = toml::from_str(&format!(
            "attention = 'mha'\nvocab_size = 8\nd_model = 32\nn_layers = 1\nn_heads = 2\n\
             max_seq_len = 40\nrope_style = '{style}'\n{yarn}"
        ))
        .unwrap();
        s.resolve().unwrap()
    }

    /// q at position m and k at position n score the same as at m + s and n + s.
    #[test]
    fn scores_depend_only_on_relative_position() {
        let device = Device::flex();
        for (style, yarn) in [
            ("interleaved", false),
            ("half", false),
            ("interleaved", true),
        ] {
            let rope = Rope::new(&cfg(style, yarn), &device);
            let q = Tensor::<4>::random([1, 2, 1, 16], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random([1, 2, 1, 16], Distribution::Normal(0.0, 1.0), &device);
            let score = |m: usize, n: usize| {
                let qm = rope.apply(q.clone(), m);
                let kn = rope.apply(k.clone(), n);
                (qm * kn).sum_dim(3)
            };
            let base = score(3, 1);
            for shift in [1, 7, 20, 35] {
                score(3 + shift, 1 + shift)
                    .into_data()
                    .assert_approx_eq::<f32>(&base.clone().into_data(), Tolerance::absolute(2e-5));
            }
            // ... and does depend on it.
            let other = score(9, 1).into_data().try_into_vec::<f32>().unwrap();
            let base = base.into_data().try_into_vec::<f32>().unwrap();
            assert!(other.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3));
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let device = Device::flex();
        for style in ["interleaved", "half"] {
            let rope = Rope::new(&cfg(style, false), &device);
            let x = Tensor::<4>::random([2, 2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
            let y = rope.apply(x.clone(), 0);
            y.clone()
                .slice_dim(2, 0..1)
                .into_data()
                .assert_approx_eq::<f32>(
                    &x.clone().slice_dim(2, 0..1).into_data(),
                    Tolerance::absolute(1e-6),
                );
            x.powi_scalar(2)
                .sum_dim(3)
                .into_data()
                .assert_approx_eq::<f32>(
                    &y.powi_scalar(2).sum_dim(3).into_data(),
                    Tolerance::absolute(1e-4),
                );
        }
    }

    /// Interleaved and rotate-half differ exactly by the permutation [0,2,4,..,1,3,5,..].
    #[test]
    fn conventions_differ_by_a_fixed_permutation() {
        let device = Device::flex();
        let inter = Rope::new(&cfg("interleaved", false), &device);
        let half = Rope::new(&cfg("half", false), &device);
        let x = Tensor::<4>::random([1, 1, 6, 16], Distribution::Normal(0.0, 1.0), &device);
        let perm: Vec<i64> = (0..8)
            .map(|i| 2 * i)
            .chain((0..8).map(|i| 2 * i + 1))
            .collect();
        let perm =
            burn::tensor::Tensor::<1, burn::tensor::Int>::from_ints(perm.as_slice(), &device);
        let a = inter.apply(x.clone(), 2).select(3, perm.clone());
        let b = half.apply(x.select(3, perm), 2);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
    }

    /// Partial RoPE keeping every pair is the full RoPE; keeping none of a head's other pairs
    /// leaves them unrotated; per-head tables follow each query head's key/value head.
    #[test]
    fn partial_rope_rotates_only_the_kept_pairs() {
        let device = Device::flex();
        let mut full = cfg("interleaved", false); // 2 heads of 16
        let x = Tensor::<4>::random([1, 2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let reference = Rope::new(&full, &device).apply(x.clone(), 3);
        full.partial_rope = Some(crate::config::PartialRope {
            dim: 16,
            pairs: (0..8).chain(0..8).collect(),
        });
        Rope::new(&full, &device)
            .apply(x.clone(), 3)
            .into_data()
            .assert_approx_eq::<f32>(&reference.clone().into_data(), Tolerance::absolute(0.0));
        // head 0 keeps pair 2, head 1 pair 5
        full.partial_rope = Some(crate::config::PartialRope {
            dim: 16,
            pairs: vec![2, 5],
        });
        let y = Rope::new(&full, &device).apply(x.clone(), 3);
        let (y, x, r) = (
            y.into_data().try_into_vec::<f32>().unwrap(),
            x.into_data().try_into_vec::<f32>().unwrap(),
            reference.into_data().try_into_vec::<f32>().unwrap(),
        );
        for i in 0..y.len() {
            let (head, dim) = (i / (5 * 16), i % 16);
            let kept = dim / 2 == [2, 5][head];
            let want = if kept { r[i] } else { x[i] };
            assert!((y[i] - want).abs() < 1e-6, "head {head} dim {dim}");
        }
    }

    /// Each row rotated at its own start equals that row rotated alone, for one table and for
    /// per-head tables (partial RoPE), in both styles.
    #[test]
    fn per_row_positions_rotate_each_row_as_alone() {
        let device = Device::flex();
        for style in ["interleaved", "half"] {
            let mut c = cfg(style, false);
            let mut cases = vec![c.clone()];
            c.partial_rope = Some(crate::config::PartialRope {
                dim: 16,
                pairs: vec![2, 5],
            });
            cases.push(c);
            for c in cases {
                let rope = Rope::new(&c, &device);
                let x = Tensor::<4>::random([3, 2, 2, 16], Distribution::Normal(0.0, 1.0), &device);
                let starts = [0, 5, 2];
                let rows = rope.apply_rows(x.clone(), &starts);
                for (i, &s) in starts.iter().enumerate() {
                    let alone = rope.apply(x.clone().slice_dim(0, i..i + 1), s);
                    rows.clone()
                        .slice_dim(0, i..i + 1)
                        .into_data()
                        .assert_approx_eq::<f32>(&alone.into_data(), Tolerance::absolute(0.0));
                }
            }
        }
    }

    #[test]
    fn yarn_matches_deepseek_ramp() {
        // Values from DeepseekV2YarnRotaryEmbedding(dim=64, base=10000, factor=40,
        // original_max_position_embeddings=4096, beta_fast=32, beta_slow=1): low = 10,
        // high = 23, so the first 10 frequencies are kept and the last 9 divided by 40.
        let y = crate::config::ModelConfig::preset("deepseek-v2-lite-attn")
            .unwrap()
            .rope_scaling
            .unwrap();
        let plain = inv_freq(64, 10000.0, None);
        let scaled = inv_freq(64, 10000.0, Some(&y));
        for i in 0..=10 {
            assert!((scaled[i] - plain[i]).abs() < 1e-15, "{i}");
        }
        for i in 23..32 {
            assert!((scaled[i] - plain[i] / 40.0).abs() < 1e-15, "{i}");
        }
        let i = 16;
        let ramp = (16.0 - 10.0) / 13.0;
        assert!((scaled[i] - (plain[i] / 40.0 * ramp + plain[i] * (1.0 - ramp))).abs() < 1e-15);
    }
}
