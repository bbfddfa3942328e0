//! Q5_0: blocks of 32 values as an f16 scale and 32 five-bit quants, `x = d·(q − 16)`.
//!
//! Layout (ggml `block_q5_0`, 22 bytes): `d: f16` at 0, `qh: u32` (little endian) at 2, `qs: [u8; 16]`
//! at 6. Byte `j` of `qs` holds the low four bits of value `j` in its low nibble and of value `j + 16` in
//! its high nibble; bit `v` of `qh` is the fifth bit of value `v`. Dot products take Q8_0 activations.

use super::{array_at, read_f16, write_f16, Format};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 22;
/// Offset of the 32 fifth bits.
pub const QH: usize = 2;
/// Offset of the 16 packed low-nibble bytes.
pub const QS: usize = 6;
/// What is subtracted from a quant.
pub const OFFSET: i32 = 16;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q5_0,
    name: "Q5_0",
    ggml_id: 6,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q5_0 block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ5_0<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The fifth bits, bit `v` for value `v`.
    #[inline(always)]
    pub fn qh(self) -> u32 {
        u32::from_le_bytes(*array_at(self.0, QH))
    }

    /// The 16 packed low-nibble bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 16] {
        array_at(self.0, QS)
    }

    /// The unsigned quant of value `j` (0..32), in 0..=31.
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        super::five_bit(self.qs(), self.qh(), j)
    }
}

/// Iterates over the blocks of a Q5_0 row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ5_0<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ5_0(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q5_0_ref`, byte for byte: the value of largest magnitude (sign kept) maps to
/// −16, `d = max / −16`, `q = min(31, trunc(x·(1/d) + 16.5))`.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let (_, max) = super::signed_amax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(out, 0, d);
        // ggml truncates through int8_t; `as i8` truncates too (saturating only for non-finite input).
        let quant = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        let levels: [u8; BLOCK_LEN] = std::array::from_fn(|j| quant(x[j]));
        super::pack_five_bit(&levels, &mut out[QH..QH + 20]);
    }
}

/// `x = d·(q − 16)`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        for (j, y) in out.iter_mut().enumerate() {
            *y = (block.q(j) - OFFSET) as f32 * d;
        }
    }
}

/// Reference Q5_0·Q8_0 dot: per block the exact `i32` sum of `(q − 16)·a` times `d_w·d_a`, accumulated
/// in `f32` block after block with a fused multiply-add (as Q4_0).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(super::q8_0::blocks(act)).take(n / BLOCK_LEN) {
        let a = ab.qs();
        let mut sumi = 0i32;
        for (j, &aj) in a.iter().enumerate() {
            sumi += (wb.q(j) - OFFSET) * aj as i8 as i32;
        }
        sum = (sumi as f32).mul_add(wb.d() * ab.d(), sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantizing the values a block dequantizes to gives the block back (the levels are exact).
    #[test]
    fn quantize_inverts_dequantize_on_exact_levels() {
        let mut x = [0.0f32; BLOCK_LEN];
        for (j, v) in x.iter_mut().enumerate() {
            *v = ((j * 7 + 3) % 32) as f32 - 16.0;
        }
        x[5] = -16.0; // the largest magnitude, negative: d = 1
        let mut block = [0u8; BLOCK_BYTES];
        quantize(&x, &mut block);
        assert_eq!(BlockQ5_0(&block).d(), 1.0);
        let mut y = [0.0f32; BLOCK_LEN];
        dequantize(&block, &mut y);
        assert_eq!(x, y);
    }
}
