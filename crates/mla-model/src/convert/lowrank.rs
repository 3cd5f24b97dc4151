//! The joint low-rank factorisation of a layer's stacked nope-key and value projections into
//! MLA's `kv_a_proj_with_mqa` (latent rows) and `kv_b_proj`, in f64.
//!
//! The attention input is `x = gamma ⊙ n`, `n = h / rms(h)` (`input_layernorm`), so the
//! stacked projections act on `n` as `W' = W diag(gamma)`. Truncated SVD of
//! `M = diag(w) W' S` (row weights `w` balance keys against values; `S = C^{1/2}` with `C` the
//! calibration covariance of `n`, or `I`) gives the rank-`R` map `W'_R` that minimises
//! `E‖diag(w)(W' - W'_R) n‖²` (Eckart-Young): with calibration this is the PCA of the K/V
//! outputs, as TransMLA; without, the weight SVD, as MHA2MLA's SVD_joint.
//!
//! MLA normalises the latent (`kv_a_layernorm`), so the latent is chosen as `c = P n` with `P`
//! orthonormal rows spanning `W'_R`'s row space, and `kv_b_proj = W'_R P^T`:
//! - `R >= d_model`: `P` is completed to an orthonormal basis of all of `n`'s space, so
//!   `‖c‖ = ‖n‖`, constant (`n` has unit rms): the norm only divides by a constant, which its
//!   gain absorbs, and the factorisation is exact.
//! - `R < d_model`: `‖c‖` varies a little from token to token; the gain takes the rms of `c`
//!   over the calibration tokens and the rest of the per-token scale is an approximation,
//!   reported as the K/V error with the norm next to the truncation's own.

use nalgebra::{DMatrix, DVector};

/// What a layer's factorisation needs.
pub struct LowRankInput<'a> {
    /// `[m, d]`: the stacked `[k_nope | v]` rows of every head, acting on `x`.
    pub w: &'a DMatrix<f64>,
    /// `[d]`: `input_layernorm`'s gain.
    pub gamma: &'a [f64],
    /// `[m]`: row weights of the SVD (balancing); ones for none.
    pub row_weight: &'a [f64],
    /// `[d, d]`: `E[n nᵀ]` over calibration tokens, if any.
    pub cov: Option<&'a DMatrix<f64>>,
    /// Rows of `n` to measure the norm's effect on.
    pub samples: &'a [DVector<f64>],
    pub rank: usize,
    /// `kv_a_layernorm`'s epsilon.
    pub norm_eps: f64,
}

/// A factorisation and its measured quality.
pub struct LowRank {
    /// `[R, d]`: the latent rows of `kv_a_proj_with_mqa`, acting on `x`.
    pub down: DMatrix<f64>,
    /// `[m, R]`: `kv_b_proj`.
    pub up: DMatrix<f64>,
    /// `kv_a_layernorm`'s gain (every entry).
    pub gain: f64,
    /// Weighted singular values of `M`, descending.
    pub singular_values: Vec<f64>,
    /// `sum_{i<R} σ_i² / sum σ_i²`.
    pub energy_kept: f64,
    /// `E‖(W' - W'_R) n‖² / E‖W' n‖²` (unweighted; under `C`, or `I`).
    pub error_truncated: f64,
    /// The same over `samples` through the latent norm, if there are samples.
    pub error_normed: Option<f64>,
}

/// `C^{1/2}` of a symmetric positive semi-definite matrix, with a small ridge so that
/// directions the calibration tokens never visit keep a tiny weight.
pub fn sqrt_psd(c: &DMatrix<f64>) -> DMatrix<f64> {
    let d = c.nrows();
    let ridge = 1e-9 * c.trace().max(f64::MIN_POSITIVE) / d as f64;
    let eig = (c + DMatrix::identity(d, d) * ridge).symmetric_eigen();
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// Eigenvectors of a symmetric matrix as columns, largest eigenvalue first.
fn eigenvectors_descending(c: &DMatrix<f64>) -> Vec<DVector<f64>> {
    let eig = c.clone().symmetric_eigen();
    let mut order: Vec<usize> = (0..c.nrows()).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    order
        .into_iter()
        .map(|i| eig.eigenvectors.column(i).into_owned())
        .collect()
}

/// Add the candidates that are not (numerically) in the span of `basis` until it holds
/// `count` orthonormal vectors (Gram-Schmidt, twice for stability).
fn complete(basis: &mut Vec<DVector<f64>>, candidates: &[DVector<f64>], count: usize) {
    for c in candidates {
        if basis.len() >= count {
            break;
        }
        let mut v = c.clone();
        for _ in 0..2 {
            for b in basis.iter() {
                let dot = b.dot(&v);
                v -= b * dot;
            }
        }
        let norm = v.norm();
        if norm > 1e-6 * c.norm().max(f64::MIN_POSITIVE) {
            basis.push(v / norm);
        }
    }
}

pub fn factorise(inp: &LowRankInput) -> LowRank {
    let (m, d) = inp.w.shape();
    let r = inp.rank;
    // W' = W diag(gamma): the projections as functions of n
    let w_n = inp.w * DMatrix::from_diagonal(&DVector::from_column_slice(inp.gamma));
    let rw = DMatrix::from_diagonal(&DVector::from_column_slice(inp.row_weight));
    let rw_inv = DMatrix::from_diagonal(&DVector::from_iterator(
        m,
        inp.row_weight.iter().map(|&x| 1.0 / x),
    ));
    let s = inp.cov.map(sqrt_psd);
    let weighted = &rw * &w_n; // [m, d]
    let metric = match &s {
        Some(s) => &weighted * s,
        None => weighted.clone(),
    };
    let svd = metric.svd(true, false);
    let u = svd.u.expect("computed");
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let singular_values: Vec<f64> = order.iter().map(|&i| svd.singular_values[i]).collect();
    let total: f64 = singular_values.iter().map(|s| s * s).sum();
    let kept: f64 = singular_values.iter().take(r).map(|s| s * s).sum();
    let energy_kept = if total > 0.0 { kept / total } else { 1.0 };

    // U_R: the top-R output directions (in the weighted space); W'_R = diag(1/w) U_R U_Rᵀ diag(w) W'
    let top: Vec<usize> = order.iter().copied().take(r).collect();
    let u_r = DMatrix::from_columns(&top.iter().map(|&i| u.column(i)).collect::<Vec<_>>());
    let y = u_r.transpose() * &weighted; // [R', d]: spans W'_R's row space
    let w_r = &rw_inv * &u_r * &y; // [m, d]

    // P: orthonormal rows spanning that row space, then completed (see the module docs).
    let mut basis: Vec<DVector<f64>> = vec![];
    let y_rows: Vec<DVector<f64>> = (0..y.nrows()).map(|i| y.row(i).transpose()).collect();
    complete(&mut basis, &y_rows, r.min(d));
    let candidates: Vec<DVector<f64>> = match inp.cov {
        Some(c) => eigenvectors_descending(c),
        None => (0..d)
            .map(|i| DVector::from_fn(d, |j, _| f64::from(i == j)))
            .collect(),
    };
    complete(&mut basis, &candidates, r.min(d));
    let mut p = DMatrix::zeros(r, d); // [R, d]; rows past d stay zero
    for (i, b) in basis.iter().enumerate() {
        p.set_row(i, &b.transpose());
    }
    let up = &w_r * p.transpose(); // [m, R]

    // The norm's gain: the rms of the latent, so that normalising changes it least.
    let mean_square = match inp.cov {
        Some(c) => (&p * c * p.transpose()).trace() / r as f64,
        None => r.min(d) as f64 / r as f64,
    };
    let gain = (mean_square + inp.norm_eps).sqrt();

    // x-space latent rows: c = P n = P diag(1/gamma) x (a zero gain means x never uses that dim)
    let inv_gamma = DVector::from_iterator(
        d,
        inp.gamma
            .iter()
            .map(|&g| if g != 0.0 { 1.0 / g } else { 0.0 }),
    );
    let down = &p * DMatrix::from_diagonal(&inv_gamma);

    let quad = |a: &DMatrix<f64>| match inp.cov {
        Some(c) => (a * c * a.transpose()).trace(),
        None => a.norm_squared(),
    };
    let full = quad(&w_n);
    let error_truncated = if full > 0.0 {
        quad(&(&w_n - &w_r)) / full
    } else {
        0.0
    };
    let error_normed = (!inp.samples.is_empty()).then(|| {
        let (mut err, mut norm) = (0.0, 0.0);
        for n in inp.samples {
            let c = &p * n;
            let rms = (c.norm_squared() / r as f64 + inp.norm_eps).sqrt();
            let out = &up * (c * (gain / rms));
            let target = &w_n * n;
            err += (out - &target).norm_squared();
            norm += target.norm_squared();
        }
        if norm > 0.0 { err / norm } else { 0.0 }
    });
    LowRank {
        down,
        up,
        gain,
        singular_values,
        energy_kept,
        error_truncated,
        error_normed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        DMatrix::from_fn(rows, cols, |_, _| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 10_000) as f64 / 5_000.0 - 1.0
        })
    }

    fn input<'a>(
        w: &'a DMatrix<f64>,
        gamma: &'a [f64],
        rw: &'a [f64],
        cov: Option<&'a DMatrix<f64>>,
        samples: &'a [DVector<f64>],
        rank: usize,
    ) -> LowRankInput<'a> {
        LowRankInput {
            w,
            gamma,
            row_weight: rw,
            cov,
            samples,
            rank,
            norm_eps: 0.0,
        }
    }

    /// The truncation error is the discarded singular-value energy (Eckart-Young), shrinks
    /// as the rank grows, and vanishes at full rank.
    #[test]
    fn error_is_the_discarded_energy() {
        let (m, d) = (12, 8);
        let w = random(m, d, 1);
        let gamma: Vec<f64> = (0..d).map(|i| 0.5 + i as f64 * 0.1).collect();
        let ones = vec![1.0; m];
        let mut last = f64::INFINITY;
        for rank in 1..=d {
            let f = factorise(&input(&w, &gamma, &ones, None, &[], rank));
            assert!((f.error_truncated - (1.0 - f.energy_kept)).abs() < 1e-12);
            assert!(f.error_truncated <= last + 1e-15, "rank {rank}");
            last = f.error_truncated;
            // up · down reproduces W'_R on x: up down x = W'_R n
            assert_eq!(f.down.shape(), (rank, d));
            assert_eq!(f.up.shape(), (m, rank));
        }
        assert!(last < 1e-20, "full rank leaves {last}");
    }

    /// At rank >= d the latent is an isometric image of n: through the norm, exact.
    #[test]
    fn full_rank_survives_the_latent_norm() {
        let (m, d) = (10, 6);
        let w = random(m, d, 2);
        let gamma: Vec<f64> = (0..d).map(|i| 0.3 + i as f64 * 0.2).collect();
        let rw: Vec<f64> = (0..m).map(|i| if i < 4 { 0.5 } else { 1.0 }).collect();
        // unit-rms samples of n
        let samples: Vec<DVector<f64>> = (0..20)
            .map(|s| {
                let v = random(d, 1, 10 + s).column(0).into_owned();
                let rms = (v.norm_squared() / d as f64).sqrt();
                v / rms
            })
            .collect();
        let cov = samples
            .iter()
            .map(|n| n * n.transpose())
            .sum::<DMatrix<f64>>()
            / 20.0;
        for rank in [d, d + 3] {
            for c in [None, Some(&cov)] {
                let f = factorise(&input(&w, &gamma, &rw, c, &samples, rank));
                assert!(f.error_normed.unwrap() < 1e-20, "rank {rank}");
                for n in &samples {
                    let x = n.component_mul(&DVector::from_column_slice(&gamma));
                    let latent = &f.down * &x;
                    let rms = (latent.norm_squared() / rank as f64).sqrt();
                    let kv = &f.up * (latent * (f.gain / rms));
                    assert!((kv - &w * &x).norm() < 1e-9 * (&w * &x).norm());
                }
            }
        }
        // Below d, the norm costs something on top of the truncation.
        let f = factorise(&input(&w, &gamma, &rw, Some(&cov), &samples, 3));
        assert!(f.error_normed.unwrap() > f.error_truncated * 0.5);
    }

    /// Weighting rows (balancing) shifts the error from the down-weighted rows to the others.
    #[test]
    fn row_weights_trade_error_between_rows() {
        let (m, d) = (8, 8);
        let w = random(m, d, 3);
        let gamma = vec![1.0; d];
        let err_rows = |rw: &[f64]| {
            let f = factorise(&input(&w, &gamma, rw, None, &[], 3));
            let e = &w - &f.up * &f.down;
            let top: f64 = (0..4).map(|i| e.row(i).norm_squared()).sum();
            let bottom: f64 = (4..8).map(|i| e.row(i).norm_squared()).sum();
            (top, bottom)
        };
        let (t1, b1) = err_rows(&[1.0; 8]);
        let (t2, b2) = err_rows(&[0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0]);
        assert!(t2 > t1 && b2 < b1, "{t1} {b1} -> {t2} {b2}");
    }
}
