//! IQ4_XS: super-blocks of 256 values in eight sub-blocks of 32, each with a 6-bit scale, and 4-bit indices
//! into the IQ4_NL table; `x = d·(ls − 32)·K[q]`.
//!
//! Layout (ggml `block_iq4_xs`, 136 bytes): `d: f16` at 0, `scales_h: u16` at 2 (bits `2s..2s+1`: the top
//! two bits of scale `s`), `scales_l: [u8; 4]` at 4 (scale `s`'s low four bits in nibble `s % 2` of byte
//! `s / 2`), `qs: [u8; 128]` at 8: sub-block `s` in bytes `16s..16s+16`, packed as IQ4_NL packs a block.
//! Dot products take Q8_K activations.

use super::iq4_nl::{self, LEVELS};
use super::{array_at, nearest_int, q8_k, read_f16, Format, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 136;
/// Offset of the `u16` high scale bits.
pub const SCALES_H: usize = 2;
/// Offset of the four low-scale-nibble bytes.
pub const SCALES_L: usize = 4;
/// Offset of the 128 packed index bytes.
pub const QS: usize = 8;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::IQ4_XS,
    name: "IQ4_XS",
    ggml_id: 23,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed IQ4_XS block.
#[derive(Clone, Copy)]
pub struct BlockIq4Xs<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockIq4Xs<'a> {
    /// The super-block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The eight sub-block scales, offset removed (−32..=31).
    #[inline(always)]
    pub fn scales(self) -> [i32; 8] {
        let high = u16::from_le_bytes([self.0[SCALES_H], self.0[SCALES_H + 1]]);
        std::array::from_fn(|s| {
            let low = (self.0[SCALES_L + s / 2] >> (4 * (s % 2))) & 0xf;
            (low as i32 | ((((high >> (2 * s)) & 3) as i32) << 4)) - 32
        })
    }

    /// The 16 packed index bytes of sub-block `s` (0..8).
    #[inline(always)]
    pub fn qs(self, s: usize) -> &'a [u8; 16] {
        array_at(self.0, QS + 16 * s)
    }

    /// The level of value `j` (0..256), one of [`LEVELS`].
    #[inline(always)]
    pub fn level(self, j: usize) -> i32 {
        let byte = self.qs(j / 32)[j % 16];
        LEVELS[(if j % 32 < 16 { byte & 0xf } else { byte >> 4 }) as usize] as i32
    }
}

/// Iterates over the blocks of an IQ4_XS row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockIq4Xs<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockIq4Xs(b.try_into().expect("chunk is one block")))
}

/// ggml's IQ4_XS quantizer as llama-quantize runs it (`quantize_iq4_xs`, no importance matrix), byte for byte:
/// each sub-block's scale fit as IQ4_NL fits a block, the eight scales quantized to 6 bits against the one of
/// largest magnitude (which maps to −32), then every value rounded to its nearest level at its rounded scale.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let mut scales = [0.0f32; 8];
        let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
        for (s, scale) in scales.iter_mut().enumerate() {
            *scale = iq4_nl::fit_block_scale(x[32 * s..32 * s + 32].try_into().expect("one sub-block"));
            if scale.abs() > amax_scale {
                amax_scale = scale.abs();
                max_scale = *scale;
            }
        }
        out.fill(0);
        let d = -max_scale / 32.0;
        out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut high = 0u16;
        for (s, &scale) in scales.iter().enumerate() {
            let l = nearest_int(id * scale).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            iq4_nl::pack_indices(&x[32 * s..32 * s + 32], idl, &mut out[QS + 16 * s..QS + 16 * s + 16]);
            let l = (l + 32) as u8;
            out[SCALES_L + s / 2] |= (l & 0xf) << (4 * (s % 2));
            high |= ((l >> 4) as u16) << (2 * s);
        }
        out[SCALES_H..SCALES_H + 2].copy_from_slice(&high.to_le_bytes());
    }
}

/// `x = (d·(ls − 32))·K[q]`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let (d, sc) = (block.d(), block.scales());
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * sc[j / 32] as f32 * block.level(j) as f32;
        }
    }
}

/// Reference IQ4_XS·Q8_K dot: per block `sumi = Σ_sub (ls − 32)·Σ K[q]·a` (exact `i32`), times `d_w·d_a`,
/// accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let sc = wb.scales();
        let mut sumi = 0i32;
        for (s, &scale) in sc.iter().enumerate() {
            let mut sub = 0i32;
            for j in 32 * s..32 * s + 32 {
                sub += wb.level(j) * ab.q(j) as i32;
            }
            sumi += scale * sub;
        }
        sum += (wb.d() * ab.d()) * sumi as f32;
    }
    sum
}
