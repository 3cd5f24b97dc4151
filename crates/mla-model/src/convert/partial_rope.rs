//! Partial RoPE (MHA2MLA, arXiv:2502.14837 section 3.1): which rotary pairs of a head keep
//! their position. Pair `p` of a `dim`-wide RoPE turns at `theta^(-2p/dim)`: pair 0 is the
//! highest frequency.

use crate::config::RopeStyle;

/// The four strategies of MHA2MLA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeSelect {
    /// The highest-frequency pairs (`0..k`).
    High,
    /// The lowest-frequency pairs (`n-k..n`).
    Low,
    /// Every `n/k`-th pair, from the highest frequency on (`floor(i * n / k)`).
    Uniform,
    /// The pairs with the largest mean `‖q_pair‖·‖k_pair‖` over calibration tokens.
    TwoNorm,
}

impl RopeSelect {
    pub const ALL: [RopeSelect; 4] = [Self::TwoNorm, Self::High, Self::Low, Self::Uniform];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Low => "low",
            Self::Uniform => "uniform",
            Self::TwoNorm => "2norm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the strategy ranks pairs by calibration statistics.
    pub fn needs_calibration(self) -> bool {
        self == Self::TwoNorm
    }
}

impl std::fmt::Display for RopeSelect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `k` of `n` pairs one head keeps, ascending. `scores` (one per pair) rank them for
/// [`RopeSelect::TwoNorm`]: the `k` largest win, ties going to the higher frequency.
pub fn select(strategy: RopeSelect, n: usize, k: usize, scores: Option<&[f64]>) -> Vec<usize> {
    assert!(k <= n, "cannot keep {k} of {n} pairs");
    let mut pairs: Vec<usize> = match strategy {
        RopeSelect::High => (0..k).collect(),
        RopeSelect::Low => (n - k..n).collect(),
        RopeSelect::Uniform => (0..k).map(|i| i * n / k).collect(),
        RopeSelect::TwoNorm => {
            let scores = scores.expect("2norm ranks pairs by calibration scores");
            let mut order: Vec<usize> = (0..n).collect();
            // Stable: equal scores keep the lower index (higher frequency) first.
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            order.truncate(k);
            order
        }
    };
    pairs.sort_unstable();
    pairs
}

/// The row of component `c` (0 or 1) of pair `p` in a `dim`-wide rotated slice.
pub fn pair_row(style: RopeStyle, dim: usize, p: usize, c: usize) -> usize {
    match style {
        RopeStyle::Interleaved => 2 * p + c,
        RopeStyle::Half => p + c * dim / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One hand-built case per strategy: 8 pairs, keep 3.
    #[test]
    fn each_strategy_picks_its_pairs() {
        assert_eq!(select(RopeSelect::High, 8, 3, None), vec![0, 1, 2]);
        assert_eq!(select(RopeSelect::Low, 8, 3, None), vec![5, 6, 7]);
        assert_eq!(select(RopeSelect::Uniform, 8, 3, None), vec![0, 2, 5]);
        assert_eq!(select(RopeSelect::Uniform, 8, 4, None), vec![0, 2, 4, 6]);
        let scores = [0.1, 3.0, 0.2, 0.2, 5.0, 0.0, 1.0, 0.3];
        assert_eq!(
            select(RopeSelect::TwoNorm, 8, 3, Some(&scores)),
            vec![1, 4, 6]
        );
        // A tie goes to the higher frequency (lower index).
        assert_eq!(
            select(RopeSelect::TwoNorm, 8, 4, Some(&scores)),
            vec![1, 4, 6, 7]
        );
        assert_eq!(
            select(RopeSelect::TwoNorm, 4, 1, Some(&[1.0, 2.0, 2.0, 0.5])),
            vec![1]
        );
    }

    #[test]
    fn names_round_trip() {
        for s in RopeSelect::ALL {
            assert_eq!(RopeSelect::parse(s.as_str()), Some(s));
        }
        assert_eq!(RopeSelect::parse("2-norm"), None);
    }

    #[test]
    fn pair_rows_follow_the_style() {
        assert_eq!(pair_row(RopeStyle::Interleaved, 8, 2, 1), 5);
        assert_eq!(pair_row(RopeStyle::Half, 8, 2, 1), 6);
        assert_eq!(pair_row(RopeStyle::Half, 8, 3, 0), 3);
    }
}
