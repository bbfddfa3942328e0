//! F16: little-endian IEEE half precision, one value per "block".
//!
//! Dot products take F32 activations (ggml would convert activations to F16; we keep
//! them in F32, which is at least as accurate).

use super::{read_f16, read_f32, write_f16, Format};
use crate::DType;

/// Bytes per value.
pub const BLOCK_BYTES: usize = 2;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::F16,
    name: "F16",
    ggml_id: 1,
    block_len: 1,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::F32,
    quantize,
    dequantize,
    vec_dot,
};

/// Rounds each value to half precision, to nearest even (numpy's and ggml's rounding);
/// out-of-range values become ±inf.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        write_f16(out, 0, *x);
    }
}

/// Widens each half to `f32` (exact).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (bytes, out) in src.chunks_exact(BLOCK_BYTES).zip(dst.iter_mut()) {
        *out = read_f16(bytes, 0);
    }
}

/// Reference dot product with F32 activations: products in `f32`, accumulated in `f64`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (wb, ab) in w.chunks_exact(2).zip(act.chunks_exact(4)).take(n) {
        sum += (read_f16(wb, 0) * read_f32(ab, 0)) as f64;
    }
    sum as f32
}
