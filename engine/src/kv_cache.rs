//! The key/value cache: for every layer, the rotated keys and the values of every position so far.
//!
//! Layout per layer: `[capacity][kv_dim]` elements of the cache type, keys and values in separate arrays, so
//! one position's heads are contiguous and attention walks memory forward. Elements are stored as
//! little-endian bytes of f16 (the default, half the memory of f32, what llama.cpp uses) or f32 (exact, for
//! reference tests), so attention runs the kernels crate's dot and axpy kernels on them directly.

use anyhow::{bail, Result};
use quire_kernels::{quantize_row, DType};

use crate::config::Config;

/// The element type of a KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half precision (default): keys and values rounded to nearest even when written.
    #[default]
    F16,
    /// Single precision: the keys and values exactly as computed.
    F32,
}

impl KvType {
    /// The name accepted by `--kv-type`: "f16" or "f32".
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }

    /// Parses a `--kv-type` value (case-insensitive).
    pub fn parse(s: &str) -> Result<KvType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            other => bail!("unknown KV cache type {other:?} (expected f16 or f32)"),
        }
    }

    /// The kernels' element format.
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        self.dtype().block_bytes()
    }
}

impl std::str::FromStr for KvType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<KvType> {
        KvType::parse(s)
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
        2 * c.n_layers * n_ctx * c.kv_dim() * kv_type.bytes()
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
        let n = c.n_layers * n_ctx * c.kv_dim() * kv_type.bytes();
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

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let per_layer = self.capacity * self.kv_dim * self.kv_type.bytes();
        layer * per_layer..(layer + 1) * per_layer
    }

    /// Store keys and values (`[n][kv_dim]` each) for positions `pos..pos+n` of `layer`, converted to the
    /// cache type.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(layer < self.n_layers);
        let es = self.kv_type.bytes();
        let start = self.layer_range(layer).start + pos * self.kv_dim * es;
        let dtype = self.kv_type.dtype();
        quantize_row(dtype, k, &mut self.keys[start..start + k.len() * es]);
        quantize_row(dtype, v, &mut self.values[start..start + v.len() * es]);
    }

    /// Mark `n` more positions as filled (after every layer has written them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// All key slots of a layer, `[capacity][kv_dim]` elements of [`KvCache::kv_type`], as bytes.
    pub(crate) fn keys(&self, layer: usize) -> &[u8] {
        &self.keys[self.layer_range(layer)]
    }
    /// All value slots of a layer, `[capacity][kv_dim]` elements of [`KvCache::kv_type`], as bytes.
    pub(crate) fn values(&self, layer: usize) -> &[u8] {
        &self.values[self.layer_range(layer)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_type_names_round_trip() {
        for t in [KvType::F16, KvType::F32] {
            assert_eq!(KvType::parse(t.name()).unwrap(), t);
            assert_eq!(t.to_string().parse::<KvType>().unwrap(), t);
        }
        assert_eq!(KvType::parse(" F16 ").unwrap(), KvType::F16);
        assert!(KvType::parse("q4").is_err());
        assert_eq!(KvType::default(), KvType::F16);
        assert_eq!(KvType::F16.bytes(), 2);
        assert_eq!(KvType::F32.bytes(), 4);
    }
}
