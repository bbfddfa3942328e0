//! Q4_0: blocks of 32 values as an f16 scale and 32 four-bit quants, `x = d·(q − 8)`.
//!
//! Layout (ggml `block_q4_0`, 18 bytes): `d: f16` at 0, `qs: [u8; 16]` at 2. Byte `j`
//! holds value `j` in its low nibble and value `j + 16` in its high nibble.
//! Dot products take Q8_0 activations.

use super::{array_at, read_f16, write_f16, Format};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;
/// Offset of the 16 packed quant bytes.
pub const QS: usize = 2;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q4_0,
    name: "Q4_0",
    ggml_id: 2,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q4_0 block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockQ4_0<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ4_0<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The 16 packed quant bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 16] {
        array_at(self.0, QS)
    }

    /// The signed quant of value `j` (0..32), in −8..=7.
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        let byte = self.0[QS + j % 16];
        let nibble = if j < 16 { byte & 0xf } else { byte >> 4 };
        nibble as i32 - 8
    }
}

/// Iterates over the blocks of a Q4_0 row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ4_0<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ4_0(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q4_0_ref`, byte for byte: the value of largest magnitude (sign
/// kept) maps to −8, `d = max / −8`, `q = min(15, trunc(x·(1/d) + 8.5))`.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let (_, max) = super::signed_amax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(out, 0, d);
        // ggml truncates through int8_t; `as i8` truncates too (and saturates where C
        // would be undefined, which only non-finite input reaches).
        let quant = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..BLOCK_LEN / 2 {
            out[QS + j] = quant(x[j]) | (quant(x[j + BLOCK_LEN / 2]) << 4);
        }
    }
}

/// `x = d·(q − 8)`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        let (lo, hi) = out.split_at_mut(BLOCK_LEN / 2);
        for ((&b, y0), y1) in block.qs().iter().zip(lo).zip(hi) {
            *y0 = ((b & 0xf) as i32 - 8) as f32 * d;
            *y1 = ((b >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Reference Q4_0·Q8_0 dot: per block the exact `i32` sum of products times
/// `d_w·d_a`, accumulated in `f32` block after block with a fused multiply-add.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(super::q8_0::blocks(act)).take(n / BLOCK_LEN) {
        let a = ab.qs();
        let mut sumi = 0i32;
        for (j, &b) in wb.qs().iter().enumerate() {
            sumi += ((b & 0xf) as i32 - 8) * a[j] as i8 as i32;
            sumi += ((b >> 4) as i32 - 8) * a[j + 16] as i8 as i32;
        }
        // One rounding per block: fused multiply-add (the SIMD kernels use the same).
        sum = (sumi as f32).mul_add(wb.d() * ab.d(), sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout-order loops agree with the per-index definition `d·(q(j) − 8)`.
    #[test]
    fn dequantize_matches_per_index_definition() {
        let row: Vec<u8> = (0..4 * BLOCK_BYTES).map(|i| (i * 37 + 11) as u8).collect();
        let mut row = row;
        for b in row.chunks_exact_mut(BLOCK_BYTES) {
            b[..2].copy_from_slice(&half::f16::from_f32(0.75).to_le_bytes());
        }
        let mut out = vec![0.0; 4 * BLOCK_LEN];
        dequantize(&row, &mut out);
        for (b, block) in blocks(&row).enumerate() {
            for j in 0..BLOCK_LEN {
                assert_eq!(out[b * BLOCK_LEN + j], block.q(j) as f32 * 0.75, "block {b} value {j}");
            }
        }
    }
}
