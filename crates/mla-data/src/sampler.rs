//! Training and evaluation windows over token shards.
//!
//! [`TrainSampler`] draws windows of `seq_len + 1` tokens (inputs and next-token targets) in
//! a seeded random order. An epoch is a permutation of every non-overlapping window of every
//! shard: shard `s` is cut at `o_s + k * seq_len` (consecutive windows share one token, so each
//! token is a target once per epoch), where the offset `o_s` is drawn per epoch so that window
//! boundaries move between epochs. Windows never cross shards. Epoch `e`'s offset and
//! permutation come from `ChaCha8Rng::seed_from_u64(seed)` on stream `e`, so
//! (seed, epoch, cursor) is the whole position: a run restored from a [`SamplerState`] draws
//! exactly the windows an uninterrupted run would have drawn.
//!
//! [`ValWindows`] is the deterministic counterpart for evaluation: window `k` of each shard
//! starts at `k * seq_len`, shards in order. It is a burn [`Dataset`].

use burn::data::dataset::{Dataset, DatasetError};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::shard::ShardSet;

/// The whole position of a [`TrainSampler`]; small, and serialisable into a checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SamplerState {
    /// Seed of every epoch's RNG.
    pub seed: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Windows of the current epoch already drawn (always below the epoch's window count).
    pub cursor: u64,
    /// Sequence length the state belongs to (checked on restore).
    pub seq_len: u64,
    /// Total tokens of the shards the state belongs to (checked on restore).
    pub tokens: u64,
}

/// Seeded, resumable random windows over the training shards.
pub struct TrainSampler {
    shards: ShardSet,
    seq_len: usize,
    seed: u64,
    epoch: u64,
    cursor: u64,
    /// Per shard: offset of its first window this epoch.
    offsets: Vec<usize>,
    /// Prefix sums of windows per shard (len = shards + 1).
    starts: Vec<u64>,
    /// This epoch's order of global window ids.
    order: Vec<u64>,
}

impl TrainSampler {
    /// A sampler at the start of epoch 0.
    pub fn new(shards: ShardSet, seq_len: usize, seed: u64) -> Result<Self> {
        let tokens = shards.total_tokens();
        Self::restore(
            shards,
            seq_len,
            SamplerState {
                seed,
                epoch: 0,
                cursor: 0,
                seq_len: seq_len as u64,
                tokens,
            },
        )
    }

    /// A sampler at a saved position. The shards and `seq_len` must be those of the run that
    /// saved the state.
    pub fn restore(shards: ShardSet, seq_len: usize, state: SamplerState) -> Result<Self> {
        check_fits(&shards, seq_len)?;
        let tokens = shards.total_tokens();
        if state.seq_len != seq_len as u64 || state.tokens != tokens {
            return Err(DataError::BadState(format!(
                "the state was saved for seq_len {} over {} tokens, but {} has {} tokens and \
                 seq_len is {}",
                state.seq_len,
                state.tokens,
                shards.source(),
                tokens,
                seq_len
            )));
        }
        let mut s = TrainSampler {
            shards,
            seq_len,
            seed: state.seed,
            epoch: state.epoch,
            cursor: state.cursor,
            offsets: Vec::new(),
            starts: Vec::new(),
            order: Vec::new(),
        };
        s.lay_out_epoch();
        if state.cursor == s.order.len() as u64 {
            s.next_epoch();
        } else if state.cursor > s.order.len() as u64 {
            return Err(DataError::BadState(format!(
                "cursor {} is past the {} windows of epoch {}",
                state.cursor,
                s.order.len(),
                state.epoch
            )));
        }
        Ok(s)
    }

    /// The current position.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            epoch: self.epoch,
            cursor: self.cursor,
            seq_len: self.seq_len as u64,
            tokens: self.shards.total_tokens(),
        }
    }

    /// Sequence length (windows hold one token more).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Windows in the current epoch (varies by at most one per shard between epochs).
    pub fn windows_per_epoch(&self) -> u64 {
        self.order.len() as u64
    }

    /// The shards sampled from.
    pub fn shards(&self) -> &ShardSet {
        &self.shards
    }

    /// The next window of `seq_len + 1` tokens; starts a new epoch when this one is used up.
    pub fn next_window(&mut self) -> Vec<u32> {
        let w = self.order[self.cursor as usize];
        self.cursor += 1;
        let s = self.starts.partition_point(|&st| st <= w) - 1;
        let k = (w - self.starts[s]) as usize;
        let start = self.offsets[s] + k * self.seq_len;
        let window = self.shards.shards()[s].tokens(start..start + self.seq_len + 1);
        if self.cursor == self.order.len() as u64 {
            // Roll over at once, so `epoch()` and the state always name the next window's epoch.
            self.next_epoch();
        }
        window
    }

    fn next_epoch(&mut self) {
        self.epoch += 1;
        self.cursor = 0;
        self.lay_out_epoch();
    }

    /// Moves past the next `n` windows without reading them (another rank's micro-batches).
    pub fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.cursor += 1;
            if self.cursor == self.order.len() as u64 {
                self.next_epoch();
            }
        }
    }

    /// The next `batch` windows.
    pub fn next_batch(&mut self, batch: usize) -> Vec<Vec<u32>> {
        (0..batch).map(|_| self.next_window()).collect()
    }

    fn lay_out_epoch(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.epoch);
        let o = rng.random_range(0..self.seq_len as u64) as usize;
        let need = self.seq_len + 1;
        self.offsets.clear();
        self.starts.clear();
        self.starts.push(0);
        let mut total = 0u64;
        for shard in self.shards.shards() {
            let (off, count) = if shard.len() < need {
                (0, 0)
            } else {
                // A shard with less slack than the offset gets it modulo its slack, so every
                // shard long enough for one window yields at least one in every epoch.
                let slack = shard.len() - need;
                let off = o % (slack + 1);
                (off, ((slack - off) / self.seq_len + 1) as u64)
            };
            total += count;
            self.offsets.push(off);
            self.starts.push(total);
        }
        self.order = (0..total).collect();
        self.order.shuffle(&mut rng);
    }
}

fn check_fits(shards: &ShardSet, seq_len: usize) -> Result<()> {
    if seq_len == 0 {
        return Err(DataError::InvalidOption(
            "seq_len must be at least 1".into(),
        ));
    }
    if shards.longest() < seq_len as u64 + 1 {
        return Err(DataError::NotEnoughTokens {
            what: shards.source().to_string(),
            needed: seq_len as u64 + 1,
            longest: shards.longest(),
            total: shards.total_tokens(),
        });
    }
    Ok(())
}

/// Sequential non-overlapping windows of `seq_len + 1` tokens over shards in order (window
/// `k` of a shard starts at `k * seq_len`), for deterministic evaluation.
#[derive(Clone, Debug)]
pub struct ValWindows {
    shards: ShardSet,
    seq_len: usize,
    starts: Vec<u64>,
}

impl ValWindows {
    /// Fails if no shard holds one window.
    pub fn new(shards: ShardSet, seq_len: usize) -> Result<Self> {
        check_fits(&shards, seq_len)?;
        let mut starts = vec![0u64];
        let mut total = 0u64;
        for shard in shards.shards() {
            if shard.len() > seq_len {
                total += ((shard.len() - 1) / seq_len) as u64;
            }
            starts.push(total);
        }
        Ok(ValWindows {
            shards,
            seq_len,
            starts,
        })
    }

    /// Window `index` (panics past the end, as slice indexing does).
    pub fn window(&self, index: usize) -> Vec<u32> {
        let w = index as u64;
        let total = *self.starts.last().unwrap();
        assert!(w < total, "window {index} out of range ({total} windows)");
        let s = self.starts.partition_point(|&st| st <= w) - 1;
        let start = (w - self.starts[s]) as usize * self.seq_len;
        self.shards.shards()[s].tokens(start..start + self.seq_len + 1)
    }

    /// Number of windows.
    pub fn num_windows(&self) -> usize {
        *self.starts.last().unwrap() as usize
    }

    /// Sequence length (windows hold one token more).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
}

impl Dataset<Vec<u32>> for ValWindows {
    fn get(&self, index: usize) -> Result<Vec<u32>, DatasetError> {
        Ok(self.window(index))
    }

    fn len(&self) -> usize {
        self.num_windows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{TokenDtype, write_shard};
    use std::collections::HashMap;

    fn shards(lens: &[u32]) -> (tempfile::TempDir, ShardSet) {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0u32;
        for (i, &n) in lens.iter().enumerate() {
            // Distinct token values, so a window tells where it came from.
            let toks: Vec<u32> = (next..next + n).collect();
            next += n;
            write_shard(
                dir.path().join(format!("t_{i}.bin")),
                &toks,
                TokenDtype::U32,
            )
            .unwrap();
        }
        let set = ShardSet::open_glob(dir.path().join("t_*.bin").to_str().unwrap(), None).unwrap();
        (dir, set)
    }

    /// Skipping windows (another rank's share) lands where reading them would, across epochs.
    #[test]
    fn skipping_equals_reading_past() {
        let (_d, set) = shards(&[100, 37, 9]);
        let mut read = TrainSampler::new(set.clone(), 8, 3).unwrap();
        let mut skip = TrainSampler::new(set, 8, 3).unwrap();
        let n = read.windows_per_epoch() as usize;
        for k in [1, 3, n - 1, 2 * n + 1] {
            read.next_batch(k);
            skip.skip(k);
            assert_eq!(read.state(), skip.state(), "after {k}");
            assert_eq!(read.next_window(), skip.next_window());
        }
    }

    #[test]
    fn an_epoch_uses_each_token_as_target_at_most_once() {
        let (_d, set) = shards(&[100, 37, 9]);
        let mut s = TrainSampler::new(set, 8, 3).unwrap();
        for _ in 0..4 {
            let epoch = s.epoch();
            let n = s.windows_per_epoch();
            let mut targets: HashMap<u32, u32> = HashMap::new();
            for _ in 0..n {
                let w = s.next_window();
                assert_eq!(w.len(), 9);
                assert!(
                    w.windows(2).all(|p| p[1] == p[0] + 1),
                    "crossed a shard: {w:?}"
                );
                for &t in &w[1..] {
                    *targets.entry(t).or_default() += 1;
                }
            }
            assert_eq!(s.epoch(), epoch + 1);
            assert!(targets.values().all(|&c| c == 1));
            // Whatever the offset: at least 11 windows of 100 tokens, 3 of 37, 1 of 9.
            assert!(n >= 15, "{n}");
        }
    }

    #[test]
    fn offsets_change_between_epochs() {
        let (_d, set) = shards(&[1000]);
        let mut s = TrainSampler::new(set, 16, 7).unwrap();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..8 {
            let n = s.windows_per_epoch();
            let min = (0..n).map(|_| s.next_window()[0]).min().unwrap();
            firsts.insert(min);
        }
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn state_restores_the_same_stream() {
        let (_d, set) = shards(&[300, 50]);
        let mut a = TrainSampler::new(set.clone(), 10, 42).unwrap();
        let mut seen = Vec::new();
        for _ in 0..25 {
            seen.push(a.next_batch(3));
        }
        let mid = a.state();
        let rest: Vec<_> = (0..25).map(|_| a.next_batch(3)).collect();
        let json = serde_json::to_string(&mid).unwrap();
        let mut b = TrainSampler::restore(set, 10, serde_json::from_str(&json).unwrap()).unwrap();
        let again: Vec<_> = (0..25).map(|_| b.next_batch(3)).collect();
        assert_eq!(rest, again);
        assert!(mid.epoch >= 1, "the test should cross an epoch: {mid:?}");
    }

    #[test]
    fn restore_checks_the_state() {
        let (_d, set) = shards(&[300]);
        let s = TrainSampler::new(set.clone(), 10, 1).unwrap();
        let mut st = s.state();
        let e = TrainSampler::restore(set.clone(), 12, st.clone())
            .err()
            .unwrap();
        assert!(e.to_string().contains("seq_len 10 over 300 tokens"), "{e}");
        st.cursor = 1000;
        let e = TrainSampler::restore(set, 10, st).err().unwrap();
        assert!(e.to_string().contains("cursor 1000"), "{e}");
    }

    #[test]
    fn too_little_data_says_how_much() {
        let (_d, set) = shards(&[5, 6]);
        let e = TrainSampler::new(set.clone(), 8, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("seq_len + 1 = 9"), "{e}");
        assert!(e.contains("longest shard has 6 tokens (11 in all)"), "{e}");
        assert!(ValWindows::new(set, 8).is_err());
    }

    #[test]
    fn val_windows_are_sequential() {
        let (_d, set) = shards(&[21, 5, 10]);
        let v = ValWindows::new(set, 4).unwrap();
        // (21-1)/4 = 5, (5-1)/4 = 1, (10-1)/4 = 2
        assert_eq!(v.len(), 8);
        assert_eq!(v.get(0).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(v.get(4).unwrap(), vec![16, 17, 18, 19, 20]);
        assert_eq!(v.get(5).unwrap(), vec![21, 22, 23, 24, 25]);
        assert_eq!(v.get(7).unwrap(), vec![30, 31, 32, 33, 34]);
    }
}
