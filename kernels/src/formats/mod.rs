//! Block formats with byte layouts identical to ggml/GGUF.
//!
//! One file per format. Each holds the block layout (as offset constants and a borrowed
//! view type), the scalar quantizer, the dequantizer and the scalar reference dot product.
//! [`Format`] gathers them in one table so the rest of the crate looks a format up once
//! instead of matching on [`DType`] everywhere.
//!
//! All multi-byte fields are little endian and read from byte slices with
//! `from_le_bytes`: rows come from an mmap and are not aligned for `f32` or `u16`.

use crate::DType;

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;

/// Everything the crate knows about one block format: its ggml identity, its block
/// geometry and its scalar kernels.
pub struct Format {
    /// The format this entry describes.
    pub dtype: DType,
    /// ggml's spelling of the type name ("Q4_K", "BF16", ...).
    pub name: &'static str,
    /// ggml's `ggml_type` id, as stored in GGUF tensor infos.
    pub ggml_id: u32,
    /// Values per block.
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// The activation format that [`Format::vec_dot`] expects as its second operand.
    pub vec_dot_type: DType,
    /// Scalar quantizer: `src.len()` values (a multiple of `block_len`) into `dst`.
    pub quantize: fn(src: &[f32], dst: &mut [u8]),
    /// Dequantizer: `dst.len()` values (a multiple of `block_len`) from `src`.
    pub dequantize: fn(src: &[u8], dst: &mut [f32]),
    /// Scalar reference dot product of `n` values of this format with `n` values of
    /// `vec_dot_type`. Lengths are checked by the caller.
    pub vec_dot: fn(n: usize, w: &[u8], act: &[u8]) -> f32,
}

/// The table entry of `dtype`.
pub fn format(dtype: DType) -> &'static Format {
    match dtype {
        DType::F32 => &f32::FORMAT,
        DType::F16 => &f16::FORMAT,
        DType::BF16 => &bf16::FORMAT,
        DType::Q8_0 => &q8_0::FORMAT,
        DType::Q4_0 => &q4_0::FORMAT,
        DType::Q4_1 => &q4_1::FORMAT,
        DType::Q5_0 => &q5_0::FORMAT,
        DType::Q5_1 => &q5_1::FORMAT,
        DType::Q4_K => &q4_k::FORMAT,
        DType::Q5_K => &q5_k::FORMAT,
        DType::Q6_K => &q6_k::FORMAT,
        DType::Q8_K => &q8_k::FORMAT,
        DType::IQ4_NL => &iq4_nl::FORMAT,
        DType::Q2_K => &q2_k::FORMAT,
        DType::Q3_K => &q3_k::FORMAT,
        DType::IQ4_XS => &iq4_xs::FORMAT,
    }
}

/// Every format, in ggml id order.
pub const ALL: [DType; 16] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::Q8_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::BF16,
];

/// Values per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Below this magnitude ggml treats a group as all zero (ggml's `GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Reads a little-endian IEEE half at `off`.
#[inline(always)]
pub(crate) fn read_f16(bytes: &[u8], off: usize) -> f32 {
    half::f16::from_le_bytes([bytes[off], bytes[off + 1]]).to_f32()
}

/// Writes `x` as a little-endian IEEE half (round to nearest even, like ggml's
/// `GGML_FP32_TO_FP16`) at `off`.
#[inline(always)]
pub(crate) fn write_f16(bytes: &mut [u8], off: usize, x: f32) {
    bytes[off..off + 2].copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
}

/// Reads a little-endian `f32` at `off`.
#[inline(always)]
pub(crate) fn read_f32(bytes: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
}

/// Borrows `N` bytes at `off` as a fixed-size array (panics if out of range).
#[inline(always)]
pub(crate) fn array_at<const N: usize>(bytes: &[u8], off: usize) -> &[u8; N] {
    bytes[off..off + N].try_into().expect("range has length N")
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the 1.5·2²³ magic
/// constant. Only meaningful for |x| ≤ 2²²; outside that it returns the same garbage
/// as ggml (the quantizers never go there), so byte-for-byte results match llama.cpp.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0_f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// The largest magnitude in `x` and the value that has it, sign kept (the first on a tie), as ggml's
/// Q4_0/Q5_0/IQ4_NL quantizers find them.
#[inline]
pub(crate) fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// The 5-bit level of value `j` (0..32) of a Q5_0/Q5_1 block: the low four bits from the nibbles of `qs`
/// (value `j` low, `j + 16` high, as Q4_0), the fifth from bit `j` of `qh`.
#[inline(always)]
pub(crate) fn five_bit(qs: &[u8; 16], qh: u32, j: usize) -> i32 {
    let byte = qs[j % 16];
    let nibble = if j < 16 { byte & 0xf } else { byte >> 4 };
    (nibble as i32) | ((((qh >> j) & 1) as i32) << 4)
}

/// Packs 32 levels as a Q5_0/Q5_1 block's `qh` (4 bytes, little endian) then `qs` (16 bytes); bits above
/// the fifth are dropped, as ggml's quantizers drop them.
pub(crate) fn pack_five_bit(levels: &[u8; 32], out: &mut [u8]) {
    let out: &mut [u8; 20] = out.try_into().expect("qh and qs are 20 bytes");
    let mut qh = 0u32;
    for j in 0..16 {
        let (l0, l1) = (levels[j], levels[j + 16]);
        out[4 + j] = (l0 & 0xf) | ((l1 & 0xf) << 4);
        qh |= (((l0 & 0x10) >> 4) as u32) << j;
        qh |= (((l1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out[..4].copy_from_slice(&qh.to_le_bytes());
}

/// The float combination of one Q4_1/Q5_1 block with a Q8_0 activation block, shared by the scalar and
/// SIMD paths so they round identically: `sum = fma(Σ q·a, d_w·d_a, sum)`, then `fma(Σ a, m_w·d_a, ·)`.
#[inline(always)]
pub(crate) fn min_block_sum(sum: f32, sumi: i32, d: f32, suma: i32, m: f32, da: f32) -> f32 {
    (suma as f32).mul_add(m * da, (sumi as f32).mul_add(d * da, sum))
}

/// A block of the 32-value formats with a scale and a minimum (Q4_1, Q5_1): `x = d·q + m`.
pub(crate) trait MinBlock: Copy {
    fn d(self) -> f32;
    fn m(self) -> f32;
    /// The unsigned quant of value `j` (0..32).
    fn q(self, j: usize) -> i32;
}

/// `x = d·q + m` over whole blocks: the dequantizer of the [`MinBlock`] formats.
pub(crate) fn dequantize_min_blocks<B: MinBlock>(blocks: impl Iterator<Item = B>, dst: &mut [f32]) {
    for (block, out) in blocks.zip(dst.chunks_exact_mut(32)) {
        let (d, m) = (block.d(), block.m());
        for (j, y) in out.iter_mut().enumerate() {
            *y = block.q(j) as f32 * d + m;
        }
    }
}

/// Reference dot of `n_blocks` [`MinBlock`] blocks with Q8_0 activations: per block the exact `i32` sums
/// `Σ q·a` and `Σ a`, combined by [`min_block_sum`] block after block.
pub(crate) fn vec_dot_min_blocks<B: MinBlock>(
    blocks: impl Iterator<Item = B>,
    act: &[u8],
    n_blocks: usize,
) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks.zip(q8_0::blocks(act)).take(n_blocks) {
        let (mut sumi, mut suma) = (0i32, 0i32);
        for (j, &aj) in ab.qs().iter().enumerate() {
            sumi += wb.q(j) * aj as i8 as i32;
            suma += aj as i8 as i32;
        }
        sum = min_block_sum(sum, sumi, wb.d(), suma, wb.m(), ab.d());
    }
    sum
}

/// Unpacks the 12-byte scale field shared by Q4_K and Q5_K into eight 6-bit scales and
/// eight 6-bit mins.
///
/// Layout (ggml `get_scale_min_k4`): for j < 4, `scale[j] = b[j] & 63` and
/// `min[j] = b[j+4] & 63`; for j ≥ 4, the low four bits come from the nibbles of
/// `b[j+4]` (scale low, min high) and the top two bits from bits 6..7 of `b[j-4]`
/// (scale) and `b[j]` (min). Done four bytes at a time.
#[inline(always)]
pub fn unpack_k4_scales(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w0 = u32::from_le_bytes([packed[0], packed[1], packed[2], packed[3]]);
    let w1 = u32::from_le_bytes([packed[4], packed[5], packed[6], packed[7]]);
    let w2 = u32::from_le_bytes([packed[8], packed[9], packed[10], packed[11]]);
    let scales_lo = w0 & LOW6;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_lo = w1 & LOW6;
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    scales[..4].copy_from_slice(&scales_lo.to_le_bytes());
    scales[4..].copy_from_slice(&scales_hi.to_le_bytes());
    mins[..4].copy_from_slice(&mins_lo.to_le_bytes());
    mins[4..].copy_from_slice(&mins_hi.to_le_bytes());
    (scales, mins)
}

/// Packs eight 6-bit scales and mins into the 12-byte Q4_K/Q5_K scale field (inverse of
/// [`unpack_k4_scales`]; inputs must be < 64).
pub(crate) fn pack_k4_scales(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    packed
}

/// The float combination of one K-quant block, shared by the scalar and SIMD paths so
/// they round identically: `d·sumi − dmin·summ`, where `d = d_w·d_a`,
/// `dmin = dmin_w·d_a`, `sumi` is the scaled integer dot and `summ` the mins times the
/// activation group sums (ggml's order of operations).
#[inline(always)]
pub(crate) fn k_block_sum(d: f32, sumi: i32, dmin: f32, summ: i32) -> f32 {
    d * sumi as f32 - dmin * summ as f32
}

/// ggml's `make_qkx2_quants`: fits `x ≈ scale·L − min` with `L` in `0..=nmax` for one
/// sub-block, minimising the `weights`-weighted squared error over `nstep + 1` candidate
/// scales around `nmax/(max − min)`. The error is squared, or absolute with `use_mad` (Q2_K). Writes the
/// levels to `levels` and returns `(scale, min)` with `min ≥ 0` (the value subtracted).
///
/// The float operations are kept in ggml's exact order so that Q4_K/Q5_K files come out
/// byte-identical to llama.cpp's reference quantizer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The quantized header of a Q4_K/Q5_K super-block and its levels, before bit packing.
pub(crate) struct KxSuperBlock {
    /// Super-block scale of the scales, as stored (f16 bits).
    pub d: half::f16,
    /// Super-block scale of the mins, as stored (f16 bits).
    pub dmin: half::f16,
    /// The 12-byte packed 6-bit scales and mins.
    pub scales: [u8; 12],
    /// One level per value, in `0..=nmax`.
    pub levels: [u8; QK_K],
}

/// The shared body of ggml's `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` for one
/// super-block: fit each 32-value sub-block with [`make_qkx2_quants`] (weights
/// `rms(x) + |x|`), quantize the eight scales and eight mins to 6 bits against their
/// maxima, then requantize every value with the rounded scales.
pub(crate) fn quantize_kx_super_block(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> KxSuperBlock {
    let mut levels = [0u8; QK_K];
    let mut aux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut aux,
            rmin,
            rdelta,
            nstep,
            false,
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

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t (wrapping) before capping at 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_k4_scales(&ls, &lm);
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);

    let (sc, m) = unpack_k4_scales(&packed);
    for j in 0..8 {
        let dl = d.to_f32() * sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m[j] as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / dl);
            levels[32 * j + ii] = l.clamp(0, nmax) as u8;
        }
    }
    KxSuperBlock { d, dmin, scales: packed, levels }
}

/// Checks that `src`/`dst` describe the same whole number of blocks; panics otherwise.
#[inline]
pub(crate) fn check_row(f: &Format, bytes: usize, values: usize) {
    assert!(
        values.is_multiple_of(f.block_len),
        "{}: {values} values is not a multiple of the block length {}",
        f.name,
        f.block_len
    );
    let expected = values / f.block_len * f.block_bytes;
    assert!(bytes == expected, "{}: {values} values need {expected} bytes, got {bytes}", f.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-index definition from the ggml layout, to check the word-wise unpacking.
    fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        }
    }

    #[test]
    fn k4_scales_unpack_matches_definition_and_pack_inverts() {
        let mut state = 0x1234_5678_u32;
        for _ in 0..2000 {
            let mut packed = [0u8; 12];
            for b in packed.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let (sc, m) = unpack_k4_scales(&packed);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(j, &packed), "j={j} {packed:?}");
            }
            assert_eq!(pack_k4_scales(&sc, &m), packed);
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-127.4), -127);
        assert_eq!(nearest_int(126.6), 127);
    }
}
