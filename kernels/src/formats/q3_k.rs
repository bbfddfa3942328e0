//! Q3_K: super-blocks of 256 values in sixteen sub-blocks of 16, each with a signed 6-bit scale;
//! `x = d·(sc − 32)·(q − 4)` with 3-bit `q`.
//!
//! Layout (ggml `block_q3_K`, 110 bytes): `hmask: [u8; 32]` at 0 (the third bits), `qs: [u8; 64]` at 32 (the
//! low two bits), `scales: [u8; 12]` at 96, `d: f16` at 108. Value `128·h + 32·g + l` (h in 0..2, g in 0..4,
//! l in 0..32) has its low bits in bits `2g..2g+1` of `qs[32h + l]` and its third bit in bit `4h + g` of
//! `hmask[l]`. Scale `s` has its low four bits in the low (s < 8) or high (s ≥ 8) nibble of `scales[s % 8]`
//! and its top two in bits `2·(s / 4)..` of `scales[8 + s % 4]`. Dot products take Q8_K activations.

use super::{nearest_int, q8_k, read_f16, Format, GROUP_MAX_EPS, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 110;
/// Offset of the 32 high-bit mask bytes.
pub const HMASK: usize = 0;
/// Offset of the 64 bytes of low 2-bit quants.
pub const QS: usize = 32;
/// Offset of the 12 packed scale bytes.
pub const SCALES: usize = 96;
/// Offset of the f16 super-block scale.
pub const D: usize = 108;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q3_K,
    name: "Q3_K",
    ggml_id: 11,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q3_K block.
#[derive(Clone, Copy)]
pub struct BlockQ3K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl BlockQ3K<'_> {
    /// The super-block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, D)
    }

    /// The sixteen sub-block scales, offset removed (−32..=31).
    #[inline(always)]
    pub fn scales(self) -> [i8; 16] {
        unpack_scales(self.0[SCALES..SCALES + 12].try_into().expect("12 scale bytes"))
    }

    /// The signed quant of value `j` (0..256), in −4..=3.
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        let (h, r) = (j / 128, j % 128);
        let (g, l) = (r / 32, r % 32);
        let low = ((self.0[QS + 32 * h + l] >> (2 * g)) & 3) as i32;
        let high = (self.0[HMASK + l] >> (4 * h + g)) & 1;
        low - if high == 1 { 0 } else { 4 }
    }
}

/// The sixteen 6-bit scales of a Q3_K block minus 32.
#[inline(always)]
pub fn unpack_scales(packed: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|s| {
        let low = if s < 8 { packed[s] & 0xf } else { packed[s - 8] >> 4 };
        let high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// Iterates over the blocks of a Q3_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ3K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ3K(b.try_into().expect("chunk is one block")))
}

/// ggml's `make_q3_quants` with `do_rmse`: a first fit at `−nmax/max`, then up to five passes that move single
/// values to the level that improves the weighted (`x²`) least-squares fit. Writes levels `0..2·nmax` and
/// returns the scale (0 for an all-zero group). ggml's float order is kept.
fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (amax, max) = super::signed_amax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        levels[i] = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = levels[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != levels[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `quantize_row_q3_K_ref` (llama-quantize's Q3_K without an importance matrix), byte for byte:
/// `make_q3_quants(4)` per sub-block, the sixteen scales quantized to 6 bits against the one of largest
/// magnitude (which maps to −32), then every value requantized with the rounded scales.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for (j, scale) in scales.iter_mut().enumerate() {
            *scale = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut levels[16 * j..16 * j + 16]);
            if scale.abs() > amax {
                amax = scale.abs();
                max_scale = *scale;
            }
        }
        out.fill(0);
        let mut d = half::f16::ZERO;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let packed = &mut out[SCALES..SCALES + 12];
            for (j, &scale) in scales.iter().enumerate() {
                let l = (nearest_int(iscale * scale) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    packed[j] = (l & 0xf) as u8;
                } else {
                    packed[j - 8] |= ((l & 0xf) << 4) as u8;
                }
                packed[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
            }
            d = half::f16::from_f32(1.0 / iscale);
        }
        out[D..D + 2].copy_from_slice(&d.to_le_bytes());
        let sc = unpack_scales(out[SCALES..SCALES + 12].try_into().expect("12 scale bytes"));
        for j in 0..16 {
            let dl = d.to_f32() * sc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / dl).clamp(-4, 3);
                levels[16 * j + ii] = (l + 4) as i8;
            }
        }
        for (j, l) in levels.iter_mut().enumerate() {
            if *l > 3 {
                out[HMASK + j % 32] |= 1 << (j / 32);
                *l -= 4;
            }
        }
        for half in 0..2 {
            let l = &levels[128 * half..128 * half + 128];
            for i in 0..32 {
                let q = [l[i], l[i + 32], l[i + 64], l[i + 96]].map(|v| v as u8);
                out[QS + 32 * half + i] = q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6);
            }
        }
    }
}

/// `x = (d·(sc − 32))·(q − 4)`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let (d, sc) = (block.d(), block.scales());
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * sc[j / 16] as f32 * block.q(j) as f32;
        }
    }
}

/// Reference Q3_K·Q8_K dot: per block `sumi = Σ_sub (sc − 32)·Σ (q − 4)·a` (exact `i32`), times `d_w·d_a`,
/// accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let sc = wb.scales();
        let mut sumi = 0i32;
        for (s, &scale) in sc.iter().enumerate() {
            let mut sub = 0i32;
            for j in 16 * s..16 * s + 16 {
                sub += wb.q(j) * ab.q(j) as i32;
            }
            sumi += scale as i32 * sub;
        }
        sum += (wb.d() * ab.d()) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-free unpacking agrees with ggml's definition through 32-bit masks (`dequantize_row_q3_K`).
    #[test]
    fn scale_unpacking_matches_ggml_word_masks() {
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..500 {
            let packed: [u8; 12] = std::array::from_fn(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            });
            let w = |i: usize| u32::from_le_bytes(packed[4 * i..4 * i + 4].try_into().unwrap());
            let (a0, a1, tmp) = (w(0), w(1), w(2));
            let (m1, m2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let aux = [
                (a0 & m2) | ((tmp & m1) << 4),
                (a1 & m2) | (((tmp >> 2) & m1) << 4),
                ((a0 >> 4) & m2) | (((tmp >> 4) & m1) << 4),
                ((a1 >> 4) & m2) | (((tmp >> 6) & m1) << 4),
            ];
            let want: Vec<i8> = aux.iter().flat_map(|a| a.to_le_bytes()).map(|b| b as i8 - 32).collect();
            assert_eq!(unpack_scales(&packed).to_vec(), want, "{packed:?}");
        }
    }
}
