//! Windows of `seq_len + 1` tokens into input/target tensors, as a burn [`Batcher`].

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A batch of next-token prediction examples.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// `[batch, seq_len]`: window[..seq_len].
    pub inputs: Tensor<2, Int>,
    /// `[batch, seq_len]`: window[1..], the token following each input.
    pub targets: Tensor<2, Int>,
}

/// Turns windows of `seq_len + 1` tokens (from [`crate::TrainSampler`] or
/// [`crate::ValWindows`]) into a [`TokenBatch`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenBatcher;

impl TokenBatcher {
    /// Same as [`Batcher::batch`], callable without importing the trait.
    ///
    /// # Panics
    /// If `windows` is empty, or its windows are shorter than 2 tokens or of unequal lengths
    /// (the samplers never produce such windows).
    pub fn make(&self, windows: &[Vec<u32>], device: &Device) -> TokenBatch {
        let b = windows.len();
        assert!(b > 0, "TokenBatcher: empty batch");
        let t = windows[0].len() - 1;
        assert!(t >= 1, "TokenBatcher: windows need at least 2 tokens");
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for w in windows {
            assert_eq!(w.len(), t + 1, "TokenBatcher: windows of unequal lengths");
            inputs.extend(w[..t].iter().map(|&x| x as i64));
            targets.extend(w[1..].iter().map(|&x| x as i64));
        }
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [b, t]), device),
            targets: Tensor::from_data(TensorData::new(targets, [b, t]), device),
        }
    }
}

impl Batcher<Vec<u32>, TokenBatch> for TokenBatcher {
    fn batch(&self, items: Vec<Vec<u32>>, device: &Device) -> TokenBatch {
        self.make(&items, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_targets_by_one() {
        let device = Device::flex();
        let batch = TokenBatcher.batch(vec![vec![1, 2, 3, 4], vec![50000, 6, 7, 8]], &device);
        assert_eq!(batch.inputs.dims(), [2, 3]);
        assert_eq!(batch.targets.dims(), [2, 3]);
        let inputs: Vec<i64> = batch
            .inputs
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let targets: Vec<i64> = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(inputs, vec![1, 2, 3, 50000, 6, 7]);
        assert_eq!(targets, vec![2, 3, 4, 6, 7, 8]);
    }
}
