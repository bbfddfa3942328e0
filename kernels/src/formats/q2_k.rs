//! Q2_K: super-blocks of 256 values in sixteen sub-blocks of 16, each with a 4-bit scale and a 4-bit min;
//! `x = d·sc·q − dmin·m` with 2-bit `q`.
//!
//! Layout (ggml `block_q2_K`, 84 bytes): `scales: [u8; 16]` at 0 (sub-block `s`: scale in the low nibble,
//! min in the high one), `qs: [u8; 64]` at 16, `d: f16` at 80, `dmin: f16` at 82. Each half of 128 values
//! uses 32 `qs` bytes: value `32·g + l` of the half (g in 0..4, l in 0..32) is bits `2g..2g+1` of byte `l`.
//! Dot products take Q8_K activations.

use super::{array_at, k_block_sum, make_qkx2_quants, nearest_int, q8_k, read_f16, Format, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 84;
/// Offset of the 16 packed scale/min bytes.
pub const SCALES: usize = 0;
/// Offset of the 64 bytes of 2-bit quants.
pub const QS: usize = 16;
/// Offset of the f16 super-block scale (the f16 min scale follows it).
pub const D: usize = 80;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q2_K,
    name: "Q2_K",
    ggml_id: 10,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q2_K block.
#[derive(Clone, Copy)]
pub struct BlockQ2K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockQ2K<'a> {
    /// The super-block scale of the scales.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, D)
    }

    /// The super-block scale of the mins.
    #[inline(always)]
    pub fn dmin(self) -> f32 {
        read_f16(self.0, D + 2)
    }

    /// The 16 packed scale/min bytes.
    #[inline(always)]
    pub fn scales(self) -> &'a [u8; 16] {
        array_at(self.0, SCALES)
    }

    /// The 2-bit quant of value `j` (0..256).
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        let (half, r) = (j / 128, j % 128);
        ((self.0[QS + 32 * half + r % 32] >> (2 * (r / 32))) & 3) as i32
    }
}

/// Iterates over the blocks of a Q2_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ2K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ2K(b.try_into().expect("chunk is one block")))
}

/// ggml's `quantize_row_q2_K_ref` (llama-quantize's Q2_K without an importance matrix), byte for byte: each
/// sub-block fit by `make_qkx2_quants(3)` with weights `|x|` and absolute error, scales and mins quantized to
/// 4 bits against their maxima, then every value requantized with the rounded scales.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let mut levels = [0u8; QK_K];
        let mut aux = [0u8; 16];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
            let (scale, min) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut levels[16 * j..16 * j + 16],
                &mut aux,
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        let mut packed = [0u8; 16];
        let mut d = half::f16::ZERO;
        let mut dmin = half::f16::ZERO;
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                packed[j] = nearest_int(iscale * scales[j]) as u8;
            }
            d = half::f16::from_f32(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                packed[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            dmin = half::f16::from_f32(max_min / Q4SCALE);
        }
        for j in 0..16 {
            let dl = d.to_f32() * (packed[j] & 0xf) as f32;
            if dl == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (packed[j] >> 4) as f32;
            for ii in 0..16 {
                let l = nearest_int((x[16 * j + ii] + dm) / dl);
                levels[16 * j + ii] = l.clamp(0, 3) as u8;
            }
        }
        out[SCALES..SCALES + 16].copy_from_slice(&packed);
        for half in 0..2 {
            let l = &levels[128 * half..128 * half + 128];
            for i in 0..32 {
                out[QS + 32 * half + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
            }
        }
        out[D..D + 2].copy_from_slice(&d.to_le_bytes());
        out[D + 2..D + 4].copy_from_slice(&dmin.to_le_bytes());
    }
}

/// `x = (d·sc)·q − dmin·m`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let (d, dmin) = (block.d(), block.dmin());
        for (j, y) in out.iter_mut().enumerate() {
            let sc = block.scales()[j / 16];
            let (dl, ml) = (d * (sc & 0xf) as f32, dmin * (sc >> 4) as f32);
            *y = dl * block.q(j) as f32 - ml;
        }
    }
}

/// Reference Q2_K·Q8_K dot: per block `sumi = Σ_sub sc·Σ q·a` and `summ = Σ_sub m·bsum` (exact `i32`),
/// combined as `d_w·d_a·sumi − dmin_w·d_a·summ` and accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let scales = wb.scales();
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for (s, &sc) in scales.iter().enumerate() {
            let mut sub = 0i32;
            for j in 16 * s..16 * s + 16 {
                sub += wb.q(j) * ab.q(j) as i32;
            }
            sumi += (sc & 0xf) as i32 * sub;
            summ += (sc >> 4) as i32 * ab.bsum(s) as i32;
        }
        let d_a = ab.d();
        sum += k_block_sum(wb.d() * d_a, sumi, wb.dmin() * d_a, summ);
    }
    sum
}
