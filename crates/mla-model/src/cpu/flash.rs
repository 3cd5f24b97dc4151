//! Tiled ("flash") attention on the CPU, forward and backward, for the flex backend.
//!
//! `out = softmax(scale q k^T + mask) v` without ever holding a `[t_q, t_k]` score matrix:
//!
//! - **Forward** (FlashAttention, Dao et al. 2022): for each block of `BLOCK_Q` queries, walk
//!   the keys in tiles of `BLOCK_K`, keeping per query row a running max `m`, a running sum
//!   `l` of `e^(s - m)` and an unnormalised output; each new tile rescales what came before by
//!   `e^(m_old - m_new)`. Saved for backward: the output and `lse = m + ln l` per row.
//! - **Backward** (FlashAttention-2's order): per head, for each key tile, walk the query
//!   blocks that can see it and recompute `P = e^(scale q k^T - lse)` from the saved `lse`;
//!   then `dV += P^T dO`, `dP = dO V^T`, `dS = P (dP - D)` with `D = rowsum(dO * O)`,
//!   `dK += scale dS^T Q`, `dQ += scale dS K`.
//!
//! Memory is O(t) per head beyond the inputs and outputs: two `[BLOCK_Q, BLOCK_K]` scratch
//! tiles per thread. Queries sit at the *end* of the keys (`offset = t_k - t_q`): query row
//! `i` may see key `j` when `j <= offset + i` under the causal mask, as everywhere in this
//! crate. K/V may have fewer heads than Q (GQA, MQA): query head `h` reads K/V head
//! `h / (heads / kv_heads)`.
//!
//! Work runs on rayon's pool, over (batch, head, query block) forward and (batch, head)
//! backward; the tile products go through `gemm` (single-threaded per task), the rest inside
//! [`vectorized`] so the row loops are compiled for the CPU's widest vector unit.

use rayon::prelude::*;

use super::exp::{dot, exp_shifted, exp_shifted_sum, max, scale as scale_row, vectorized};
use super::gemm::{Mat, MatMut, matmul};

/// Query rows per block: the unit of forward parallelism.
pub const BLOCK_Q: usize = 64;
/// Keys per tile.
pub const BLOCK_K: usize = 64;

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// K/V heads; divides `heads`.
    pub kv_heads: usize,
    pub t_q: usize,
    pub t_k: usize,
    /// Width of queries and keys.
    pub d_qk: usize,
    /// Width of values (and of the output).
    pub d_v: usize,
}

impl Dims {
    fn check(&self) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "attention: {} query heads are not a multiple of {} K/V heads",
            self.heads,
            self.kv_heads
        );
        assert!(
            self.t_q <= self.t_k && self.t_k > 0,
            "attention: {} queries need at least as many keys, got {}",
            self.t_q,
            self.t_k
        );
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Keys before the first query's position.
    fn offset(&self) -> usize {
        self.t_k - self.t_q
    }

    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.t_q * self.d_qk
    }

    pub fn k_len(&self) -> usize {
        self.batch * self.kv_heads * self.t_k * self.d_qk
    }

    pub fn v_len(&self) -> usize {
        self.batch * self.kv_heads * self.t_k * self.d_v
    }

    pub fn out_len(&self) -> usize {
        self.batch * self.heads * self.t_q * self.d_v
    }

    /// Query head `bh` (flattened batch x heads) -> its K/V head, flattened the same way.
    fn kv_head(&self, bh: usize) -> usize {
        let (b, h) = (bh / self.heads, bh % self.heads);
        b * self.kv_heads + h / self.group()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub causal: bool,
    pub scale: f32,
}

/// What one head's kernel reads: its K/V rows, the geometry and the options.
#[derive(Clone, Copy)]
struct Head<'a> {
    k: &'a [f32],
    v: &'a [f32],
    dims: Dims,
    opts: Options,
}

impl Head<'_> {
    /// One past the last key that query row `i` (of the head's `t_q`) may see.
    #[inline(always)]
    fn key_end(&self, i: usize) -> usize {
        if self.opts.causal {
            (self.dims.offset() + i + 1).min(self.dims.t_k)
        } else {
            self.dims.t_k
        }
    }

    /// `s = scale q_blk k_tile^T` for queries `q0..q0 + rows` and keys `k0..k0 + n`, with
    /// the keys a row may not see set to -inf.
    #[inline(always)]
    fn scores(&self, s: &mut [f32], q_blk: &[f32], q0: usize, k0: usize, n: usize) {
        let (d, rows) = (self.dims.d_qk, q_blk.len() / self.dims.d_qk);
        let k_tile = Mat::new(&self.k[k0 * d..(k0 + n) * d], n, d);
        matmul(
            MatMut::new(s, rows, n),
            Mat::new(q_blk, rows, d),
            k_tile.t(),
            self.opts.scale,
            false,
        );
        if self.opts.causal && self.key_end(q0) < k0 + n {
            for (i, row) in s.chunks_exact_mut(n).take(rows).enumerate() {
                let visible = self.key_end(q0 + i).saturating_sub(k0).min(n);
                row[visible..].fill(f32::NEG_INFINITY);
            }
        }
    }
}

/// Forward pass. Inputs are contiguous `q [b, h, t_q, d_qk]`, `k [b, h_kv, t_k, d_qk]`,
/// `v [b, h_kv, t_k, d_v]`; returns `out [b, h, t_q, d_v]` and `lse [b, h, t_q]`.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, opts: Options) -> (Vec<f32>, Vec<f32>) {
    dims.check();
    assert_eq!(q.len(), dims.q_len(), "attention: q length");
    assert_eq!(k.len(), dims.k_len(), "attention: k length");
    assert_eq!(v.len(), dims.v_len(), "attention: v length");
    let Dims {
        t_q,
        t_k,
        d_qk,
        d_v,
        ..
    } = dims;
    let mut out = vec![0.0f32; dims.out_len()];
    let mut lse = vec![0.0f32; dims.batch * dims.heads * t_q];
    if t_q == 0 {
        return (out, lse);
    }
    out.par_chunks_mut(t_q * d_v)
        .zip(lse.par_chunks_mut(t_q))
        .enumerate()
        .for_each(|(bh, (out_h, lse_h))| {
            let kv = dims.kv_head(bh);
            let head = Head {
                k: &k[kv * t_k * d_qk..][..t_k * d_qk],
                v: &v[kv * t_k * d_v..][..t_k * d_v],
                dims,
                opts,
            };
            let q_h = &q[bh * t_q * d_qk..][..t_q * d_qk];
            out_h
                .par_chunks_mut(BLOCK_Q * d_v)
                .zip(lse_h.par_chunks_mut(BLOCK_Q))
                .enumerate()
                .for_each(|(blk, (out_b, lse_b))| {
                    let q0 = blk * BLOCK_Q;
                    let q_blk = &q_h[q0 * d_qk..(q0 + lse_b.len()) * d_qk];
                    vectorized(|| forward_block(&head, q_blk, q0, out_b, lse_b));
                });
        });
    (out, lse)
}

/// One block of query rows `q0..q0 + rows`: the online softmax over the key tiles.
#[inline(always)]
fn forward_block(head: &Head, q_blk: &[f32], q0: usize, out: &mut [f32], lse: &mut [f32]) {
    let rows = lse.len();
    let d_v = head.dims.d_v;
    let kv_end = head.key_end(q0 + rows - 1);
    let mut s = vec![0.0f32; rows * BLOCK_K];
    // Running max and sum of e^(s - max) per row; `out` holds the unnormalised output.
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0.0f32; rows];
    for k0 in (0..kv_end).step_by(BLOCK_K) {
        let n = BLOCK_K.min(kv_end - k0);
        let s = &mut s[..rows * n];
        head.scores(s, q_blk, q0, k0, n);
        for (i, row) in s.chunks_exact_mut(n).enumerate() {
            let m_new = m[i].max(max(row));
            if m_new == f32::NEG_INFINITY {
                // Nothing visible to this row yet (only with t_q > t_k, which `check` refuses).
                row.fill(0.0);
                continue;
            }
            let sum = exp_shifted_sum(row, m_new);
            // e^(-inf) = 0 on the first tile: the empty past is dropped, not rescaled.
            let correction = super::exp::exp(m[i] - m_new);
            l[i] = l[i] * correction + sum;
            if correction != 1.0 {
                scale_row(&mut out[i * d_v..(i + 1) * d_v], correction);
            }
            m[i] = m_new;
        }
        let v_tile = Mat::new(&head.v[k0 * d_v..(k0 + n) * d_v], n, d_v);
        matmul(
            MatMut::new(out, rows, d_v),
            Mat::new(s, rows, n),
            v_tile,
            1.0,
            true,
        );
    }
    for i in 0..rows {
        scale_row(&mut out[i * d_v..(i + 1) * d_v], 1.0 / l[i]);
        lse[i] = m[i] + l[i].ln();
    }
}

/// Gradients `(dq, dk, dv)` of the forward above, given its `out` and `lse` and the gradient
/// `grad` of the output, in the shapes of `q`, `k` and `v`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    grad: &[f32],
    dims: Dims,
    opts: Options,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    dims.check();
    assert_eq!(out.len(), dims.out_len(), "attention backward: out length");
    assert_eq!(
        grad.len(),
        dims.out_len(),
        "attention backward: grad length"
    );
    let Dims {
        batch,
        heads,
        t_q,
        t_k,
        d_qk,
        d_v,
        ..
    } = dims;
    let mut dq = vec![0.0f32; dims.q_len()];
    // K/V gradients per *query* head; GQA groups are summed at the end.
    let mut dk = vec![0.0f32; batch * heads * t_k * d_qk];
    let mut dv = vec![0.0f32; batch * heads * t_k * d_v];
    if t_q > 0 {
        dq.par_chunks_mut(t_q * d_qk)
            .zip(dk.par_chunks_mut(t_k * d_qk))
            .zip(dv.par_chunks_mut(t_k * d_v))
            .enumerate()
            .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
                let kv = dims.kv_head(bh);
                let head = Head {
                    k: &k[kv * t_k * d_qk..][..t_k * d_qk],
                    v: &v[kv * t_k * d_v..][..t_k * d_v],
                    dims,
                    opts,
                };
                // This head's rows of a [b, h, t_q, w] tensor.
                let span = |w: usize| bh * t_q * w..(bh + 1) * t_q * w;
                let saved = Saved {
                    q: &q[span(d_qk)],
                    out: &out[span(d_v)],
                    grad: &grad[span(d_v)],
                    lse: &lse[span(1)],
                };
                vectorized(|| backward_head(&head, &saved, dq_h, dk_h, dv_h));
            });
    }
    let g = dims.group();
    if g == 1 {
        return (dq, dk, dv);
    }
    (
        dq,
        sum_groups(&dk, g, t_k * d_qk),
        sum_groups(&dv, g, t_k * d_v),
    )
}

/// A query head's saved tensors.
struct Saved<'a> {
    q: &'a [f32],
    out: &'a [f32],
    grad: &'a [f32],
    lse: &'a [f32],
}

#[inline(always)]
fn backward_head(head: &Head, x: &Saved, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let Dims {
        t_q,
        t_k,
        d_qk,
        d_v,
        ..
    } = head.dims;
    let scale = head.opts.scale;
    // D_i = Σ_c dO_ic O_ic: the softmax-backward term shared by a row's keys.
    let delta: Vec<f32> = x
        .grad
        .chunks_exact(d_v)
        .zip(x.out.chunks_exact(d_v))
        .map(|(g, o)| dot(g, o))
        .collect();
    let mut p = vec![0.0f32; BLOCK_Q * BLOCK_K];
    let mut ds = vec![0.0f32; BLOCK_Q * BLOCK_K];
    for k0 in (0..t_k).step_by(BLOCK_K) {
        let n = BLOCK_K.min(t_k - k0);
        // Query rows that see none of these keys are skipped: under the causal mask, row i
        // sees key k0 once offset + i >= k0.
        let first = if head.opts.causal {
            k0.saturating_sub(head.dims.offset())
        } else {
            0
        };
        let k_tile = Mat::new(&head.k[k0 * d_qk..(k0 + n) * d_qk], n, d_qk);
        let v_tile = Mat::new(&head.v[k0 * d_v..(k0 + n) * d_v], n, d_v);
        let dk_tile = &mut dk[k0 * d_qk..(k0 + n) * d_qk];
        let dv_tile = &mut dv[k0 * d_v..(k0 + n) * d_v];
        for q0 in (first..t_q).step_by(BLOCK_Q) {
            let rows = BLOCK_Q.min(t_q - q0);
            let q_blk = &x.q[q0 * d_qk..(q0 + rows) * d_qk];
            let g_blk = Mat::new(&x.grad[q0 * d_v..(q0 + rows) * d_v], rows, d_v);
            // P = e^(s - lse): the forward's probabilities, recomputed.
            let p = &mut p[..rows * n];
            head.scores(p, q_blk, q0, k0, n);
            for (i, row) in p.chunks_exact_mut(n).enumerate() {
                exp_shifted(row, x.lse[q0 + i]);
            }
            // dV += P^T dO
            matmul(
                MatMut::new(dv_tile, n, d_v),
                Mat::new(p, rows, n).t(),
                g_blk,
                1.0,
                true,
            );
            // dP = dO V^T, then dS = P (dP - D)
            let ds = &mut ds[..rows * n];
            matmul(MatMut::new(ds, rows, n), g_blk, v_tile.t(), 1.0, false);
            for (i, (ds_row, p_row)) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)).enumerate() {
                let d = delta[q0 + i];
                for (s, pv) in ds_row.iter_mut().zip(p_row) {
                    *s = pv * (*s - d);
                }
            }
            let ds = Mat::new(ds, rows, n);
            // dK += scale dS^T Q, dQ += scale dS K
            matmul(
                MatMut::new(dk_tile, n, d_qk),
                ds.t(),
                Mat::new(q_blk, rows, d_qk),
                scale,
                true,
            );
            let dq_blk = &mut dq[q0 * d_qk..(q0 + rows) * d_qk];
            matmul(MatMut::new(dq_blk, rows, d_qk), ds, k_tile, scale, true);
        }
    }
}

/// `[b, kv * g, rest]` -> `[b, kv, rest]`, summing each group of `g` consecutive heads.
fn sum_groups(x: &[f32], g: usize, rest: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len() / g];
    out.par_chunks_mut(rest).enumerate().for_each(|(kv, o)| {
        for h in 0..g {
            let src = &x[(kv * g + h) * rest..][..rest];
            for (a, b) in o.iter_mut().zip(src) {
                *a += b;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    //! Against the definition in f64: scores, mask, softmax, weighted sum, and its gradient
    //! written out by the chain rule. Shapes cross the block sizes on purpose.
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// (out, dq, dk, dv) in f64 by the book, for one output gradient `g`.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        d: Dims,
        o: Options,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut out, mut dq) = (vec![0.0; d.out_len()], vec![0.0; d.q_len()]);
        let (mut dk, mut dv) = (vec![0.0; d.k_len()], vec![0.0; d.v_len()]);
        let off = d.t_k - d.t_q;
        for bh in 0..d.batch * d.heads {
            let kv = d.kv_head(bh);
            for i in 0..d.t_q {
                let qi = |c: usize| q[(bh * d.t_q + i) * d.d_qk + c] as f64;
                let kj = |j: usize, c: usize| k[(kv * d.t_k + j) * d.d_qk + c] as f64;
                let vj = |j: usize, c: usize| v[(kv * d.t_k + j) * d.d_v + c] as f64;
                let keys = if o.causal { off + i + 1 } else { d.t_k };
                let s: Vec<f64> = (0..keys)
                    .map(|j| o.scale as f64 * (0..d.d_qk).map(|c| qi(c) * kj(j, c)).sum::<f64>())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                let oi = (bh * d.t_q + i) * d.d_v;
                for c in 0..d.d_v {
                    out[oi + c] = (0..keys).map(|j| p[j] * vj(j, c)).sum();
                }
                let gi = |c: usize| g[oi + c] as f64;
                let dp: Vec<f64> = (0..keys)
                    .map(|j| (0..d.d_v).map(|c| gi(c) * vj(j, c)).sum())
                    .collect();
                let pdp: f64 = (0..keys).map(|j| p[j] * dp[j]).sum();
                for j in 0..keys {
                    let ds = p[j] * (dp[j] - pdp) * o.scale as f64;
                    for c in 0..d.d_v {
                        dv[(kv * d.t_k + j) * d.d_v + c] += p[j] * gi(c);
                    }
                    for c in 0..d.d_qk {
                        dq[(bh * d.t_q + i) * d.d_qk + c] += ds * kj(j, c);
                        dk[(kv * d.t_k + j) * d.d_qk + c] += ds * qi(c);
                    }
                }
            }
        }
        (out, dq, dk, dv)
    }

    fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= tol * scale,
                "{name}[{i}]: {a} vs {b} (tolerance {tol} x {scale})"
            );
        }
    }

    fn check(d: Dims, o: Options) {
        check_within(d, o, 1e-5);
    }

    fn check_within(d: Dims, o: Options, tol: f64) {
        let (q, k, v) = (data(d.q_len(), 1), data(d.k_len(), 2), data(d.v_len(), 3));
        let g = data(d.out_len(), 4);
        let (out, lse) = forward(&q, &k, &v, d, o);
        let (want_out, want_dq, want_dk, want_dv) = reference(&q, &k, &v, &g, d, o);
        assert_close("out", &out, &want_out, tol);
        let (dq, dk, dv) = backward(&q, &k, &v, &out, &lse, &g, d, o);
        assert_close("dq", &dq, &want_dq, tol);
        assert_close("dk", &dk, &want_dk, tol);
        assert_close("dv", &dv, &want_dv, tol);
    }

    #[test]
    fn causal_square_with_unequal_widths_across_block_edges() {
        // 150 queries: two full blocks and a short one; MLA-like widths (nope + rope vs v).
        let d = Dims {
            batch: 2,
            heads: 2,
            kv_heads: 2,
            t_q: 150,
            t_k: 150,
            d_qk: 12,
            d_v: 8,
        };
        check(
            d,
            Options {
                causal: true,
                scale: 0.3,
            },
        );
    }

    #[test]
    fn fewer_queries_than_keys_sit_at_the_end() {
        // Prefill after a cache: 70 new queries over 133 keys (offset 63).
        let d = Dims {
            batch: 1,
            heads: 3,
            kv_heads: 3,
            t_q: 70,
            t_k: 133,
            d_qk: 8,
            d_v: 8,
        };
        check(
            d,
            Options {
                causal: true,
                scale: 0.5,
            },
        );
        let one = Dims { t_q: 1, ..d };
        check(
            one,
            Options {
                causal: true,
                scale: 0.5,
            },
        );
    }

    #[test]
    fn grouped_kv_heads_and_no_mask() {
        let d = Dims {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            t_q: 65,
            t_k: 65,
            d_qk: 8,
            d_v: 6,
        };
        check(
            d,
            Options {
                causal: true,
                scale: 0.35,
            },
        );
        check(
            Dims { kv_heads: 1, ..d },
            Options {
                causal: false,
                scale: 0.35,
            },
        );
    }

    #[test]
    fn large_scores_do_not_overflow() {
        // Scores up to ~100, past f32's e^88: only the running max keeps them in range. (The
        // rounding of such scores, ~1e-5, bounds the tolerance.)
        let d = Dims {
            batch: 1,
            heads: 1,
            kv_heads: 1,
            t_q: 80,
            t_k: 80,
            d_qk: 4,
            d_v: 4,
        };
        check_within(
            d,
            Options {
                causal: true,
                scale: 30.0,
            },
            1e-4,
        );
    }
}
