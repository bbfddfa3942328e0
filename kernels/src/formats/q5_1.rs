//! Q5_1: blocks of 32 values as an f16 scale, an f16 minimum and 32 five-bit quants, `x = d·q + m`.
//!
//! Layout (ggml `block_q5_1`, 24 bytes): `d: f16` at 0, `m: f16` at 2, `qh: u32` at 4, `qs: [u8; 16]` at
//! 8; the bits as in Q5_0. Dot products take Q8_0 activations, as Q4_1.

use super::{array_at, read_f16, write_f16, Format};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 24;
/// Offset of the f16 minimum.
pub const M: usize = 2;
/// Offset of the 32 fifth bits.
pub const QH: usize = 4;
/// Offset of the 16 packed low-nibble bytes.
pub const QS: usize = 8;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q5_1,
    name: "Q5_1",
    ggml_id: 7,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q5_1 block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ5_1<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The block minimum (added to every value).
    #[inline(always)]
    pub fn m(self) -> f32 {
        read_f16(self.0, M)
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

/// Iterates over the blocks of a Q5_1 row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ5_1<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ5_1(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q5_1_ref`, byte for byte: `d = (max − min)/31`, `m = min`,
/// `q = trunc((x − min)·(1/d) + 0.5)` (uncapped, as in ggml: bits above the fifth are dropped).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let (min, max) = super::q4_1::min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(out, 0, d);
        write_f16(out, M, min);
        let quant = |v: f32| ((v - min) * id + 0.5) as u8;
        let levels: [u8; BLOCK_LEN] = std::array::from_fn(|j| quant(x[j]));
        super::pack_five_bit(&levels, &mut out[QH..QH + 20]);
    }
}

/// `x = d·q + m`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_min_blocks(blocks(src), dst);
}

/// Reference Q5_1·Q8_0 dot, as Q4_1's.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    super::vec_dot_min_blocks(blocks(w), act, n / BLOCK_LEN)
}

impl super::MinBlock for BlockQ5_1<'_> {
    fn d(self) -> f32 {
        BlockQ5_1::d(self)
    }
    fn m(self) -> f32 {
        BlockQ5_1::m(self)
    }
    fn q(self, j: usize) -> i32 {
        BlockQ5_1::q(self, j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_inverts_dequantize_on_exact_levels() {
        // min −7, max 24: d = 1, every value an exact level.
        let x: [f32; BLOCK_LEN] = std::array::from_fn(|j| ((j * 13) % 32) as f32 - 7.0);
        let mut block = [0u8; BLOCK_BYTES];
        quantize(&x, &mut block);
        assert_eq!((BlockQ5_1(&block).d(), BlockQ5_1(&block).m()), (1.0, -7.0));
        let mut y = [0.0f32; BLOCK_LEN];
        dequantize(&block, &mut y);
        assert_eq!(x, y);
    }
}
