//! BF16: the top 16 bits of an IEEE `f32`, little endian, one value per "block".
//!
//! Dot products take F32 activations.

use super::{read_f32, Format};
use crate::DType;

/// Bytes per value.
pub const BLOCK_BYTES: usize = 2;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::BF16,
    name: "BF16",
    ggml_id: 30,
    block_len: 1,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::F32,
    quantize,
    dequantize,
    vec_dot,
};

#[inline(always)]
fn read_bf16(bytes: &[u8]) -> f32 {
    half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Rounds each value to bfloat16, to nearest even, keeping NaNs NaN (as Hugging Face
/// and llama.cpp's converter do).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        out.copy_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
    }
}

/// Widens each bfloat16 to `f32` (exact: a 16-bit shift).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (bytes, out) in src.chunks_exact(BLOCK_BYTES).zip(dst.iter_mut()) {
        *out = read_bf16(bytes);
    }
}

/// Reference dot product with F32 activations: products in `f32`, accumulated in `f64`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (wb, ab) in w.chunks_exact(2).zip(act.chunks_exact(4)).take(n) {
        sum += (read_bf16(wb) * read_f32(ab, 0)) as f64;
    }
    sum as f32
}
