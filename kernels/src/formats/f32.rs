//! F32: plain little-endian IEEE single precision, one value per "block".
//!
//! Also the activation format of the F32/F16/BF16 dot products.

use super::{read_f32, Format};
use crate::DType;

/// Bytes per value.
pub const BLOCK_BYTES: usize = 4;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::F32,
    name: "F32",
    ggml_id: 0,
    block_len: 1,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::F32,
    quantize,
    dequantize,
    vec_dot,
};

/// Stores `src` as little-endian bytes (exact).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        out.copy_from_slice(&x.to_le_bytes());
    }
}

/// Reads little-endian `f32`s (exact).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (bytes, out) in src.chunks_exact(BLOCK_BYTES).zip(dst.iter_mut()) {
        *out = read_f32(bytes, 0);
    }
}

/// Reference dot product: each product rounded to `f32`, accumulated in `f64` (as
/// ggml's scalar `ggml_vec_dot_f32` does), so it is a tight reference for the SIMD sums.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (wb, ab) in w.chunks_exact(4).zip(act.chunks_exact(4)).take(n) {
        sum += (read_f32(wb, 0) * read_f32(ab, 0)) as f64;
    }
    sum as f32
}
