//! Generation caches: what each layer keeps between decode steps.
//!
//! - mha/gqa/mqa (and MLA in `naive` mode): rotated keys and values per K/V head,
//!   `k: [b, n_kv, T, d_qk]`, `v: [b, n_kv, T, d_v]`.
//! - MLA in `latent` mode: `[c_kv | k_pe]` per token, `[b, 1, T, kv_lora_rank + rope]`, plus
//!   the absorbed up-projections (weights, computed once; not counted as cache).
//!
//! Caches grow by concatenation, so the tensors held are exactly the tokens seen and
//! [`KvCache::bytes_held`] measures the real footprint.

use burn::tensor::Tensor;

use crate::accounting::CacheMode;
use crate::attention::mla::Absorbed;

// One per layer: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum State {
    Empty,
    Kv { k: Tensor<4>, v: Tensor<4> },
    Latent { latents: Tensor<4> },
}

/// One layer's cache.
#[derive(Clone, Debug)]
pub struct LayerCache {
    mode: CacheMode,
    state: State,
    absorbed: Option<Absorbed>,
}

impl LayerCache {
    pub fn new(mode: CacheMode) -> Self {
        Self {
            mode,
            state: State::Empty,
            absorbed: None,
        }
    }

    /// Whether MLA should decode from latents with absorbed weights.
    pub fn is_latent(&self) -> bool {
        self.mode == CacheMode::Latent
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, .. } => k.dims()[2],
            State::Latent { latents } => latents.dims()[2],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append new keys/values along the time axis and return everything cached.
    ///
    /// # Shapes
    /// - k `[b, n_kv, t, d_qk]`, v `[b, n_kv, t, d_v]` -> (`[b, n_kv, T, d_qk]`, `[b, n_kv, T, d_v]`)
    pub fn append_kv(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => (k, v),
            State::Kv { k: k0, v: v0 } => {
                (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2))
            }
            State::Latent { .. } => unreachable!("a latent cache never receives K/V"),
        };
        self.state = State::Kv {
            k: k.clone(),
            v: v.clone(),
        };
        (k, v)
    }

    /// Append new `[c_kv | k_pe]` rows and return everything cached.
    ///
    /// # Shapes
    /// - latent `[b, 1, t, r + rope]` -> `[b, 1, T, r + rope]`
    pub fn append_latent(&mut self, latent: Tensor<4>) -> Tensor<4> {
        let latents = match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => latent,
            State::Latent { latents } => Tensor::cat(vec![latents, latent], 2),
            State::Kv { .. } => unreachable!("a K/V cache never receives latents"),
        };
        self.state = State::Latent {
            latents: latents.clone(),
        };
        latents
    }

    /// The absorbed weights for this layer, computed on first use.
    pub fn absorbed(&mut self, compute: impl FnOnce() -> Absorbed) -> &Absorbed {
        self.absorbed.get_or_insert_with(compute)
    }

    /// Scalars held by the cache tensors (absorbed weights excluded).
    pub fn elements_held(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => k.shape().num_elements() + v.shape().num_elements(),
            State::Latent { latents } => latents.shape().num_elements(),
        }
    }

    /// Bytes held by the cache tensors, at the dtype they are stored in.
    pub fn bytes_held(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => {
                k.shape().num_elements() * k.dtype().size()
                    + v.shape().num_elements() * v.dtype().size()
            }
            State::Latent { latents } => latents.shape().num_elements() * latents.dtype().size(),
        }
    }
}

/// A whole model's cache: one [`LayerCache`] per layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    mode: CacheMode,
}

impl KvCache {
    pub fn new(n_layers: usize, mode: CacheMode) -> Self {
        Self {
            layers: (0..n_layers).map(|_| LayerCache::new(mode)).collect(),
            mode,
        }
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elements_held(&self) -> usize {
        self.layers.iter().map(LayerCache::elements_held).sum()
    }

    pub fn bytes_held(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes_held).sum()
    }
}
