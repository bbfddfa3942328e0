//! The key/value cache: for every layer, the rotated keys and the values of every position so far.
//!
//! Layout per layer: `[capacity][kv_dim]` elements of the cache type, keys and values in separate arrays, so
//! one position's heads are contiguous and attention walks memory forward. Elements are stored as
//! little-endian bytes of f16 (the default, half the memory of f32, what llama.cpp uses), q8_0 (blocks of 32
//! int8 values with one f16 scale: 34 bytes per 32 values, about half of f16) or f32 (exact, for reference
//! tests). Attention reads f16 and f32 rows in place and converts q8_0 rows chunk by chunk.

use anyhow::{bail, Result};
use quire_kernels::{quantize_row, DType};

use crate::config::Config;

/// The element type of a KV cache (`--kv-type`: `f16`, `q8_0` or `f32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum KvType {
    /// IEEE half precision (default): keys and values rounded to nearest even when written.
    #[default]
    F16,
    /// Single precision: the keys and values exactly as computed.
    F32,
    /// llama.cpp's Q8_0 blocks (32 values, one f16 scale each): 1.06 bytes per value, half of f16.
    #[cfg_attr(feature = "clap", value(name = "q8_0", alias = "q8"))]
    Q8_0,
}

impl KvType {
    /// The name accepted by `--kv-type`: "f16", "q8_0" or "f32".
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The kernels' element format.
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
            KvType::Q8_0 => DType::Q8_0,
        }
    }

    /// Bytes for `n` values (`n` a multiple of 32 for q8_0: whole heads always are).
    pub fn bytes_for(self, n: usize) -> usize {
        let d = self.dtype();
        n.div_ceil(d.block_len()) * d.block_bytes()
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub struct KvCache {
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
    kv_type: KvType,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl KvCache {
    /// Bytes a cache of `n_ctx` positions of the default type (f16) needs for this model.
    pub fn bytes_needed(c: &Config, n_ctx: usize) -> usize {
        KvCache::bytes_needed_for(c, n_ctx, KvType::default())
    }

    /// Bytes a cache of `n_ctx` positions of `kv_type` needs for this model.
    pub fn bytes_needed_for(c: &Config, n_ctx: usize, kv_type: KvType) -> usize {
        2 * c.n_layers * n_ctx * kv_type.bytes_for(c.kv_dim())
    }

    /// Allocate an f16 cache for `n_ctx` positions. Fails (instead of aborting) when the allocation is refused.
    pub fn new(c: &Config, n_ctx: usize) -> Result<KvCache> {
        KvCache::with_type(c, n_ctx, KvType::default())
    }

    /// Allocate a cache of `kv_type` for `n_ctx` positions. Fails (instead of aborting) when the allocation is
    /// refused.
    pub fn with_type(c: &Config, n_ctx: usize, kv_type: KvType) -> Result<KvCache> {
        if n_ctx == 0 {
            bail!("context size must be at least 1");
        }
        let block = kv_type.dtype().block_len();
        if !c.head_dim.is_multiple_of(block) {
            bail!("a {kv_type} KV cache needs a head size that is a multiple of {block}, not {}", c.head_dim);
        }
        let n = c.n_layers * n_ctx * kv_type.bytes_for(c.kv_dim());
        let alloc = |n: usize| -> Result<Vec<u8>> {
            let mut v = Vec::new();
            if v.try_reserve_exact(n).is_err() {
                bail!("cannot allocate the KV cache ({} MiB)", (2 * n) >> 20);
            }
            v.resize(n, 0);
            Ok(v)
        };
        Ok(KvCache {
            n_layers: c.n_layers,
            kv_dim: c.kv_dim(),
            capacity: n_ctx,
            len: 0,
            kv_type,
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
    /// The element type.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }
    /// Bytes allocated for keys and values.
    pub fn bytes(&self) -> usize {
        self.keys.len() + self.values.len()
    }
    /// Forget everything after the first `len` positions (reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// Forget everything.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes of one position's keys (or values): all KV heads.
    pub(crate) fn row_bytes(&self) -> usize {
        self.kv_type.bytes_for(self.kv_dim)
    }

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let per_layer = self.capacity * self.row_bytes();
        layer * per_layer..(layer + 1) * per_layer
    }

    /// Store keys and values (`[n][kv_dim]` each) for positions `pos..pos+n` of `layer`, converted to the
    /// cache type.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(layer < self.n_layers);
        let start = self.layer_range(layer).start + pos * self.row_bytes();
        let len = self.kv_type.bytes_for(k.len());
        let dtype = self.kv_type.dtype();
        quantize_row(dtype, k, &mut self.keys[start..start + len]);
        quantize_row(dtype, v, &mut self.values[start..start + len]);
    }

    /// Mark `n` more positions as filled (after every layer has written them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// All key slots of a layer, `capacity` rows of [`KvCache::row_bytes`], as bytes.
    pub(crate) fn keys(&self, layer: usize) -> &[u8] {
        &self.keys[self.layer_range(layer)]
    }
    /// All value slots of a layer, `capacity` rows of [`KvCache::row_bytes`], as bytes.
    pub(crate) fn values(&self, layer: usize) -> &[u8] {
        &self.values[self.layer_range(layer)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_type_names_round_trip() {
        // (parsing `--kv-type` is the CLI's: src/args.rs tests it)
        assert_eq!([KvType::F16, KvType::F32, KvType::Q8_0].map(KvType::name), ["f16", "f32", "q8_0"]);
        assert_eq!(KvType::Q8_0.to_string(), "q8_0");
        assert_eq!(KvType::default(), KvType::F16);
        assert_eq!(KvType::F16.bytes_for(128), 256);
        assert_eq!(KvType::F32.bytes_for(128), 512);
        assert_eq!(KvType::Q8_0.bytes_for(128), 136);
    }
}
