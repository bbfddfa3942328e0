//! Q5_K: like Q4_K with a fifth bit per value; `x = d·sc·q − dmin·m` with 5-bit `q`.
//!
//! Layout (ggml `block_q5_K`, 176 bytes): `d: f16` at 0, `dmin: f16` at 2,
//! `scales: [u8; 12]` at 4 (packed as in Q4_K), `qh: [u8; 32]` at 16, `qs: [u8; 128]`
//! at 48. The low four bits are laid out exactly as in Q4_K; for chunk `i` (64 values),
//! bit `2i` of `qh[l]` is the high bit of value `l` and bit `2i + 1` that of value
//! `l + 32`. Dot products take Q8_K activations.

use super::{array_at, k_block_sum, q8_k, quantize_kx_super_block, read_f16, unpack_k4_scales, Format, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 176;
/// Offset of the packed scales and mins.
pub const SCALES: usize = 4;
/// Offset of the 32 high-bit bytes.
pub const QH: usize = 16;
/// Offset of the 128 low-nibble bytes.
pub const QS: usize = 48;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q5_K,
    name: "Q5_K",
    ggml_id: 13,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q5_K block.
#[derive(Clone, Copy)]
pub struct BlockQ5K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ5K<'a> {
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

    /// The 32 high-bit bytes.
    #[inline(always)]
    pub fn qh(self) -> &'a [u8; 32] {
        array_at(self.0, QH)
    }

    /// The 128 low-nibble bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 128] {
        array_at(self.0, QS)
    }

    /// The 5-bit quant of value `j` (0..256).
    #[inline(always)]
    pub fn q(self, j: usize) -> u8 {
        let (chunk, l) = (j / 64, j % 64);
        let byte = self.0[QS + 32 * chunk + l % 32];
        let (low, bit) = if l < 32 { (byte & 0xf, 2 * chunk) } else { (byte >> 4, 2 * chunk + 1) };
        low | (((self.0[QH + l % 32] >> bit) & 1) << 4)
    }
}

/// Iterates over the blocks of a Q5_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ5K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ5K(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q5_K_ref`, byte for byte: `make_qkx2_quants(32, 31, rmin −0.5,
/// rdelta 0.1, 15 steps)` per sub-block.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let sb = quantize_kx_super_block(x, 31, -0.5, 0.1, 15);
        out[0..2].copy_from_slice(&sb.d.to_le_bytes());
        out[2..4].copy_from_slice(&sb.dmin.to_le_bytes());
        out[SCALES..QH].copy_from_slice(&sb.scales);
        out[QH..QS].fill(0);
        for chunk in 0..4 {
            let l = &sb.levels[64 * chunk..64 * chunk + 64];
            for i in 0..32 {
                let (lo, hi) = (l[i], l[i + 32]);
                out[QS + 32 * chunk + i] = (lo & 0xf) | ((hi & 0xf) << 4);
                out[QH + i] |= ((lo >> 4) << (2 * chunk)) | ((hi >> 4) << (2 * chunk + 1));
            }
        }
    }
}

/// `x = (d·sc)·q − dmin·m`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let (d, dmin) = (block.d(), block.dmin());
        let (sc, m) = block.scales_mins();
        let qh = block.qh();
        for (chunk, (q, y)) in block.qs().chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (d1, m1) = (d * sc[2 * chunk] as f32, dmin * m[2 * chunk] as f32);
            let (d2, m2) = (d * sc[2 * chunk + 1] as f32, dmin * m[2 * chunk + 1] as f32);
            let (lo, hi) = y.split_at_mut(32);
            for (l, ((&b, y1), y2)) in q.iter().zip(lo).zip(hi).enumerate() {
                let h1 = ((qh[l] >> (2 * chunk)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * chunk + 1)) & 1) << 4;
                *y1 = d1 * ((b & 0xf) | h1) as f32 - m1;
                *y2 = d2 * ((b >> 4) | h2) as f32 - m2;
            }
        }
    }
}

/// Reference Q5_K·Q8_K dot, combined like [`super::q4_k::vec_dot`].
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let (sc, m) = wb.scales_mins();
        let (a, qh) = (ab.qs(), wb.qh());
        let mut sumi = 0i32;
        for (chunk, q) in wb.qs().chunks_exact(32).enumerate() {
            let a = &a[64 * chunk..64 * chunk + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for (l, &b) in q.iter().enumerate() {
                let h1 = ((qh[l] >> (2 * chunk)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * chunk + 1)) & 1) << 4;
                lo += ((b & 0xf) | h1) as i32 * a[l] as i8 as i32;
                hi += ((b >> 4) | h2) as i32 * a[l + 32] as i8 as i32;
            }
            sumi += sc[2 * chunk] as i32 * lo + sc[2 * chunk + 1] as i32 * hi;
        }
        let summ = super::q4_k::mins_dot_bsums(&m, ab);
        sum += k_block_sum(wb.d() * ab.d(), sumi, wb.dmin() * ab.d(), summ);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout-order loops agree with the per-index definition
    /// `d·sc[j/32]·q(j) − dmin·m[j/32]`, and quantize packs the fifth bit where `q` reads it.
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
