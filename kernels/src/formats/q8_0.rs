//! Q8_0: blocks of 32 values as an f16 scale and 32 signed bytes, `x = d·q`.
//!
//! Layout (ggml `block_q8_0`, 34 bytes): `d: f16` at 0, `qs: [i8; 32]` at 2.
//! Used both for weights and as the activation format of Q4_0/Q8_0 dot products.

use super::{array_at, read_f16, write_f16, Format};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;
/// Offset of the 32 quants.
pub const QS: usize = 2;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q8_0,
    name: "Q8_0",
    ggml_id: 8,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q8_0 block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ8_0<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The quant `j` (0..32).
    #[inline(always)]
    pub fn q(self, j: usize) -> i8 {
        self.0[QS + j] as i8
    }

    /// The 32 quants as raw bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 32] {
        array_at(self.0, QS)
    }
}

/// Iterates over the blocks of a Q8_0 row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ8_0<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ8_0(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q8_0_ref`, byte for byte: `d = max|x| / 127`, `q = round(x/d)`
/// (half away from zero), with `x/d` computed as `x·(1/d)` in `f32`. Input must be
/// finite.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse_scale(d);
        write_f16(out, 0, d);
        for (q, v) in out[QS..].iter_mut().zip(x) {
            *q = ((v * id).round() as i8) as u8;
        }
    }
}

/// `1/d`, or 0 when `d` is 0 or so small (amax below ~3.7e-37) that `1/d` overflows:
/// ggml's cast of ±inf to `int8_t` is undefined there, and the f16 scale of such a
/// block is 0 anyway, so its quants are zero.
#[inline]
pub(crate) fn inverse_scale(d: f32) -> f32 {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if id.is_finite() {
        id
    } else {
        0.0
    }
}

/// `x = d·q`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        for (j, y) in out.iter_mut().enumerate() {
            *y = block.q(j) as f32 * d;
        }
    }
}

/// Reference Q8_0·Q8_0 dot: per block the exact `i32` sum of products times
/// `d_w·d_a`, accumulated in `f32` block after block with a fused multiply-add.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(blocks(act)).take(n / BLOCK_LEN) {
        let sumi: i32 = wb.qs().iter().zip(ab.qs()).map(|(&x, &y)| x as i8 as i32 * y as i8 as i32).sum();
        // One rounding per block: fused multiply-add (the SIMD kernels use the same).
        sum = (sumi as f32).mul_add(wb.d() * ab.d(), sum);
    }
    sum
}
