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
//!
//! A *batched* cache ([`KvCache::batched`]) gives each batch row ("slot") a sequence of its
//! own length, for generating many prompts at once. Prompts are prefilled into an ordinary
//! cache and copied into free slots ([`KvCache::insert`]); a decode step then feeds one token
//! per slot, written at that slot's own length and rotated at its own position. Keys past a
//! slot's length are stale (an earlier, longer occupant, or zeros) and are masked out of its
//! attention ([`LayerCache::key_mask`]); the buffers start zeroed so that stale values are
//! always finite (a masked key has probability 0, but `0 * NaN` would still be NaN).

use burn::tensor::{Bool, Tensor, TensorData};

use crate::accounting::CacheMode;
use crate::attention::mla::Absorbed;
use crate::rope::Positions;

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

    /// A zeroed buffer of `slots` rows shaped like `like`'s heads and width (a batched cache:
    /// stale rows must be finite).
    fn zeroed(like: &Tensor<4>, slots: usize, capacity: usize) -> Self {
        let [_, h, _, d] = like.dims();
        Self {
            buf: Tensor::zeros([slots, h, capacity, d], (&like.device(), like.dtype())),
            len: 0,
        }
    }

    /// Grow the (zeroed) buffer so that it holds at least `rows` tokens, doubling.
    fn reserve_zeroed(&mut self, rows: usize) {
        let [b, h, capacity, d] = self.buf.dims();
        if rows <= capacity {
            return;
        }
        let grown = (2 * capacity).max(rows);
        let room = Tensor::zeros(
            [b, h, grown - capacity, d],
            (&self.buf.device(), self.buf.dtype()),
        );
        // [b, h, capacity, d] ++ [b, h, grown - capacity, d] -> [b, h, grown, d]
        self.buf = Tensor::cat(vec![self.buf.clone(), room], 2);
    }

    /// Batched: write slot `i`'s one new row at `lens[i]`, each run of slots with equal lengths
    /// in one in-place write (a batch decoding in step needs one). The view grows to the
    /// longest slot.
    ///
    /// # Shapes
    /// - new: `[slots, heads, 1, d]`
    fn push_rows(mut self, new: Tensor<4>, lens: &[usize]) -> Self {
        let [b, h, t, d] = new.dims();
        assert_eq!(
            t, 1,
            "a batched cache takes one token per slot; prefill goes through KvCache::insert"
        );
        assert_eq!(b, lens.len(), "one row per slot");
        let longest = lens.iter().copied().max().unwrap_or(0) + 1;
        self.reserve_zeroed(longest);
        let mut buf = self.buf;
        let mut start = 0;
        while start < b {
            let len = lens[start];
            let end = start + lens[start..].iter().take_while(|&&l| l == len).count();
            // [end - start, h, 1, d] into rows len..len + 1 of those slots
            let part = new.clone().slice_dim(0, start..end);
            buf = buf.slice_assign([start..end, 0..h, len..len + 1, 0..d], part);
            start = end;
        }
        Self { buf, len: longest }
    }

    /// Batched: copy `len` rows of row `row` of `from` (a view `[b, h, >= len, d]`) into
    /// slot `slot`.
    fn insert(mut self, slot: usize, from: &Tensor<4>, row: usize, len: usize) -> Self {
        let [_, h, _, d] = from.dims();
        self.reserve_zeroed(len);
        // [1, h, len, d]
        let part = from.clone().slice([row..row + 1, 0..h, 0..len, 0..d]);
        let buf = self
            .buf
            .slice_assign([slot..slot + 1, 0..h, 0..len, 0..d], part);
        Self {
            buf,
            len: self.len.max(len),
        }
    }

    /// Scalars of one cached token of one slot.
    fn token_elements(&self) -> usize {
        let [_, h, _, d] = self.buf.dims();
        h * d
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
    /// A batched cache: the length of each slot's sequence (see the module docs).
    slots: Option<Vec<usize>>,
}

impl LayerCache {
    pub fn new(mode: CacheMode) -> Self {
        Self {
            mode,
            state: State::Empty,
            reserve: 0,
            absorbed: None,
            slots: None,
        }
    }

    /// A batched cache of `slots` empty sequences.
    fn batched(mode: CacheMode, slots: usize, capacity: usize) -> Self {
        Self {
            slots: Some(vec![0; slots]),
            reserve: capacity,
            ..Self::new(mode)
        }
    }

    /// Where the next tokens go: after the cached ones, per slot in a batched cache whose
    /// slots differ in length.
    pub fn positions(&self) -> Positions {
        match &self.slots {
            Some(lens) if lens.iter().any(|&l| l != lens[0]) => Positions::Rows(lens.clone()),
            Some(lens) => Positions::From(lens.first().copied().unwrap_or(0)),
            None => Positions::From(self.len()),
        }
    }

    /// Batched, slots of different lengths: `true` for the keys of the cached view past each
    /// slot's own length (stale rows it must not attend to). `None` when nothing is masked.
    ///
    /// # Shapes
    /// - returns `[slots, 1, 1, T]`, T = the view's length
    pub fn key_mask(&self) -> Option<Tensor<4, Bool>> {
        let lens = self.slots.as_ref()?;
        let t = self.len();
        if lens.iter().all(|&l| l == t) {
            return None;
        }
        let device = match &self.state {
            State::Empty => return None,
            State::Kv { k, .. } => k.buf.device(),
            State::Latent { latents } => latents.buf.device(),
        };
        let masked: Vec<bool> = lens
            .iter()
            .flat_map(|&l| (0..t).map(move |j| j >= l))
            .collect();
        Some(Tensor::from_data(
            TensorData::new(masked, [lens.len(), 1, 1, t]),
            &device,
        ))
    }

    /// Whether MLA should decode from latents with absorbed weights.
    pub fn is_latent(&self) -> bool {
        self.mode == CacheMode::Latent
    }

    /// Tokens cached so far (batched: the longest slot's, the length of the attended view).
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
            State::Empty => (self.empty_rows(&k), self.empty_rows(&v)),
            State::Kv { k, v } => (k, v),
            State::Latent { .. } => unreachable!("a latent cache never receives K/V"),
        };
        let (k, v) = match self.slots.as_mut() {
            None => (k0.push(k), v0.push(v)),
            Some(lens) => {
                let pushed = (k0.push_rows(k, lens), v0.push_rows(v, lens));
                lens.iter_mut().for_each(|l| *l += 1);
                pushed
            }
        };
        let filled = (k.filled(), v.filled());
        self.state = State::Kv { k, v };
        filled
    }

    /// Append new `[c_kv | k_pe]` rows and return everything cached.
    ///
    /// # Shapes
    /// - latent `[b, 1, t, r + rope]` -> `[b, 1, T, r + rope]`
    pub fn append_latent(&mut self, latent: Tensor<4>) -> Tensor<4> {
        let rows = match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => self.empty_rows(&latent),
            State::Latent { latents } => latents,
            State::Kv { .. } => unreachable!("a K/V cache never receives latents"),
        };
        let latents = match self.slots.as_mut() {
            None => rows.push(latent),
            Some(lens) => {
                let pushed = rows.push_rows(latent, lens);
                lens.iter_mut().for_each(|l| *l += 1);
                pushed
            }
        };
        let filled = latents.filled();
        self.state = State::Latent { latents };
        filled
    }

    /// A first buffer for rows like `like`: zeroed, one row per slot, in a batched cache.
    fn empty_rows(&self, like: &Tensor<4>) -> Rows {
        match &self.slots {
            None => Rows::empty(like, self.reserve),
            Some(lens) => Rows::zeroed(like, lens.len(), self.reserve),
        }
    }

    /// Batched: copy `len` cached tokens of row `row` of `from` (an ordinary cache of the same
    /// mode) into slot `slot`, which then holds that sequence.
    fn insert(&mut self, slot: usize, from: &LayerCache, row: usize, len: usize) {
        let lens = self.slots.as_ref().expect("insert into a batched cache");
        let (slots, capacity) = (lens.len(), self.reserve.max(len));
        let zeroed = |like: &Rows| Rows::zeroed(&like.buf, slots, capacity);
        self.state = match (
            std::mem::replace(&mut self.state, State::Empty),
            &from.state,
        ) {
            (State::Empty, State::Kv { k, v }) => State::Kv {
                k: zeroed(k).insert(slot, &k.filled(), row, len),
                v: zeroed(v).insert(slot, &v.filled(), row, len),
            },
            (State::Kv { k: k0, v: v0 }, State::Kv { k, v }) => State::Kv {
                k: k0.insert(slot, &k.filled(), row, len),
                v: v0.insert(slot, &v.filled(), row, len),
            },
            (State::Empty, State::Latent { latents }) => State::Latent {
                latents: zeroed(latents).insert(slot, &latents.filled(), row, len),
            },
            (State::Latent { latents: l0 }, State::Latent { latents }) => State::Latent {
                latents: l0.insert(slot, &latents.filled(), row, len),
            },
            (_, State::Empty) => panic!("inserting from an empty cache"),
            _ => panic!("inserting between caches of different modes"),
        };
        self.slots.as_mut().expect("batched")[slot] = len;
        self.sync_view();
    }

    /// Batched: attend over the rows up to the longest slot, no further.
    fn sync_view(&mut self) {
        let Some(lens) = &self.slots else { return };
        let longest = lens.iter().copied().max().unwrap_or(0);
        match &mut self.state {
            State::Empty => {}
            State::Kv { k, v } => (k.len, v.len) = (longest, longest),
            State::Latent { latents } => latents.len = longest,
        }
    }

    /// The absorbed weights for this layer, computed on first use.
    pub fn absorbed(&mut self, compute: impl FnOnce() -> Absorbed) -> &Absorbed {
        self.absorbed.get_or_insert_with(compute)
    }

    /// Scalars of the cached tokens (absorbed weights excluded). In a batched cache, each
    /// slot's own tokens (not the stale rows past its length).
    pub fn elements_held(&self) -> usize {
        let rows = |r: &Rows| match &self.slots {
            None => r.elements(),
            Some(lens) => r.token_elements() * lens.iter().sum::<usize>(),
        };
        match &self.state {
            State::Empty => 0,
            State::Kv { k, v } => rows(k) + rows(v),
            State::Latent { latents } => rows(latents),
        }
    }

    /// Bytes of the cached tokens, at the dtype they are stored in.
    pub fn bytes_held(&self) -> usize {
        let dtype = match &self.state {
            State::Empty => return 0,
            State::Kv { k, .. } => k.buf.dtype(),
            State::Latent { latents } => latents.buf.dtype(),
        };
        self.elements_held() * dtype.size()
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

    /// A batched cache of `slots` sequences, each with its own length, every buffer room for
    /// `capacity` tokens per slot (see the module docs).
    pub fn batched(n_layers: usize, mode: CacheMode, slots: usize, capacity: usize) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|_| LayerCache::batched(mode, slots, capacity))
                .collect(),
            mode,
        }
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// A batched cache's slot lengths; `None` for an ordinary cache.
    pub fn slot_lens(&self) -> Option<&[usize]> {
        self.layers.first()?.slots.as_deref()
    }

    /// Copy the first `len` tokens of row `row` of `from` (an ordinary cache of this mode, e.g.
    /// just prefilled with a batch of prompts) into slot `slot` of this batched cache, which
    /// then holds that sequence; whatever the slot held is dropped.
    ///
    /// # Panics
    /// When this cache is not batched, `from` is, the modes differ, or `from` holds fewer
    /// than `len` tokens.
    pub fn insert(&mut self, slot: usize, from: &KvCache, row: usize, len: usize) {
        assert_eq!(self.mode, from.mode, "inserting between cache modes");
        assert!(from.slot_lens().is_none(), "inserting from a batched cache");
        assert!(
            len <= from.len(),
            "inserting {len} of {} tokens",
            from.len()
        );
        for (layer, src) in self.layers.iter_mut().zip(&from.layers) {
            layer.insert(slot, src, row, len);
        }
    }

    /// Cut slot `slot` of a batched cache back to its first `len` tokens (0: free). Its later
    /// rows become stale: masked, then overwritten.
    pub fn truncate_slot(&mut self, slot: usize, len: usize) {
        for layer in &mut self.layers {
            let lens = layer.slots.as_mut().expect("a batched cache");
            assert!(len <= lens[slot], "a slot only shrinks");
            lens[slot] = len;
            layer.sync_view();
        }
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
