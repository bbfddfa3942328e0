//! Q8_K: the activation format of K-quant dot products. Blocks of 256 values as an
//! `f32` scale, 256 signed bytes and 16 group sums, `x = d·q`.
//!
//! Layout (ggml `block_q8_K`, 292 bytes): `d: f32` at 0, `qs: [i8; 256]` at 4,
//! `bsums: [i16; 16]` at 260, where `bsums[g]` is the sum of `qs[16g..16g+16]`. The
//! group sums let K-quant dots apply the per-sub-block mins without touching the quants.

use super::{array_at, nearest_int, read_f32, Format, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 292;
/// Offset of the 256 quants.
pub const QS: usize = 4;
/// Offset of the 16 `i16` group sums.
pub const BSUMS: usize = 260;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q8_K,
    name: "Q8_K",
    ggml_id: 15,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q8_K block.
#[derive(Clone, Copy)]
pub struct BlockQ8K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ8K<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f32(self.0, 0)
    }

    /// The quant `j` (0..256).
    #[inline(always)]
    pub fn q(self, j: usize) -> i8 {
        self.0[QS + j] as i8
    }

    /// The 256 quants as raw bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 256] {
        array_at(self.0, QS)
    }

    /// The sum of quants `16g..16g+16` (g in 0..16), as stored.
    #[inline(always)]
    pub fn bsum(self, g: usize) -> i16 {
        i16::from_le_bytes([self.0[BSUMS + 2 * g], self.0[BSUMS + 2 * g + 1]])
    }
}

/// Iterates over the blocks of a Q8_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ8K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ8K(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude (sign kept) maps to
/// −127, `q = nearest_int(x·(−127/max))` capped at 127, `d = 1/iscale`; an all-zero
/// block gets `d = 0`, zero quants and zero sums. So does a block whose largest value
/// is below ~3.7e-37, where `iscale` overflows and ggml's rounding returns garbage.
/// Input must be finite.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = -127.0 / max;
        if amax == 0.0 || !iscale.is_finite() {
            out.fill(0);
            continue;
        }
        for (q, &v) in out[QS..BSUMS].iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for g in 0..BLOCK_LEN / 16 {
            let sum: i32 = out[QS + 16 * g..QS + 16 * g + 16].iter().map(|&q| q as i8 as i32).sum();
            out[BSUMS + 2 * g..BSUMS + 2 * g + 2].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// `x = d·q`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * block.q(j) as f32;
        }
    }
}

/// Q8_K·Q8_K dot (not used by models; here so every format has a dot): per block the
/// exact `i32` sum of products times `d_w·d_a`, accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(blocks(act)).take(n / BLOCK_LEN) {
        let sumi: i32 = wb.qs().iter().zip(ab.qs()).map(|(&x, &y)| x as i8 as i32 * y as i8 as i32).sum();
        sum += (wb.d() * ab.d()) * sumi as f32;
    }
    sum
}
