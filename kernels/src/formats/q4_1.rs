//! Q4_1: blocks of 32 values as an f16 scale, an f16 minimum and 32 four-bit quants, `x = d·q + m`.
//!
//! Layout (ggml `block_q4_1`, 20 bytes): `d: f16` at 0, `m: f16` at 2, `qs: [u8; 16]` at 4, nibbles as
//! Q4_0 (byte `j`: value `j` low, value `j + 16` high). Dot products take Q8_0 activations (ggml uses
//! Q8_1, whose stored f16 block sum rounds; Quire sums the activation quants exactly instead).

use super::{array_at, read_f16, write_f16, Format};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 20;
/// Offset of the f16 minimum.
pub const M: usize = 2;
/// Offset of the 16 packed quant bytes.
pub const QS: usize = 4;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q4_1,
    name: "Q4_1",
    ggml_id: 3,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q4_1 block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ4_1<'a> {
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

    /// The 16 packed quant bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 16] {
        array_at(self.0, QS)
    }

    /// The unsigned quant of value `j` (0..32), in 0..=15.
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        let byte = self.qs()[j % 16];
        (if j < 16 { byte & 0xf } else { byte >> 4 }) as i32
    }
}

/// Iterates over the blocks of a Q4_1 row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ4_1<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ4_1(b.try_into().expect("chunk is one block")))
}

/// The block minimum and maximum, as ggml's `_1` quantizers find them.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml's `quantize_row_q4_1_ref`, byte for byte: `d = (max − min)/15`, `m = min`,
/// `q = min(15, trunc((x − min)·(1/d) + 0.5))`.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(out, 0, d);
        write_f16(out, M, min);
        // ggml truncates through int8_t; `as i8` truncates too (saturating only for non-finite input).
        let quant = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        for j in 0..BLOCK_LEN / 2 {
            out[QS + j] = quant(x[j]) | (quant(x[j + BLOCK_LEN / 2]) << 4);
        }
    }
}

/// `x = d·q + m`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_min_blocks(blocks(src), dst);
}

/// Reference Q4_1·Q8_0 dot: per block the exact `i32` sums `Σ q·a` and `Σ a`, then
/// `sum = fma(Σ q·a, d_w·d_a, sum)` and `sum = fma(Σ a, m_w·d_a, sum)`, block after block.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    super::vec_dot_min_blocks(blocks(w), act, n / BLOCK_LEN)
}

impl super::MinBlock for BlockQ4_1<'_> {
    fn d(self) -> f32 {
        BlockQ4_1::d(self)
    }
    fn m(self) -> f32 {
        BlockQ4_1::m(self)
    }
    fn q(self, j: usize) -> i32 {
        BlockQ4_1::q(self, j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_inverts_dequantize_on_exact_levels() {
        // min −3, max 12: d = 1, every value an exact level.
        let x: [f32; BLOCK_LEN] = std::array::from_fn(|j| ((j * 5) % 16) as f32 - 3.0);
        let mut block = [0u8; BLOCK_BYTES];
        quantize(&x, &mut block);
        assert_eq!((BlockQ4_1(&block).d(), BlockQ4_1(&block).m()), (1.0, -3.0));
        let mut y = [0.0f32; BLOCK_LEN];
        dequantize(&block, &mut y);
        assert_eq!(x, y);
    }
}
