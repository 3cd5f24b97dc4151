//! The decoder-only LM: embedding -> blocks -> final RMSNorm -> LM head, and its loss.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, RmsNorm};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::accounting::CacheMode;
use crate::block::Block;
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::fused::{self, rms_norm};
use crate::init;
use crate::linear::{linear, matmul_rows};
use crate::rope::Rope;

#[derive(Module, Debug)]
pub struct Lm {
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    rope: Rope,
    #[module(skip)]
    config: ModelConfig,
}

impl Lm {
    /// A freshly initialised model (see [`crate::init`] for the scheme). Seed the device first
    /// (`device.seed(n)`) for reproducible weights.
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let std = cfg.init_std;
        Self {
            embed_tokens: EmbeddingConfig::new(cfg.vocab_size, cfg.d_model)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device),
            layers: (0..cfg.n_layers).map(|_| Block::new(cfg, device)).collect(),
            norm: init::rms_norm(cfg.d_model, cfg.rms_norm_eps, device),
            lm_head: (!cfg.tie_embeddings)
                .then(|| init::linear(cfg.d_model, cfg.vocab_size, std, device)),
            rope: Rope::new(cfg, device),
            config: cfg.clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, vocab_size]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let mut x = self.embed_tokens.forward(tokens); // [b, t, d]
        for layer in &self.layers {
            x = layer.forward(x, &self.rope, None);
        }
        self.head(x)
    }

    /// Logits for `tokens`, which follow the ones already in `cache`; the cache grows by them.
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, vocab_size]`
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let mut x = self.embed_tokens.forward(tokens); // [b, t, d]
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &self.rope, Some(layer_cache));
        }
        self.head(x)
    }

    /// Logits of the last position only (what generation samples from), for `tokens` that
    /// follow the ones in `cache`: the head, the largest matmul at prefill, runs once per row.
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, vocab_size]`
    pub fn forward_cached_last(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let mut x = self.embed_tokens.forward(tokens); // [b, t, d]
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &self.rope, Some(layer_cache));
        }
        let [b, t, _] = x.dims();
        let last = x.slice_dim(1, t - 1..t); // [b, 1, d]
        self.head(last).reshape([b, self.config.vocab_size])
    }

    /// Logits at one position per row: row `i` at `last[i]`. For a batch of prompts of
    /// different lengths padded on the right: the causal mask keeps every real token from
    /// seeing the padding after it, so row `i`'s logits at its last real token are those of the
    /// prompt alone. With a cache the tokens follow the cached ones (an ordinary cache, not a
    /// batched one); without one they are the whole sequences.
    ///
    /// # Shapes
    /// - tokens: `[b, t]`, `last.len() == b` -> `[b, vocab_size]`
    pub fn forward_at(
        &self,
        tokens: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
        last: &[usize],
    ) -> Tensor<2> {
        let mut x = self.embed_tokens.forward(tokens); // [b, t, d]
        match cache {
            Some(cache) => {
                for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, &self.rope, Some(layer_cache));
                }
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(x, &self.rope, None);
                }
            }
        }
        let [b, t, d] = x.dims();
        assert_eq!(last.len(), b, "one position per row");
        let rows: Vec<i64> = last
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                assert!(p < t, "position {p} of a row of {t} tokens");
                (i * t + p) as i64
            })
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &x.device());
        // [b, t, d] -> [b * t, d] -> [b, d] -> [b, 1, d]: only the rows the head must see
        let picked = x.reshape([b * t, d]).select(0, index).reshape([b, 1, d]);
        self.head(picked).reshape([b, self.config.vocab_size])
    }

    /// An empty generation cache for this model.
    pub fn new_cache(&self, mode: CacheMode) -> KvCache {
        KvCache::new(self.layers.len(), mode)
    }

    /// An empty batched generation cache: `slots` sequences of their own lengths, room for
    /// `capacity` tokens each (see [`KvCache::batched`]).
    pub fn new_batched_cache(&self, mode: CacheMode, slots: usize, capacity: usize) -> KvCache {
        KvCache::batched(self.layers.len(), mode, slots, capacity)
    }

    /// # Shapes
    /// - x: `[b, t, d]` -> `[b, t, vocab_size]`
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let x = rms_norm(&self.norm, x);
        match &self.lm_head {
            Some(head) => linear(head, x),
            // Tied: logits = x E^T, E = [vocab, d] -> [d, vocab]
            None => matmul_rows(x, self.embed_tokens.weight.val().transpose()),
        }
    }

    /// Mean next-token cross-entropy of `targets` given `inputs`.
    ///
    /// # Shapes
    /// - inputs, targets: `[b, t]` -> `[1]`
    pub fn loss(&self, inputs: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        cross_entropy(self.forward(inputs), targets)
    }
}

/// Mean cross-entropy of integer targets under logits.
///
/// # Shapes
/// - logits `[b, t, v]`, targets `[b, t]` -> `[1]`
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    // [b, t, v] -> [b * t, v], in f32 whatever the compute precision: the loss needs it.
    let log_probs = fused::log_softmax(logits.reshape([b * t, v]).cast(DType::F32));
    // [b * t, 1]: the log-probability of each target
    let picked = log_probs.gather(1, targets.reshape([b * t, 1]));
    picked.mean().neg()
}
