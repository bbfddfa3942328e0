//! The key/value cache: for every layer, the rotated keys and the values of every position so far.
//!
//! Layout per layer: `[capacity][kv_dim]` f32, keys and values in separate arrays, so one position's heads
//! are contiguous and attention walks memory forward. (f16 and q8_0 caches come with the kernels work.)

use anyhow::{bail, Result};

use crate::config::Config;

pub struct KvCache {
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    /// Bytes a cache of `n_ctx` positions needs for this model.
    pub fn bytes_needed(c: &Config, n_ctx: usize) -> usize {
        2 * c.n_layers * n_ctx * c.kv_dim() * std::mem::size_of::<f32>()
    }

    /// Allocate a cache for `n_ctx` positions. Fails (instead of aborting) when the allocation is refused.
    pub fn new(c: &Config, n_ctx: usize) -> Result<KvCache> {
        if n_ctx == 0 {
            bail!("context size must be at least 1");
        }
        let n = c.n_layers * n_ctx * c.kv_dim();
        let alloc = |n: usize| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            if v.try_reserve_exact(n).is_err() {
                bail!("cannot allocate the KV cache ({} MiB)", (n * 4) >> 20);
            }
            v.resize(n, 0.0);
            Ok(v)
        };
        Ok(KvCache {
            n_layers: c.n_layers,
            kv_dim: c.kv_dim(),
            capacity: n_ctx,
            len: 0,
            keys: alloc(n)?,
            values: alloc(n)?,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the cache can hold (the context size).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forget everything after the first `len` positions (reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// Forget everything.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let per_layer = self.capacity * self.kv_dim;
        layer * per_layer..(layer + 1) * per_layer
    }

    /// Store keys and values (`[n][kv_dim]` each) for positions `pos..pos+n` of `layer`.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(layer < self.n_layers);
        let start = self.layer_range(layer).start + pos * self.kv_dim;
        self.keys[start..start + k.len()].copy_from_slice(k);
        self.values[start..start + v.len()].copy_from_slice(v);
    }

    /// Mark `n` more positions as filled (after every layer has written them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// All key slots of a layer, `[capacity][kv_dim]`.
    pub(crate) fn keys(&self, layer: usize) -> &[f32] {
        &self.keys[self.layer_range(layer)]
    }
    /// All value slots of a layer, `[capacity][kv_dim]`.
    pub(crate) fn values(&self, layer: usize) -> &[f32] {
        &self.values[self.layer_range(layer)]
    }
}
