//! Q4_K: super-blocks of 256 values in eight sub-blocks of 32, each with a 6-bit scale
//! and a 6-bit min; `x = d·sc·q − dmin·m` with 4-bit `q`.
//!
//! Layout (ggml `block_q4_K`, 144 bytes): `d: f16` at 0, `dmin: f16` at 2,
//! `scales: [u8; 12]` at 4 (see [`super::unpack_k4_scales`]), `qs: [u8; 128]` at 16.
//! The quants come in four chunks of 32 bytes, one per 64 values: the low nibbles are
//! values `0..32` of the chunk (sub-block `2i`), the high nibbles values `32..64`
//! (sub-block `2i + 1`). Dot products take Q8_K activations.

use super::{array_at, k_block_sum, q8_k, quantize_kx_super_block, read_f16, unpack_k4_scales, Format, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 144;
/// Offset of the packed scales and mins.
pub const SCALES: usize = 4;
/// Offset of the 128 quant bytes.
pub const QS: usize = 16;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q4_K,
    name: "Q4_K",
    ggml_id: 12,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q4_K block.
#[derive(Clone, Copy)]
pub struct BlockQ4K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ4K<'a> {
    /// Scale of the sub-block scales.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// Scale of the sub-block mins.
    #[inline(always)]
    pub fn dmin(self) -> f32 {
        read_f16(self.0, 2)
    }

    /// The eight 6-bit scales and eight 6-bit mins.
    #[inline(always)]
    pub fn scales_mins(self) -> ([u8; 8], [u8; 8]) {
        unpack_k4_scales(array_at(self.0, SCALES))
    }

    /// The 128 quant bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 128] {
        array_at(self.0, QS)
    }

    /// The 4-bit quant of value `j` (0..256).
    #[inline(always)]
    pub fn q(self, j: usize) -> u8 {
        let (chunk, l) = (j / 64, j % 64);
        let byte = self.0[QS + 32 * chunk + l % 32];
        if l < 32 {
            byte & 0xf
        } else {
            byte >> 4
        }
    }
}

/// Iterates over the blocks of a Q4_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ4K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ4K(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q4_K_ref` (the quantizer llama-quantize uses without an
/// importance matrix), byte for byte: `make_qkx2_quants(32, 15, rmin −1, rdelta 0.1,
/// 20 steps)` per sub-block.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let sb = quantize_kx_super_block(x, 15, -1.0, 0.1, 20);
        out[0..2].copy_from_slice(&sb.d.to_le_bytes());
        out[2..4].copy_from_slice(&sb.dmin.to_le_bytes());
        out[SCALES..QS].copy_from_slice(&sb.scales);
        for chunk in 0..4 {
            let l = &sb.levels[64 * chunk..64 * chunk + 64];
            for i in 0..32 {
                out[QS + 32 * chunk + i] = l[i] | (l[i + 32] << 4);
            }
        }
    }
}

/// `x = (d·sc)·q − dmin·m`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let (d, dmin) = (block.d(), block.dmin());
        let (sc, m) = block.scales_mins();
        for (chunk, (q, y)) in block.qs().chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (d1, m1) = (d * sc[2 * chunk] as f32, dmin * m[2 * chunk] as f32);
            let (d2, m2) = (d * sc[2 * chunk + 1] as f32, dmin * m[2 * chunk + 1] as f32);
            let (lo, hi) = y.split_at_mut(32);
            for ((&b, y1), y2) in q.iter().zip(lo).zip(hi) {
                *y1 = d1 * (b & 0xf) as f32 - m1;
                *y2 = d2 * (b >> 4) as f32 - m2;
            }
        }
    }
}

/// `Σ_sub m·(bsum_2sub + bsum_2sub+1)`: the mins applied through the Q8_K group sums.
#[inline]
pub(crate) fn mins_dot_bsums(m: &[u8; 8], ab: q8_k::BlockQ8K) -> i32 {
    (0..8).map(|sub| m[sub] as i32 * (ab.bsum(2 * sub) as i32 + ab.bsum(2 * sub + 1) as i32)).sum()
}

/// Reference Q4_K·Q8_K dot. Per block: `sumi = Σ_sub sc·Σ q·q8` and
/// `summ = Σ_sub m·(bsum_2sub + bsum_2sub+1)`, both exact `i32`, combined as
/// `(d_w·d_a)·sumi − (dmin_w·d_a)·summ` and accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let (sc, m) = wb.scales_mins();
        let a = ab.qs();
        let mut sumi = 0i32;
        for (chunk, q) in wb.qs().chunks_exact(32).enumerate() {
            let a = &a[64 * chunk..64 * chunk + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for (l, &b) in q.iter().enumerate() {
                lo += (b & 0xf) as i32 * a[l] as i8 as i32;
                hi += (b >> 4) as i32 * a[l + 32] as i8 as i32;
            }
            sumi += sc[2 * chunk] as i32 * lo + sc[2 * chunk + 1] as i32 * hi;
        }
        let summ = mins_dot_bsums(&m, ab);
        sum += k_block_sum(wb.d() * ab.d(), sumi, wb.dmin() * ab.d(), summ);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout-order loops agree with the per-index definition
    /// `d·sc[j/32]·q(j) − dmin·m[j/32]`.
    #[test]
    fn dequantize_matches_per_index_definition() {
        let mut row: Vec<u8> = (0..3 * BLOCK_BYTES).map(|i| (i * 53 + 7) as u8).collect();
        for b in row.chunks_exact_mut(BLOCK_BYTES) {
            b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        }
        let mut out = vec![0.0; 3 * BLOCK_LEN];
        dequantize(&row, &mut out);
        for (b, block) in blocks(&row).enumerate() {
            let (sc, m) = block.scales_mins();
            for j in 0..BLOCK_LEN {
                let want = 0.5 * sc[j / 32] as f32 * block.q(j) as f32 - 0.25 * m[j / 32] as f32;
                assert_eq!(out[b * BLOCK_LEN + j], want, "block {b} value {j}");
            }
        }
    }
}
