//! The key/value cache: preallocated per layer, written in place slot by slot, so each
//! generation step feeds only the new positions.

use burn::tensor::{Device, FloatDType, Tensor};

/// Keys and values of one layer, `[batch, kv_heads, capacity, head_dim]` each.
#[derive(Debug)]
pub struct LayerCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
}

impl LayerCache {
    fn new(
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        let shape = [batch, kv_heads, capacity, head_dim];
        let zeros = || Tensor::zeros(shape, (device, dtype.into()));
        Self {
            keys: Some(zeros()),
            values: Some(zeros()),
        }
    }

    /// Write `keys`/`values` `[batch, kv_heads, len, head_dim]` at slot `start`, and return the
    /// cached slots `read_from..read_to`.
    pub fn update(
        &mut self,
        keys: Tensor<4>,
        values: Tensor<4>,
        start: usize,
        read_from: usize,
        read_to: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, h, len, d] = keys.dims();
        let end = start + len;
        // Taking the cache out of its slot leaves its buffer singly owned, so the backend can
        // write in place rather than copy the whole cache every step.
        let write = |slot: &mut Option<Tensor<4>>, new: Tensor<4>| {
            let cache = slot.take().expect("cache slot is always refilled");
            let cache = cache.slice_assign([0..b, 0..h, start..end, 0..d], new);
            let read = cache.clone().slice([0..b, 0..h, read_from..read_to, 0..d]);
            *slot = Some(cache);
            read
        };
        let k = write(&mut self.keys, keys);
        let v = write(&mut self.values, values);
        (k, v)
    }

    /// The whole key and value buffers, taken out for a caller that writes them in place (the
    /// fused decode step); [`Self::restore`] puts them back.
    #[cfg(feature = "tch")]
    pub(crate) fn take(&mut self) -> (Tensor<4>, Tensor<4>) {
        let taken =
            |slot: &mut Option<Tensor<4>>| slot.take().expect("cache slot is always refilled");
        (taken(&mut self.keys), taken(&mut self.values))
    }

    /// Put back what [`Self::take`] took.
    #[cfg(feature = "tch")]
    pub(crate) fn restore(&mut self, keys: Tensor<4>, values: Tensor<4>) {
        self.keys = Some(keys);
        self.values = Some(values);
    }
}

/// The cache of every decoder layer, plus how many slots are filled.
#[derive(Debug)]
pub struct KvCache {
    /// One per decoder layer.
    pub layers: Vec<LayerCache>,
    capacity: usize,
    filled: usize,
    /// Whether decode steps read the whole cache under a mask (static shapes, so the fused
    /// step can be a replayed CUDA graph).
    static_decode: bool,
    /// The fused decode step's handles on the model, made at the first step that can use them
    /// (`Some(None)`: this model and device cannot).
    #[cfg(feature = "tch")]
    pub(crate) fused: Option<Option<crate::fused::decoder::FusedDecoder>>,
}

impl KvCache {
    /// An empty cache for `batch` rows of up to `capacity` slots, holding keys and values in
    /// `dtype` (the attention's precision).
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| LayerCache::new(batch, kv_heads, capacity, head_dim, dtype, device))
                .collect(),
            capacity,
            filled: 0,
            static_decode: crate::fused::graph_decoding(device),
            #[cfg(feature = "tch")]
            fused: None,
        }
    }

    /// Slots written so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Slots available.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Repeat each row `times` times in place (row r becomes rows r*times..(r+1)*times), so a
    /// prompt is prefilled once and sampled several times.
    pub fn repeat_rows(&mut self, times: usize) {
        if times == 1 {
            return;
        }
        let repeat = |t: Tensor<4>| {
            let [b, h, c, d] = t.dims();
            t.unsqueeze_dim::<5>(1)
                .expand([b, times, h, c, d])
                .reshape([b * times, h, c, d])
        };
        for layer in &mut self.layers {
            layer.keys = layer.keys.take().map(repeat);
            layer.values = layer.values.take().map(repeat);
        }
    }

    /// Whether decode steps through this cache may take the fused libtorch path
    /// ([`crate::fused::decoder`]); on by default. Without the `tch` feature there is no such
    /// path and this does nothing.
    pub fn set_fused_decoding(&mut self, on: bool) {
        #[cfg(feature = "tch")]
        {
            self.fused = if on { None } else { Some(None) };
        }
        #[cfg(not(feature = "tch"))]
        let _ = on;
    }

    /// Whether decode steps through this cache take static shapes: the fused step reads every
    /// slot under a mask and writes its slot by an index held on the device, so the same
    /// operations on the same buffers run at every step, which lets a CUDA graph replay them.
    /// On by default where graphs run ([`crate::fused::graph_decoding`]); elsewhere it only
    /// changes which operations compute the same values (tests turn it on for that). Steps
    /// are told through [`crate::text::KeyReads::WholeCache`], which burn's layers honour too.
    pub fn set_static_decode(&mut self, on: bool) {
        self.static_decode = on;
    }

    /// Whether the next decode step takes static shapes (see [`Self::set_static_decode`]): asked
    /// for, and the fused libtorch step not known to be unavailable (only it can be a graph).
    pub fn decodes_static(&self) -> bool {
        #[cfg(feature = "tch")]
        let fused = !matches!(self.fused, Some(None)) && crate::text::fused_decoding();
        #[cfg(not(feature = "tch"))]
        let fused = false;
        self.static_decode && fused
    }

    /// Whether decode steps through this cache replay a captured CUDA graph.
    pub fn replays_graph(&self) -> bool {
        #[cfg(feature = "tch")]
        {
            matches!(&self.fused, Some(Some(decoder)) if decoder.replays_graph())
        }
        #[cfg(not(feature = "tch"))]
        false
    }

    /// Whether a decode step through this cache has taken the fused libtorch path.
    pub fn decodes_fused(&self) -> bool {
        #[cfg(feature = "tch")]
        {
            matches!(self.fused, Some(Some(_)))
        }
        #[cfg(not(feature = "tch"))]
        false
    }

    /// Record that `len` more slots were written by a forward pass.
    pub fn advance(&mut self, len: usize) {
        self.filled += len;
    }
}
