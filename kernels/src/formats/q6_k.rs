//! Q6_K: super-blocks of 256 values in sixteen sub-blocks of 16, each with a signed
//! 8-bit scale; `x = d·sc·(q − 32)` with 6-bit `q`.
//!
//! Layout (ggml `block_q6_K`, 210 bytes): `ql: [u8; 128]` at 0 (low 4 bits),
//! `qh: [u8; 64]` at 128 (high 2 bits), `scales: [i8; 16]` at 192, `d: f16` at 208.
//! Each half of 128 values uses 64 `ql` bytes, 32 `qh` bytes and 8 scales: for
//! `l < 32`, value `l` is `ql[l] & 15` with bits 0..1 of `qh[l]`, value `l + 32` is
//! `ql[l + 32] & 15` with bits 2..3, value `l + 64` is `ql[l] >> 4` with bits 4..5 and
//! value `l + 96` is `ql[l + 32] >> 4` with bits 6..7. Dot products take Q8_K activations.

use super::{nearest_int, q8_k, read_f16, Format, GROUP_MAX_EPS, QK_K};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = QK_K;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 210;
/// Offset of the 128 low-nibble bytes.
pub const QL: usize = 0;
/// Offset of the 64 high-bit-pair bytes.
pub const QH: usize = 128;
/// Offset of the 16 signed sub-block scales.
pub const SCALES: usize = 192;
/// Offset of the f16 super-block scale.
pub const D: usize = 208;

pub(crate) const FORMAT: Format = Format {
    dtype: DType::Q6_K,
    name: "Q6_K",
    ggml_id: 14,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_K,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed Q6_K block.
#[derive(Clone, Copy)]
pub struct BlockQ6K<'a>(pub &'a [u8; BLOCK_BYTES]);

impl BlockQ6K<'_> {
    /// The super-block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, D)
    }

    /// The signed scale of sub-block `s` (0..16, 16 values each).
    #[inline(always)]
    pub fn scale(self, s: usize) -> i8 {
        self.0[SCALES + s] as i8
    }

    /// The signed quant of value `j` (0..256), in −32..=31.
    #[inline(always)]
    pub fn q(self, j: usize) -> i32 {
        let (half, r) = (j / 128, j % 128);
        let (quarter, l) = (r / 32, r % 32);
        let ql = self.0[QL + 64 * half + l + 32 * (quarter % 2)];
        let low = if quarter < 2 { ql & 0xf } else { ql >> 4 };
        let high = (self.0[QH + 32 * half + l] >> (2 * quarter)) & 3;
        (low | (high << 4)) as i32 - 32
    }
}

/// Iterates over the blocks of a Q6_K row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockQ6K<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockQ6K(b.try_into().expect("chunk is one block")))
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (the only
/// case the reference Q6_K quantizer uses): fits `x ≈ scale·(L − nmax)` with
/// `L` in `0..2·nmax`, weighting each value by `x²`, trying 18 scales around
/// `−nmax/max`. Returns the scale (0 for an all-zero group). ggml's float order is kept.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let fit = |iscale: f32, levels: Option<&mut [i8]>| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        let mut levels = levels;
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            if let Some(levels) = levels.as_deref_mut() {
                levels[i] = (l + nmax) as i8;
            }
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = fit(iscale, Some(levels));
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale, None);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fit(iscale, Some(levels));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `quantize_row_q6_K_ref` (llama-quantize's Q6_K without an importance matrix),
/// byte for byte: `make_qx_quants(16, 32)` per sub-block, the sixteen scales quantized
/// to `i8` against the one of largest magnitude (which maps to −128, capped at 127),
/// then every value requantized with the rounded scales.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (ib, scale) in scales.iter_mut().enumerate() {
            *scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = *scale;
            }
        }
        out.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = half::f16::from_f32(1.0 / iscale);
        out[D..D + 2].copy_from_slice(&d.to_le_bytes());
        for (ib, &scale) in scales.iter().enumerate() {
            out[SCALES + ib] = nearest_int(iscale * scale).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let dl = d.to_f32() * out[SCALES + j] as i8 as f32;
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / dl).clamp(-32, 31);
                levels[16 * j + ii] = (l + 32) as i8;
            }
        }
        for half in 0..2 {
            let l = &levels[128 * half..128 * half + 128];
            let (ql, qh) = (QL + 64 * half, QH + 32 * half);
            for i in 0..32 {
                let q = [l[i], l[i + 32], l[i + 64], l[i + 96]].map(|v| v as u8);
                out[ql + i] = (q[0] & 0xf) | ((q[2] & 0xf) << 4);
                out[ql + i + 32] = (q[1] & 0xf) | ((q[3] & 0xf) << 4);
                out[qh + i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
}

/// Calls `f(value index within the half, quant − 32)` for the 128 values of one half
/// block, in layout order.
#[inline(always)]
fn for_each_in_half(ql: &[u8], qh: &[u8], mut f: impl FnMut(usize, i32)) {
    for l in 0..32 {
        let h = qh[l] as i32;
        f(l, ((ql[l] & 0xf) as i32 | (h & 3) << 4) - 32);
        f(l + 32, ((ql[l + 32] & 0xf) as i32 | ((h >> 2) & 3) << 4) - 32);
        f(l + 64, ((ql[l] >> 4) as i32 | ((h >> 4) & 3) << 4) - 32);
        f(l + 96, ((ql[l + 32] >> 4) as i32 | ((h >> 6) & 3) << 4) - 32);
    }
}

/// `x = (d·sc)·(q − 32)`, in ggml's operation order.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        for (half, y) in out.chunks_exact_mut(128).enumerate() {
            let ql = &block.0[QL + 64 * half..QL + 64 * half + 64];
            let qh = &block.0[QH + 32 * half..QH + 32 * half + 32];
            for_each_in_half(ql, qh, |j, q| {
                y[j] = d * block.scale(8 * half + j / 16) as f32 * q as f32;
            });
        }
    }
}

/// Reference Q6_K·Q8_K dot: per block `sumi = Σ_sub sc·Σ (q − 32)·q8` (exact `i32`),
/// times `d_w·d_a`, accumulated in `f32`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(q8_k::blocks(act)).take(n / BLOCK_LEN) {
        let mut sub_sums = [0i32; 16];
        for half in 0..2 {
            let ql = &wb.0[QL + 64 * half..QL + 64 * half + 64];
            let qh = &wb.0[QH + 32 * half..QH + 32 * half + 32];
            let a = &ab.qs()[128 * half..128 * half + 128];
            let sums = &mut sub_sums[8 * half..8 * half + 8];
            for_each_in_half(ql, qh, |j, q| sums[j / 16] += q * a[j] as i8 as i32);
        }
        let sumi: i32 = (0..16).map(|s| wb.scale(s) as i32 * sub_sums[s]).sum();
        sum += (wb.d() * ab.d()) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout-order loops agree with the per-index definition `d·sc[j/16]·q(j)`.
    #[test]
    fn dequantize_matches_per_index_definition() {
        let mut row: Vec<u8> = (0..3 * BLOCK_BYTES).map(|i| (i * 53 + 7) as u8).collect();
        for b in row.chunks_exact_mut(BLOCK_BYTES) {
            b[D..D + 2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        }
        let mut out = vec![0.0; 3 * BLOCK_LEN];
        dequantize(&row, &mut out);
        for (b, block) in blocks(&row).enumerate() {
            for j in 0..BLOCK_LEN {
                let want = 0.5 * block.scale(j / 16) as f32 * block.q(j) as f32;
                assert_eq!(out[b * BLOCK_LEN + j], want, "block {b} value {j}");
            }
        }
    }
}
