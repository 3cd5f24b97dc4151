//! Row-wise training kernels for the flex backend: log-softmax, SiLU and RMSNorm, forward and
//! backward, each one pass (or two) over contiguous f32 rows, in parallel over rows and with
//! the vectorised `exp` of [`super::exp`].
//!
//! burn-flex runs these as chains of its elementwise primitives (a log-softmax is a max, a
//! subtraction, a scalar libm `exp` per element, a sum, a log and another subtraction, each
//! a pass over memory, most on one thread below flex's parallelism thresholds). The formulas
//! are those of [`crate::fused`]'s module docs.

use rayon::prelude::*;

use super::exp::{dot, exp, exp_shifted_sum, max, vectorized};

/// Rows per rayon task: big enough to amortise the task, small enough to share the work.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// `f(in_rows, out_rows)` over chunks of whole rows of `input`, in parallel; returns the output.
fn map_rows(input: &[f32], row_len: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; input.len()];
    let chunk = rows_per_task(row_len) * row_len;
    out.par_chunks_mut(chunk)
        .zip(input.par_chunks(chunk))
        .for_each(|(o, i)| vectorized(|| f(i, o)));
    out
}

/// The same with a second input of the shape of the first.
fn map_rows2(
    a: &[f32],
    b: &[f32],
    row_len: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "row kernel: inputs of different sizes");
    let mut out = vec![0.0f32; a.len()];
    let chunk = rows_per_task(row_len) * row_len;
    out.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(b.par_chunks(chunk)))
        .for_each(|(o, (a, b))| vectorized(|| f(a, b, o)));
    out
}

/// `y = x - max - ln Σ e^(x - max)` per row of `n`.
pub fn log_softmax(x: &[f32], n: usize) -> Vec<f32> {
    map_rows(x, n, |x, y| {
        for (x, y) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let m = max(x);
            y.copy_from_slice(x);
            let shift = m + exp_shifted_sum(y, m).ln();
            for (y, x) in y.iter_mut().zip(x) {
                *y = x - shift;
            }
        }
    })
}

/// `dx = g - e^y Σ g` per row, given the output `y`.
pub fn log_softmax_backward(y: &[f32], g: &[f32], n: usize) -> Vec<f32> {
    map_rows2(y, g, n, |y, g, dx| {
        for ((y, g), dx) in y
            .chunks_exact(n)
            .zip(g.chunks_exact(n))
            .zip(dx.chunks_exact_mut(n))
        {
            let sum: f32 = g.iter().sum();
            for ((dx, y), g) in dx.iter_mut().zip(y).zip(g) {
                *dx = g - exp(*y) * sum;
            }
        }
    })
}

/// `σ(x) = 1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x σ(x)`, elementwise.
pub fn silu(x: &[f32]) -> Vec<f32> {
    map_rows(x, 1, |x, y| {
        for (y, x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(*x);
        }
    })
}

/// `g σ(x) (1 + x (1 - σ(x)))`, elementwise.
pub fn silu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    map_rows2(x, g, 1, |x, g, dx| {
        for ((dx, x), g) in dx.iter_mut().zip(x).zip(g) {
            let s = sigmoid(*x);
            *dx = g * s * (1.0 + x * (1.0 - s));
        }
    })
}

/// RMSNorm forward over rows of `n = gamma.len()`: `(x r γ, r)` with `r = 1 / sqrt(mean(x²) +
/// eps)` per row (accumulated in f32, as the composed version).
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    assert_eq!(x.len() % n, 0, "rms_norm: rows of {n}");
    let mut y = vec![0.0f32; x.len()];
    let mut rstd = vec![0.0f32; x.len() / n];
    let rows = rows_per_task(n);
    y.par_chunks_mut(rows * n)
        .zip(rstd.par_chunks_mut(rows))
        .zip(x.par_chunks(rows * n))
        .for_each(|((y, r), x)| {
            vectorized(|| {
                for ((y, r), x) in y
                    .chunks_exact_mut(n)
                    .zip(r.iter_mut())
                    .zip(x.chunks_exact(n))
                {
                    *r = 1.0 / (dot(x, x) / n as f32 + eps).sqrt();
                    for ((y, x), g) in y.iter_mut().zip(x).zip(gamma) {
                        *y = x * *r * g;
                    }
                }
            })
        });
    (y, rstd)
}

/// RMSNorm backward: with `x̂ = x r` and `gx = g γ`, `dx = r (gx - x̂ mean(gx x̂))` per row and
/// `dγ = Σ_rows g x̂`.
pub fn rms_norm_backward(
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
    g: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    assert_eq!(x.len(), g.len(), "rms_norm backward: x and grad sizes");
    assert_eq!(
        x.len(),
        rstd.len() * n,
        "rms_norm backward: one rstd per row"
    );
    let mut dx = vec![0.0f32; x.len()];
    let rows = rows_per_task(n);
    // Each task returns its rows' share of dγ; the shares are summed in task order.
    let shares: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * n).zip(g.par_chunks(rows * n)))
        .zip(rstd.par_chunks(rows))
        .map(|((dx, (x, g)), r)| {
            vectorized(|| {
                let mut dgamma = vec![0.0f32; n];
                for (((dx, x), g), r) in dx
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(g.chunks_exact(n))
                    .zip(r)
                {
                    // mean(gx x̂) = r Σ g γ x / n
                    let mut acc = 0.0f32;
                    for ((x, g), gm) in x.iter().zip(g).zip(gamma) {
                        acc += g * gm * x;
                    }
                    let mean = acc * r / n as f32;
                    for ((((dx, x), g), gm), dg) in dx
                        .iter_mut()
                        .zip(x)
                        .zip(g)
                        .zip(gamma)
                        .zip(dgamma.iter_mut())
                    {
                        let x_hat = x * r;
                        *dx = r * (g * gm - x_hat * mean);
                        *dg += g * x_hat;
                    }
                }
                dgamma
            })
        })
        .collect();
    let mut dgamma = vec![0.0f32; n];
    for share in shares {
        for (d, s) in dgamma.iter_mut().zip(share) {
            *d += s;
        }
    }
    (dx, dgamma)
}

#[cfg(test)]
mod tests {
    //! Each kernel against its formula in f64, with rows that are not a multiple of a task.
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 10_000) as f32 / 1250.0 - 4.0
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= tol * b.abs().max(1.0),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn log_softmax_and_its_gradient() {
        let n = 37;
        let (x, g) = (data(n * 1001, 1), data(n * 1001, 2));
        let y = log_softmax(&x, n);
        let mut want = vec![];
        let mut want_dx = vec![];
        for (row, grow) in x.chunks(n).zip(g.chunks(n)) {
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            let ys: Vec<f64> = row.iter().map(|&v| v as f64 - lse).collect();
            let gs: f64 = grow.iter().map(|&v| v as f64).sum();
            want_dx.extend(ys.iter().zip(grow).map(|(y, &g)| g as f64 - y.exp() * gs));
            want.extend(ys);
        }
        close(&y, &want, 1e-5, "log_softmax");
        close(&log_softmax_backward(&y, &g, n), &want_dx, 1e-4, "dx");
    }

    #[test]
    fn silu_and_its_gradient() {
        let (x, g) = (data(20_001, 3), data(20_001, 4));
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want: Vec<f64> = x.iter().map(|&x| x as f64 * s(x as f64)).collect();
        let want_dx: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&x, &g)| {
                let (x, g) = (x as f64, g as f64);
                g * s(x) * (1.0 + x * (1.0 - s(x)))
            })
            .collect();
        close(&silu(&x), &want, 1e-6, "silu");
        close(&silu_backward(&x, &g), &want_dx, 1e-6, "dx");
    }

    #[test]
    fn rms_norm_and_both_gradients() {
        let (n, rows) = (24, 1500);
        let (x, g, gamma) = (data(n * rows, 5), data(n * rows, 6), data(n, 7));
        let (y, r) = rms_norm(&x, &gamma, 1e-5);
        let (dx, dgamma) = rms_norm_backward(&x, &gamma, &r, &g);
        let (mut want_y, mut want_dx, mut want_dg) = (vec![], vec![], vec![0.0f64; n]);
        for (xr, gr) in x.chunks(n).zip(g.chunks(n)) {
            let xr: Vec<f64> = xr.iter().map(|&v| v as f64).collect();
            let gr: Vec<f64> = gr.iter().map(|&v| v as f64).collect();
            let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + 1e-5).sqrt();
            let gm: Vec<f64> = gamma.iter().map(|&v| v as f64).collect();
            let mean = (0..n).map(|i| gr[i] * gm[i] * xr[i] * r).sum::<f64>() / n as f64;
            for i in 0..n {
                want_y.push(xr[i] * r * gm[i]);
                want_dx.push(r * (gr[i] * gm[i] - xr[i] * r * mean));
                want_dg[i] += gr[i] * xr[i] * r;
            }
        }
        close(&y, &want_y, 1e-5, "y");
        close(&dx, &want_dx, 1e-4, "dx");
        close(&dgamma, &want_dg, 1e-4, "dgamma");
    }
}
