//! Generation caches: what each layer keeps between decode steps.
//!
//! - mha/gqa/mqa (and MLA in `naive` mode): rotated keys and values per K/V head,
//!   `k: [b, n_kv, T, d_qk]`, `v: [b, n_kv, T, d_v]`.
//! - MLA in `latent` mode: `[c_kv | k_pe]` per token, `[b, 1, T, kv_lora_rank + rope]`, plus
//!   the absorbed up-projections (weights, computed once; not counted as cache).
//!
//! Each cache tensor is a buffer with room for more tokens than it holds: a step writes its new
//! rows in place and attends over a view of the filled rows. Growing by concatenation instead
//! would copy the whole cache at every step, as much memory traffic as the attention itself.
//! The room is what [`KvCache::with_capacity`] reserves (generation knows prompt + new tokens),
//! doubled when a step outgrows it. [`KvCache::bytes_held`] counts the cached tokens,
//! [`KvCache::bytes_reserved`] the buffers.

use burn::tensor::Tensor;

use crate::accounting::CacheMode;
use crate::attention::mla::Absorbed;

/// A buffer growing along dim 2 (time): rows `0..len` are cached tokens, the rest is room.
#[derive(Clone, Debug)]
struct Rows {
    // [b, heads, capacity, d]
    buf: Tensor<4>,
    len: usize,
}

impl Rows {
    fn empty(like: &Tensor<4>, capacity: usize) -> Self {
        let [b, h, _, d] = like.dims();
        Self {
            buf: Tensor::empty([b, h, capacity, d], (&like.device(), like.dtype())),
            len: 0,
        }
    }

    /// Write `new` after the cached rows, in place unless the room runs out (then the buffer
    /// doubles, or grows to fit `new` if that is more).
    ///
    /// # Shapes
    /// - new: `[b, heads, t, d]`
    fn push(self, new: Tensor<4>) -> Self {
        let [b, h, t, d] = new.dims();
        let Self { mut buf, len } = self;
        let capacity = buf.dims()[2];
        if len + t > capacity {
            let grown = (2 * capacity).max(len + t);
            let room = Tensor::empty([b, h, grown - len, d], (&new.device(), new.dtype()));
            // [b, h, len, d] ++ [b, h, grown - len, d] -> [b, h, grown, d]
            buf = Tensor::cat(vec![buf.slice_dim(2, 0..len), room], 2);
        }
        // `buf` is owned here and no view of it is alive between steps, so both backends write
        // in place (a shared buffer, as after `KvCache::clone`, is copied once first).
        let buf = buf.slice_assign([0..b, 0..h, len..len + t, 0..d], new);
        Self { buf, len: len + t }
    }

    /// The cached rows, a view of the buffer: `[b, heads, len, d]`.
    fn filled(&self) -> Tensor<4> {
        self.buf.clone().slice_dim(2, 0..self.len)
    }

    /// Scalars in the cached rows.
    fn elements(&self) -> usize {
        let [b, h, _, d] = self.buf.dims();
        b * h * self.len * d
    }

    fn bytes(&self) -> usize {
        self.elements() * self.buf.dtype().size()
    }

    fn bytes_reserved(&self) -> usize {
        self.buf.shape().num_elements() * self.buf.dtype().size()
    }
}

// One per layer: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum State {
    Empty,
    Kv { k: Rows, v: Rows },
    Latent { latents: Rows },
}

/// One layer's cache.
#[derive(Clone, Debug)]
pub struct LayerCache {
    mode: CacheMode,
    state: State,
    /// Tokens to make room for when the first rows arrive.
    reserve: usize,
    absorbed: Option<Absorbed>,
}

impl LayerCache {
    pub fn new(mode: CacheMode) -> Self {
        Self {
            mode,
            state: State::Empty,
            reserve: 0,
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
            State::Kv { k, .. } => k.len,
            State::Latent { latents } => latents.len,
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
        let (k0, v0) = match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => (Rows::empty(&k, self.reserve), Rows::empty(&v, self.reserve)),
            State::Kv { k, v } => (k, v),
            State::Latent { .. } => unreachable!("a latent cache never receives K/V"),
        };
        let (k, v) = (k0.push(k), v0.push(v));
        let filled = (k.filled(), v.filled());
        self.state = State::Kv { k, v };
        filled
    }

    /// Append new `[c_kv | k_pe]` rows and return everything cached.
    ///
    /// # Shapes
    /// - latent `[b, 1, t, r + rope]` -> `[b, 1, T, r + rope]`
    pub fn append_latent(&mut self, latent: Tensor<4>) -> Tensor<4> {
        let latents = match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => Rows::empty(&latent, self.reserve),
            State::Latent { latents } => latents,
            State::Kv { .. } => unreachable!("a K/V cache never receives latents"),
        }
        .push(latent);
        let filled = latents.filled();
        self.state = State::Latent { latents };
        filled
    }

    /// The absorbed weights for this layer, computed on first use.
    pub fn absorbed(&mut self, compute: impl FnOnce() -> Absorbed) -> &Absorbed {
        self.absorbed.get_or_insert_with(compute)
    }

    /// Scalars of the cached tokens (absorbed weights excluded).
    pub fn elements_held(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => k.elements() + v.elements(),
            State::Latent { latents } => latents.elements(),
        }
    }

    /// Bytes of the cached tokens, at the dtype they are stored in.
    pub fn bytes_held(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => k.bytes() + v.bytes(),
            State::Latent { latents } => latents.bytes(),
        }
    }

    /// Bytes of the cache buffers, room for further tokens included.
    pub fn bytes_reserved(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => k.bytes_reserved() + v.bytes_reserved(),
            State::Latent { latents } => latents.bytes_reserved(),
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

    /// Make room for `tokens` in every layer when the first tokens arrive (the buffers double
    /// when outgrown, so this is a hint, not a limit).
    pub fn with_capacity(mut self, tokens: usize) -> Self {
        for layer in &mut self.layers {
            layer.reserve = tokens;
        }
        self
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Layer `i`'s cache (to inspect it, or to set its absorbed weights before decoding).
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
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

    pub fn bytes_reserved(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes_reserved).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn rows(values: &[f32], device: &Device) -> Tensor<4> {
        // [1, 1, t, 2]
        Tensor::<1>::from_floats(values, device).reshape([1, 1, values.len() / 2, 2])
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// flex, and libtorch's CPU device in a `tch` build: the two decide differently when a
    /// write may happen in place.
    fn devices() -> Vec<Device> {
        #[allow(unused_mut)]
        let mut devices = vec![Device::flex()];
        #[cfg(feature = "tch")]
        #[allow(deprecated)] // burn-tch: see mla-train's device.rs
        devices.push(Device::libtorch());
        devices
    }

    #[test]
    fn appends_in_place_grow_and_leave_clones_alone() {
        for device in devices() {
            appends_on(&device);
        }
    }

    fn appends_on(device: &Device) {
        let device = device.clone();
        let mut cache = LayerCache::new(CacheMode::Latent);
        cache.reserve = 2;
        let a = cache.append_latent(rows(&[1., 2.], &device));
        assert_eq!(values(a), [1., 2.]);
        assert_eq!(cache.bytes_reserved(), 2 * 2 * 4);
        // A clone shares the buffer until one of them writes.
        let mut copy = cache.clone();
        let b = cache.append_latent(rows(&[3., 4.], &device));
        assert_eq!(values(b), [1., 2., 3., 4.]);
        let c = copy.append_latent(rows(&[9., 9., 8., 8.], &device)); // outgrows 2 -> 4 rows
        assert_eq!(values(c), [1., 2., 9., 9., 8., 8.]);
        assert_eq!(copy.bytes_reserved(), 4 * 2 * 4);
        assert_eq!(
            values(cache.append_latent(rows(&[5., 6.], &device))),
            [1., 2., 3., 4., 5., 6.]
        );
        assert_eq!((cache.len(), copy.len()), (3, 3));
        assert_eq!(cache.elements_held(), 6);
        assert_eq!(cache.bytes_held(), 24);
        assert_eq!(cache.bytes_reserved(), 4 * 2 * 4);
    }
}
