//! `exp` over rows of f32, written so the compiler vectorises it.
//!
//! burn-flex computes `exp` one element at a time through libm (its softmax says so: "no SIMD
//! exp in macerator"), which cost 7% of a training step on an AVX2 CPU. This is Cephes' `expf`
//! (range reduction by ln 2, a degree-6 polynomial, the exponent put back by integer
//! arithmetic) with no branches and no libm calls, so that inside [`vectorized`] — which runs
//! its closure compiled for the CPU's widest vector unit (AVX-512 or AVX2+FMA, found at run
//! time through `pulp`) — each loop below becomes 16 or 8 lanes wide. The `wide` crate offers the
//! same polynomial but picks its vector width at compile time (4 lanes in a generic x86-64
//! build), so it would not use the CPU we run on. Relative error: within 2 ulp (tested).

/// Run `f` compiled for the widest SIMD level this CPU has: AVX-512 (x86-64-v4), else
/// AVX2 + FMA (v3), else the build's baseline. The check is a cached CPUID read. Everything
/// `f` calls must be `#[inline(always)]` to be compiled that way too.
///
/// (`pulp::Arch::new()` would do the same, but its v3 level is behind a pulp feature that
/// burn-flex's dependency tree leaves off, so it would fall back to scalar code on AVX2.)
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(f);
        }
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(f);
        }
    }
    f()
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two, so that `n * LN2_HI` is exact for the |n| <= 128 that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, exp underflows f32's normal range: the result is 0 (exactly, so that -inf
/// masked scores give weight 0).
const MIN_ARG: f32 = -87.336_55;
/// Above this, 2^n would not fit the exponent field.
const MAX_ARG: f32 = 88.376_26;
/// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without a libm call.
const ROUND: f32 = 12_582_912.0;

/// `e^x`: 0 below `MIN_ARG` (and for -inf), `e^MAX_ARG` above `MAX_ARG`, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.clamp(MIN_ARG, MAX_ARG);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let e = y * scale;
    if x < MIN_ARG {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

/// `row[i] = e^(row[i] - shift)`; returns the sum of the new values.
#[inline(always)]
pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    // Eight partial sums, so the reduction vectorises too (the order of an f32 sum matters to
    // the compiler; these fix one).
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, a) in c.iter_mut().zip(acc.iter_mut()) {
            *x = exp(*x - shift);
            *a += *x;
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// `row[i] = e^(row[i] - shift)`.
#[inline(always)]
pub fn exp_shifted(row: &mut [f32], shift: f32) {
    for x in row {
        *x = exp(*x - shift);
    }
}

/// The largest element (-inf for an empty row).
#[inline(always)]
pub fn max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (x, a) in c.iter().zip(acc.iter_mut()) {
            *a = a.max(*x);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, x| m.max(*x));
    acc.iter().fold(m, |m, x| m.max(*x))
}

/// `Σ a[i] b[i]`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `row *= s`.
#[inline(always)]
pub fn scale(row: &mut [f32], s: f32) {
    for x in row {
        *x *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_whole_range() {
        let mut worst = 0;
        let mut x = MIN_ARG + 1e-3;
        while x < MAX_ARG {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.0137;
        }
        // Near zero, where attention's shifted scores mostly are.
        for i in -20_000..=0 {
            let x = i as f32 * 1e-3;
            worst = worst.max(ulps(exp(x), (x as f64).exp() as f32));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn row_helpers_match_scalar_loops_in_and_out_of_the_vectorised_context() {
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let other: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).cos()).collect();
        for wide in [false, true] {
            let run = || {
                let mut r = row.clone();
                let s = exp_shifted_sum(&mut r, 1.5);
                (r, s, max(&row), dot(&row, &other))
            };
            let (r, s, m, d) = if wide { vectorized(run) } else { run() };
            let want: Vec<f32> = row.iter().map(|x| (x - 1.5).exp()).collect();
            for (a, b) in r.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
            assert!((s - want.iter().sum::<f32>()).abs() < 1e-4);
            assert_eq!(m, row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x)));
            let d_want: f32 = row.iter().zip(&other).map(|(a, b)| a * b).sum();
            assert!((d - d_want).abs() < 1e-4);
        }
    }
}
