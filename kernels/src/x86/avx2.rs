//! AVX2 + FMA + F16C dot products, and the Q8_0/Q8_K activation quantizers.
//!
//! Integer parts use `maddubs`/`madd` and are exact for every byte pattern (including
//! −128 activations): unsigned 2/3/4/5/6-bit weight quants go straight into `maddubs`, and
//! the format offsets (−8 for Q4_0, −32 for Q6_K) are subtracted as a second `maddubs`
//! of the activations, never by signed tricks that overflow. The IQ4 levels (−127..=113) go through
//! `maddubs(|a|, sign(w, a))`, which cannot overflow because no level is −128. Q8_0×Q8_0 widens to `i16`.
//!
//! Quantized kernels reduce each block (super-block for the K-quants) to exact `i32` sums
//! and combine them with the same float code as the scalar reference, so they match it
//! bit for bit. F32/F16/BF16 accumulate in 32 lanes and differ from the scalar reference
//! only by summation order.
//!
//! Every function is safe to call from code compiled with the same features; callers
//! without them (only [`crate::dispatch`]) must check the CPU first. Memory accesses go
//! through fixed-size array references, so they cannot leave the slices they are given.

use std::arch::x86_64::*;

use crate::formats::{
    array_at, iq4_nl, iq4_xs, k_block_sum, min_block_sum, q2_k, q3_k, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k,
    q8_0, q8_k, unpack_k4_scales,
};
use crate::DType;

/// Runs the AVX2 kernel for `dtype` (the Q8_K "weights" have none and use the scalar
/// reference). Operand lengths must already have been checked.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match dtype {
        DType::F32 => dot_f32(w, act),
        DType::F16 => dot_f16_f32(w, act),
        DType::BF16 => dot_bf16_f32(w, act),
        DType::Q8_0 => dot_q8_0_q8_0(w, act),
        DType::Q4_0 => dot_q4_0_q8_0(w, act),
        DType::Q4_1 => dot_q4_1_q8_0(w, act),
        DType::Q5_0 => dot_q5_0_q8_0(w, act),
        DType::Q5_1 => dot_q5_1_q8_0(w, act),
        DType::Q4_K => dot_q4_k_q8_k(w, act),
        DType::Q5_K => dot_q5_k_q8_k(w, act),
        DType::Q6_K => dot_q6_k_q8_k(w, act),
        DType::IQ4_NL => dot_iq4_nl_q8_0(w, act),
        DType::Q2_K => dot_q2_k_q8_k(w, act),
        DType::Q3_K => dot_q3_k_q8_k(w, act),
        DType::IQ4_XS => dot_iq4_xs_q8_k(w, act),
        DType::Q8_K => crate::formats::q8_k::vec_dot(n, w, act),
    }
}

// ---------------------------------------------------------------- loads and reductions

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_256(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: `bytes` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_128(bytes: &[u8; 16]) -> __m128i {
    // SAFETY: `bytes` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8(bytes: &[u8; 32]) -> __m256 {
    // SAFETY: `bytes` is 32 readable bytes (eight little-endian f32, x86 is little
    // endian); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(bytes.as_ptr().cast()) }
}

/// Eight bytes as the low half of an `__m128i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_64(bytes: &[u8; 8]) -> __m128i {
    _mm_cvtsi64_si128(i64::from_le_bytes(*bytes))
}

/// One little-endian half to `f32` with the F16C instruction (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bytes: &[u8; 2]) -> f32 {
    let bits = u16::from_le_bytes(*bytes) as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32_128(s: __m128i) -> i32 {
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    hsum_i32_128(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)))
}

/// Σ (u·a) over 32 byte pairs with `u` unsigned (≤ 63) and `a` signed, minus
/// `offset·Σ a` (offset ≤ 32): sixteen exact `i16` pair sums. Bounds: |u·a| pair sums
/// ≤ 2·63·128 and |offset·a| pair sums ≤ 2·32·128, so nothing saturates.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_offset_pairs(u: __m256i, a: __m256i, offset: __m256i) -> __m256i {
    _mm256_sub_epi16(_mm256_maddubs_epi16(u, a), _mm256_maddubs_epi16(offset, a))
}

// ---------------------------------------------------------------- float rows

/// F32·F32: four 8-lane FMA accumulators, then a scalar tail.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f32(w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, ac) = (w.chunks_exact(128), act.chunks_exact(128));
    let (w_rest, a_rest) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = load_f32x8(array_at(wb, 32 * k));
            let y = load_f32x8(array_at(ab, 32 * k));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
    }
    let (wc, ac) = (w_rest.chunks_exact(32), a_rest.chunks_exact(32));
    let (w_tail, a_tail) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        acc[0] = _mm256_fmadd_ps(load_f32x8(array_at(wb, 0)), load_f32x8(array_at(ab, 0)), acc[0]);
    }
    let mut sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (wb, ab) in w_tail.chunks_exact(4).zip(a_tail.chunks_exact(4)) {
        sum += f32::from_le_bytes(*array_at(wb, 0)) * f32::from_le_bytes(*array_at(ab, 0));
    }
    sum
}

/// F16·F32: halves widened with `vcvtph2ps`, four 8-lane FMA accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f16_f32(w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, ac) = (w.chunks_exact(64), act.chunks_exact(128));
    let (w_rest, a_rest) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_cvtph_ps(load_128(array_at(wb, 16 * k)));
            let y = load_f32x8(array_at(ab, 32 * k));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
    }
    let (wc, ac) = (w_rest.chunks_exact(16), a_rest.chunks_exact(32));
    let (w_tail, a_tail) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        let x = _mm256_cvtph_ps(load_128(array_at(wb, 0)));
        acc[0] = _mm256_fmadd_ps(x, load_f32x8(array_at(ab, 0)), acc[0]);
    }
    let mut sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (wb, ab) in w_tail.chunks_exact(2).zip(a_tail.chunks_exact(4)) {
        sum += f16_to_f32(array_at(wb, 0)) * f32::from_le_bytes(*array_at(ab, 0));
    }
    sum
}

/// Eight bfloat16 to `f32`: zero-extend to 32 bits and shift into the high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16x8_to_f32(bytes: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_128(bytes))))
}

/// BF16·F32: four 8-lane FMA accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_bf16_f32(w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, ac) = (w.chunks_exact(64), act.chunks_exact(128));
    let (w_rest, a_rest) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = bf16x8_to_f32(array_at(wb, 16 * k));
            let y = load_f32x8(array_at(ab, 32 * k));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
    }
    let (wc, ac) = (w_rest.chunks_exact(16), a_rest.chunks_exact(32));
    let (w_tail, a_tail) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        let x = bf16x8_to_f32(array_at(wb, 0));
        acc[0] = _mm256_fmadd_ps(x, load_f32x8(array_at(ab, 0)), acc[0]);
    }
    let mut sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (wb, ab) in w_tail.chunks_exact(2).zip(a_tail.chunks_exact(4)) {
        let x = f32::from_bits((u16::from_le_bytes(*array_at(wb, 0)) as u32) << 16);
        sum += x * f32::from_le_bytes(*array_at(ab, 0));
    }
    sum
}

// ---------------------------------------------------------------- 32-value blocks

/// Q4_0·Q8_0: nibbles unpacked to 32 unsigned bytes, `Σ (q − 8)·a` as
/// `maddubs(q, a) − maddubs(8, a)`, reduced to the block's exact `i32`, then
/// `sum = fma(sumi, d_w·d_a, sum)` block after block: the scalar reference's order, so the
/// result is bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q4_0_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(18).zip(act.chunks_exact(34)) {
        let wb: &[u8; 18] = array_at(wb, 0);
        let ab: &[u8; 34] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, 0)) * f16_to_f32(array_at(ab, 0));
        let q = unpack_nibbles(array_at(wb, 2));
        let pairs = mul_offset_pairs(q, load_256(array_at(ab, 2)), eight);
        let sumi = hsum_i32(_mm256_madd_epi16(pairs, ones));
        sum = (sumi as f32).mul_add(d, sum);
    }
    sum
}

/// The 32 four-bit values packed as Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL pack them (byte `j`: value `j` low, value
/// `j + 16` high) as 32 bytes, byte `v` = value `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    let packed = load_128(qs);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), _mm256_set1_epi8(0x0f))
}

/// The 32 fifth bits of a Q5_0/Q5_1 block as bytes: byte `v` is `0x10` if bit `v` of `qh` is set, else 0
/// (each byte picks its `qh` byte by shuffle, then tests its own bit).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: &[u8; 4]) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(i32::from_le_bytes(*qh)),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// The 32 unsigned 5-bit levels of a Q5_0/Q5_1 block from its `qs` and `qh`, byte `v` = value `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn five_bit_levels(qs: &[u8; 16], qh: &[u8; 4]) -> __m256i {
    _mm256_or_si256(unpack_nibbles(qs), fifth_bits(qh))
}

/// Q5_0·Q8_0: as Q4_0 with the fifth bit from `qh` and offset 16; bit-identical to the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q5_0_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let sixteen = _mm256_set1_epi8(16);
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q5_0::BLOCK_BYTES).zip(act.chunks_exact(q8_0::BLOCK_BYTES)) {
        let wb: &[u8; q5_0::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_0::BLOCK_BYTES] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, 0)) * f16_to_f32(array_at(ab, 0));
        let q = five_bit_levels(array_at(wb, q5_0::QS), array_at(wb, q5_0::QH));
        let pairs = mul_offset_pairs(q, load_256(array_at(ab, q8_0::QS)), sixteen);
        let sumi = hsum_i32(_mm256_madd_epi16(pairs, ones));
        sum = (sumi as f32).mul_add(d, sum);
    }
    sum
}

/// `Σ q·a` and `Σ a` of one block: unsigned levels `q` (≤ 31) against signed activation bytes, exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn level_and_act_sums(q: __m256i, a: __m256i) -> (i32, i32) {
    let ones16 = _mm256_set1_epi16(1);
    let qa = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), ones16);
    let sa = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), a), ones16);
    (hsum_i32(qa), hsum_i32(sa))
}

/// Q4_1·Q8_0: nibbles unpacked to 32 unsigned bytes, the exact `Σ q·a` and `Σ a`, combined with
/// [`min_block_sum`] as the scalar reference does: bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q4_1_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q4_1::BLOCK_BYTES).zip(act.chunks_exact(q8_0::BLOCK_BYTES)) {
        let wb: &[u8; q4_1::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_0::BLOCK_BYTES] = array_at(ab, 0);
        let q = unpack_nibbles(array_at(wb, q4_1::QS));
        let (sumi, suma) = level_and_act_sums(q, load_256(array_at(ab, q8_0::QS)));
        let (d, m) = (f16_to_f32(array_at(wb, 0)), f16_to_f32(array_at(wb, q4_1::M)));
        sum = min_block_sum(sum, sumi, d, suma, m, f16_to_f32(array_at(ab, 0)));
    }
    sum
}

/// Q5_1·Q8_0: as Q4_1 with the fifth bit from `qh`; bit-identical to the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q5_1_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q5_1::BLOCK_BYTES).zip(act.chunks_exact(q8_0::BLOCK_BYTES)) {
        let wb: &[u8; q5_1::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_0::BLOCK_BYTES] = array_at(ab, 0);
        let q = five_bit_levels(array_at(wb, q5_1::QS), array_at(wb, q5_1::QH));
        let (sumi, suma) = level_and_act_sums(q, load_256(array_at(ab, q8_0::QS)));
        let (d, m) = (f16_to_f32(array_at(wb, 0)), f16_to_f32(array_at(wb, q5_1::M)));
        sum = min_block_sum(sum, sumi, d, suma, m, f16_to_f32(array_at(ab, 0)));
    }
    sum
}

/// IQ4_NL·Q8_0: the levels by table shuffle, multiplied exactly with [`signed_pairs`] and summed with
/// `madd`, then `sum = fma(sumi, d_w·d_a, sum)`: bit-identical to the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_iq4_nl_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let table = load_128(&iq4_nl::LEVELS.map(|v| v as u8));
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(iq4_nl::BLOCK_BYTES).zip(act.chunks_exact(q8_0::BLOCK_BYTES)) {
        let wb: &[u8; iq4_nl::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_0::BLOCK_BYTES] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, 0)) * f16_to_f32(array_at(ab, 0));
        let levels = table_levels(table, array_at(wb, iq4_nl::QS));
        let pairs = signed_pairs(load_256(array_at(ab, q8_0::QS)), levels);
        sum = (hsum_i32(_mm256_madd_epi16(pairs, ones)) as f32).mul_add(d, sum);
    }
    sum
}

/// Q8_0·Q8_0: both operands sign-extended to `i16` and multiplied with `madd` (exact for
/// all bytes, including −128·−128), reduced to the block's exact `i32`, then
/// `sum = fma(sumi, d_w·d_a, sum)`: bit-identical to the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q8_0_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(34).zip(act.chunks_exact(34)) {
        let wb: &[u8; 34] = array_at(wb, 0);
        let ab: &[u8; 34] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, 0)) * f16_to_f32(array_at(ab, 0));
        let x_lo = _mm256_cvtepi8_epi16(load_128(array_at(wb, 2)));
        let x_hi = _mm256_cvtepi8_epi16(load_128(array_at(wb, 18)));
        let y_lo = _mm256_cvtepi8_epi16(load_128(array_at(ab, 2)));
        let y_hi = _mm256_cvtepi8_epi16(load_128(array_at(ab, 18)));
        let sumi = hsum_i32(_mm256_add_epi32(_mm256_madd_epi16(x_lo, y_lo), _mm256_madd_epi16(x_hi, y_hi)));
        sum = (sumi as f32).mul_add(d, sum);
    }
    sum
}

// ---------------------------------------------------------------- K-quants

/// The f16 pair `(d, dmin)` at the start of a Q4_K/Q5_K block, converted together.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_pair_to_f32(bytes: &[u8; 4]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(*bytes)));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The eight 6-bit sub-block scales as `i16`, repeated in both 128-bit lanes; scale `s`
/// is broadcast from it with `pshufb` and [`pick_i16`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_scales_i16(scales: &[u8; 8]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(load_64(scales)))
}

/// `pshufb` mask selecting `i16` element `s` of each 128-bit lane into all eight slots.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pick_i16(s: i16) -> __m256i {
    _mm256_set1_epi16((2 * s + 1) << 8 | (2 * s))
}

/// `Σ_sub mins[sub]·(bsums[2·sub] + bsums[2·sub + 1])` for one Q8_K block: the sixteen
/// group sums are added pairwise (`hadd`, ≤ 4096 in magnitude) and multiply-added with
/// the eight mins.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mins_dot_bsums(mins: &[u8; 8], ab: &[u8; q8_k::BLOCK_BYTES]) -> i32 {
    let bsums = load_256(array_at(ab, q8_k::BSUMS));
    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
    hsum_i32_128(_mm_madd_epi16(pairs, _mm_cvtepu8_epi16(load_64(mins))))
}

/// Q4_K·Q8_K. Per 64-value chunk: low and high nibbles against the two 32-byte
/// activation runs with `maddubs`, each scaled by its 6-bit sub-block scale with `madd`;
/// the block's `i32` total is combined exactly like the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q4_k_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    let picks: [__m256i; 8] = std::array::from_fn(|s| pick_i16(s as i16));
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q4_k::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; q4_k::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let d_a = f32::from_le_bytes(*array_at(ab, 0));
        let (scales, mins) = unpack_k4_scales(array_at(wb, q4_k::SCALES));
        let scales = k4_scales_i16(&scales);
        let summ = mins_dot_bsums(&mins, ab);
        let mut acc = _mm256_setzero_si256();
        for chunk in 0..4 {
            let q = load_256(array_at(wb, q4_k::QS + 32 * chunk));
            let lo = _mm256_and_si256(q, low_nibbles);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low_nibbles);
            let a_lo = load_256(array_at(ab, q8_k::QS + 64 * chunk));
            let a_hi = load_256(array_at(ab, q8_k::QS + 64 * chunk + 32));
            let p_lo = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, a_lo),
                _mm256_shuffle_epi8(scales, picks[2 * chunk]),
            );
            let p_hi = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, a_hi),
                _mm256_shuffle_epi8(scales, picks[2 * chunk + 1]),
            );
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(p_lo, p_hi));
        }
        let (d_w, dmin_w) = f16_pair_to_f32(array_at(wb, 0));
        sum += k_block_sum(d_w * d_a, hsum_i32(acc), dmin_w * d_a, summ);
    }
    sum
}

/// Q5_K·Q8_K: as Q4_K with the fifth bit of each value taken from `qh` (bit `2·chunk`
/// for the low nibbles, `2·chunk + 1` for the high ones) and or-ed in as 16.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q5_k_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    let bit0 = _mm256_set1_epi8(1);
    let picks: [__m256i; 8] = std::array::from_fn(|s| pick_i16(s as i16));
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q5_k::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; q5_k::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let d_a = f32::from_le_bytes(*array_at(ab, 0));
        let (scales, mins) = unpack_k4_scales(array_at(wb, q5_k::SCALES));
        let scales = k4_scales_i16(&scales);
        let summ = mins_dot_bsums(&mins, ab);
        // Shifted right by two per chunk; only bits 0 and 1 of each byte are read, and
        // those never receive bits from the neighbouring byte within four chunks.
        let mut qh = load_256(array_at(wb, q5_k::QH));
        let mut acc = _mm256_setzero_si256();
        for chunk in 0..4 {
            let q = load_256(array_at(wb, q5_k::QS + 32 * chunk));
            let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, bit0));
            let h_hi = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(qh), bit0));
            qh = _mm256_srli_epi16::<2>(qh);
            let lo = _mm256_or_si256(_mm256_and_si256(q, low_nibbles), h_lo);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), low_nibbles), h_hi);
            let a_lo = load_256(array_at(ab, q8_k::QS + 64 * chunk));
            let a_hi = load_256(array_at(ab, q8_k::QS + 64 * chunk + 32));
            let p_lo = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, a_lo),
                _mm256_shuffle_epi8(scales, picks[2 * chunk]),
            );
            let p_hi = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, a_hi),
                _mm256_shuffle_epi8(scales, picks[2 * chunk + 1]),
            );
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(p_lo, p_hi));
        }
        let (d_w, dmin_w) = f16_pair_to_f32(array_at(wb, 0));
        sum += k_block_sum(d_w * d_a, hsum_i32(acc), dmin_w * d_a, summ);
    }
    sum
}

/// Q6_K·Q8_K. Per half (128 values): the four 32-value groups are rebuilt as unsigned
/// 6-bit bytes, `Σ (q − 32)·a` is `maddubs(q, a) − maddubs(32, a)`, and each group's two
/// 16-value halves are scaled by their signed scales with one `madd` against
/// `[sc_lo ×8 | sc_hi ×8]` (picked out of the block's scales with `pshufb`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q6_k_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    let low_pair = _mm256_set1_epi8(3);
    let thirty_two = _mm256_set1_epi8(32);
    let picks = sub_block_pair_picks();
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q6_k::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; q6_k::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, q6_k::D)) * f32::from_le_bytes(*array_at(ab, 0));
        let mut acc = _mm256_setzero_si256();
        for half in 0..2 {
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(load_64(array_at(
                wb,
                q6_k::SCALES + 8 * half,
            ))));
            let ql0 = load_256(array_at(wb, q6_k::QL + 64 * half));
            let ql1 = load_256(array_at(wb, q6_k::QL + 64 * half + 32));
            let qh = load_256(array_at(wb, q6_k::QH + 32 * half));
            let high = |shifted: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(shifted, low_pair));
            let groups = [
                _mm256_or_si256(_mm256_and_si256(ql0, low_nibbles), high(qh)),
                _mm256_or_si256(_mm256_and_si256(ql1, low_nibbles), high(_mm256_srli_epi16::<2>(qh))),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low_nibbles),
                    high(_mm256_srli_epi16::<4>(qh)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low_nibbles),
                    high(_mm256_srli_epi16::<6>(qh)),
                ),
            ];
            for (g, q) in groups.into_iter().enumerate() {
                let a = load_256(array_at(ab, q8_k::QS + 128 * half + 32 * g));
                let pairs = mul_offset_pairs(q, a, thirty_two);
                let sc = _mm256_shuffle_epi8(scales, picks[g]);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, sc));
            }
        }
        sum += d * hsum_i32(acc) as f32;
    }
    sum
}

/// `pshufb` masks for the 16-value sub-block layouts (Q2_K, Q3_K, Q6_K): group `g` of a half block (32
/// values, two sub-blocks) takes `i16` scale `2g` in the low 128-bit lane and `2g + 1` in the high one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sub_block_pair_picks() -> [__m256i; 4] {
    std::array::from_fn(|g| {
        let g = g as i16;
        let lo = (4 * g + 1) << 8 | (4 * g);
        let hi = (4 * g + 3) << 8 | (4 * g + 2);
        _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
    })
}

/// Eight byte scales (`half` 0: bytes 0..8 of `scales`, 1: bytes 8..16) widened to `i16` in both lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn half_scales_i16(scales: __m128i, half: usize, signed: bool) -> __m128i {
    let bytes = if half == 0 { scales } else { _mm_srli_si128::<8>(scales) };
    if signed {
        _mm_cvtepi8_epi16(bytes)
    } else {
        _mm_cvtepu8_epi16(bytes)
    }
}

/// Q2_K·Q8_K. Per half (128 values): the 2-bit levels of group `g` are bits `2g..` of the 32 `qs` bytes,
/// multiplied with `maddubs` (unsigned levels ≤ 3) and scaled by their two 4-bit sub-block scales with one
/// `madd`; the mins meet the activation group sums in one `madd`. Combined as the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q2_k_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let low_pair = _mm256_set1_epi8(3);
    let low_nibbles = _mm_set1_epi8(0x0f);
    let picks = sub_block_pair_picks();
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q2_k::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; q2_k::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let d_a = f32::from_le_bytes(*array_at(ab, 0));
        let packed = load_128(array_at(wb, q2_k::SCALES));
        let scales = _mm_and_si128(packed, low_nibbles);
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles);
        let bsums = load_256(array_at(ab, q8_k::BSUMS));
        let summ = hsum_i32(_mm256_madd_epi16(bsums, _mm256_cvtepu8_epi16(mins)));
        let mut acc = _mm256_setzero_si256();
        for half in 0..2 {
            let sc = _mm256_broadcastsi128_si256(half_scales_i16(scales, half, false));
            let q = load_256(array_at(wb, q2_k::QS + 32 * half));
            for (g, pick) in picks.iter().enumerate() {
                let levels = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * g as i32)), low_pair);
                let a = load_256(array_at(ab, q8_k::QS + 128 * half + 32 * g));
                let pairs = _mm256_maddubs_epi16(levels, a);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_shuffle_epi8(sc, *pick)));
            }
        }
        let (d_w, dmin_w) = f16_pair_to_f32(array_at(wb, q2_k::D));
        sum += k_block_sum(d_w * d_a, hsum_i32(acc), dmin_w * d_a, summ);
    }
    sum
}

/// Q3_K·Q8_K. Per half: group `g` rebuilt as unsigned 3-bit bytes (two bits from `qs`, the third from bit
/// `4·half + g` of `hmask`), `Σ (q − 4)·a` as `maddubs(q, a) − maddubs(4, a)`, each sub-block pair scaled by
/// its signed scales with one `madd`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q3_k_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let low_pair = _mm256_set1_epi8(3);
    let bit0 = _mm256_set1_epi8(1);
    let four = _mm256_set1_epi8(4);
    let picks = sub_block_pair_picks();
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(q3_k::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; q3_k::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let d = f16_to_f32(array_at(wb, q3_k::D)) * f32::from_le_bytes(*array_at(ab, 0));
        let scales = load_128(&q3_k::unpack_scales(array_at(wb, q3_k::SCALES)).map(|s| s as u8));
        let hmask = load_256(array_at(wb, q3_k::HMASK));
        let mut acc = _mm256_setzero_si256();
        for half in 0..2 {
            let sc = _mm256_broadcastsi128_si256(half_scales_i16(scales, half, true));
            let q = load_256(array_at(wb, q3_k::QS + 32 * half));
            for (g, pick) in picks.iter().enumerate() {
                let low = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * g as i32)), low_pair);
                let bit = (4 * half + g) as i32;
                let high = _mm256_and_si256(_mm256_srl_epi16(hmask, _mm_cvtsi32_si128(bit)), bit0);
                let levels = _mm256_or_si256(low, _mm256_slli_epi16::<2>(high));
                let a = load_256(array_at(ab, q8_k::QS + 128 * half + 32 * g));
                let pairs = mul_offset_pairs(levels, a, four);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_shuffle_epi8(sc, *pick)));
            }
        }
        sum += d * hsum_i32(acc) as f32;
    }
    sum
}

/// `Σ a·w` over 32 byte pairs of signed activations `a` (any i8, −128 included) and signed levels `w` in
/// −127..=127 as sixteen exact `i16` pair sums: `maddubs(|a|, sign(w, a))`. `|a|` is at most 128 as an
/// unsigned byte (−128 too), `w·sign(a)` never overflows because `w` is never −128, and pair sums stay within
/// 2·128·127 < 2¹⁵.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_pairs(a: __m256i, w: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a))
}

/// The 32 levels of one IQ4_NL-style block (16 index bytes, value `j` low nibble, `j + 16` high) looked up
/// in `table` by byte shuffle, in value order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn table_levels(table: __m128i, qs: &[u8; 16]) -> __m256i {
    let packed = load_128(qs);
    let low_nibbles = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(packed, low_nibbles));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles));
    _mm256_set_m128i(hi, lo)
}

/// IQ4_XS·Q8_K: per 32-value sub-block the levels by table shuffle, multiplied exactly with
/// [`signed_pairs`] and scaled by the sub-block scale with one `madd`; the block's exact `i32` total times
/// `d_w·d_a`, as in the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_iq4_xs_q8_k(w: &[u8], act: &[u8]) -> f32 {
    let table = load_128(&iq4_nl::LEVELS.map(|v| v as u8));
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(iq4_xs::BLOCK_BYTES).zip(act.chunks_exact(q8_k::BLOCK_BYTES)) {
        let wb: &[u8; iq4_xs::BLOCK_BYTES] = array_at(wb, 0);
        let ab: &[u8; q8_k::BLOCK_BYTES] = array_at(ab, 0);
        let block = iq4_xs::BlockIq4Xs(wb);
        let d = block.d() * f32::from_le_bytes(*array_at(ab, 0));
        let mut acc = _mm256_setzero_si256();
        for (s, scale) in block.scales().into_iter().enumerate() {
            let levels = table_levels(table, block.qs(s));
            let pairs = signed_pairs(load_256(array_at(ab, q8_k::QS + 32 * s)), levels);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(scale as i16)));
        }
        sum += d * hsum_i32(acc) as f32;
    }
    sum
}

// ---------------------------------------------------------------- activation quantizers

/// Largest |x| over the lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax_f32(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Packs four vectors of eight `i32` (each within −128..=127) into 32 bytes in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i32x32_to_i8(v: [__m256i; 4]) -> __m256i {
    // packs works within 128-bit lanes; the final permute restores element order.
    let ab = _mm256_packs_epi32(v[0], v[1]);
    let cd = _mm256_packs_epi32(v[2], v[3]);
    let bytes = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_256(out: &mut [u8; 32], v: __m256i) {
    // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
}

/// Eight `f32` read from 32 bytes of `x` starting at value `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_values(x: &[f32; 32], i: usize) -> __m256 {
    let chunk: &[f32; 8] = x[i..i + 8].try_into().expect("eight values");
    // SAFETY: `chunk` is eight readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
}

/// [`crate::formats::q8_0::quantize`], byte for byte: the scale is rounded to f16 with
/// `vcvtps2ph` (round to nearest even, like `half`) and the quants with C's `roundf`
/// (half away from zero), emulated exactly as `trunc(v) ± 1` when `|v − trunc(v)| ≥ ½`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    let sign_bit = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let x: &[f32; 32] = x.try_into().expect("one block");
        let out: &mut [u8; 34] = out.try_into().expect("one block");
        let v = [0, 8, 16, 24].map(|i| load_values(x, i));
        let abs = v.map(|v| _mm256_andnot_ps(sign_bit, v));
        let amax = hmax_f32(_mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3])));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(q8_0::inverse_scale(d));
        let d_bits = _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d)));
        out[..2].copy_from_slice(&(d_bits as u16).to_le_bytes());
        let q = v.map(|v| {
            let scaled = _mm256_mul_ps(v, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(scaled);
            let frac = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(scaled, t));
            let bump = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
            let rounded = _mm256_add_ps(t, _mm256_or_ps(bump, _mm256_and_ps(scaled, sign_bit)));
            _mm256_cvttps_epi32(rounded)
        });
        store_256(array_at_mut(out, 2), pack_i32x32_to_i8(q));
    }
}

/// [`crate::formats::q8_k::quantize`], byte for byte: the signed value of the first
/// largest |x| sets `iscale = −127/max`, quants are rounded to nearest even (what
/// ggml's `nearest_int` does) and the group sums come from the `i32` quants.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let sign_bit = _mm256_set1_ps(-0.0);
    for (x, out) in src.chunks_exact(256).zip(dst.chunks_exact_mut(q8_k::BLOCK_BYTES)) {
        let out: &mut [u8; q8_k::BLOCK_BYTES] = out.try_into().expect("one block");
        let chunks: [&[f32; 32]; 8] =
            std::array::from_fn(|c| x[32 * c..32 * c + 32].try_into().expect("32 values"));
        let mut vmax = _mm256_setzero_ps();
        for chunk in chunks {
            for i in [0, 8, 16, 24] {
                vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign_bit, load_values(chunk, i)));
            }
        }
        let amax = hmax_f32(vmax);
        if amax == 0.0 {
            out.fill(0);
            continue;
        }
        // ggml keeps the first value reaching the maximum magnitude, with its sign.
        let max = *x.iter().find(|v| v.abs() == amax).expect("amax is attained");
        let iscale = -127.0 / max;
        if !iscale.is_finite() {
            out.fill(0);
            continue;
        }
        let scale = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        let mut group_sums = [0i32; 16];
        for (c, chunk) in chunks.iter().enumerate() {
            let q = [0, 8, 16, 24].map(|i| {
                let v = _mm256_cvtps_epi32(_mm256_mul_ps(load_values(chunk, i), scale));
                _mm256_min_epi32(v, cap)
            });
            store_256(array_at_mut(out, q8_k::QS + 32 * c), pack_i32x32_to_i8(q));
            group_sums[2 * c] = hsum_i32(_mm256_add_epi32(q[0], q[1]));
            group_sums[2 * c + 1] = hsum_i32(_mm256_add_epi32(q[2], q[3]));
        }
        for (g, sum) in group_sums.iter().enumerate() {
            let at = q8_k::BSUMS + 2 * g;
            out[at..at + 2].copy_from_slice(&(*sum as i16).to_le_bytes());
        }
        out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// Borrows `N` bytes at `off` mutably as a fixed-size array.
#[inline]
fn array_at_mut<const N: usize>(bytes: &mut [u8], off: usize) -> &mut [u8; N] {
    (&mut bytes[off..off + N]).try_into().expect("range has length N")
}

// ---------------------------------------------------------------- axpy (attention values)

/// `y += alpha·x` for `f32` values `x` (little-endian bytes): eight lanes at a time, the
/// tail scalar; every element is one `f32` fused multiply-add.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_f32(alpha: f32, x: &[u8], y: &mut [f32]) {
    let a = _mm256_set1_ps(alpha);
    let (xc, yc) = (x.chunks_exact(32), y.chunks_exact_mut(8));
    let x_tail = xc.remainder();
    let mut y_iter = yc;
    for (xb, yb) in xc.zip(&mut y_iter) {
        let yb: &mut [f32; 8] = yb.try_into().expect("eight values");
        // SAFETY: `yb` is eight readable and writable f32; `loadu`/`storeu` have no
        // alignment requirement.
        unsafe {
            let v = _mm256_fmadd_ps(a, load_f32x8(array_at(xb, 0)), _mm256_loadu_ps(yb.as_ptr()));
            _mm256_storeu_ps(yb.as_mut_ptr(), v);
        }
    }
    for (xb, yv) in x_tail.chunks_exact(4).zip(y_iter.into_remainder()) {
        *yv = alpha.mul_add(f32::from_le_bytes(*array_at(xb, 0)), *yv);
    }
}

/// `y += alpha·x` for half-precision `x` (little-endian bytes), widened with `vcvtph2ps`;
/// every element is one `f32` fused multiply-add.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_f16(alpha: f32, x: &[u8], y: &mut [f32]) {
    let a = _mm256_set1_ps(alpha);
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact_mut(8));
    let x_tail = xc.remainder();
    let mut y_iter = yc;
    for (xb, yb) in xc.zip(&mut y_iter) {
        let yb: &mut [f32; 8] = yb.try_into().expect("eight values");
        let xv = _mm256_cvtph_ps(load_128(array_at(xb, 0)));
        // SAFETY: `yb` is eight readable and writable f32; `loadu`/`storeu` have no
        // alignment requirement.
        unsafe {
            let v = _mm256_fmadd_ps(a, xv, _mm256_loadu_ps(yb.as_ptr()));
            _mm256_storeu_ps(yb.as_mut_ptr(), v);
        }
    }
    for (xb, yv) in x_tail.chunks_exact(2).zip(y_iter.into_remainder()) {
        *yv = alpha.mul_add(f16_to_f32(array_at(xb, 0)), *yv);
    }
}

// ---------------------------------------------------------------- attention rows

/// `out[t] = scale · dot(rows[t], q)` where row `t` is the `q.len() / 4` values of `dtype`
/// (F32 or F16) at byte `t·stride`: [`dot_f32`] / [`dot_f16_f32`] per row, without a
/// dispatch per row. Lengths are checked by the caller.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_rows(f16: bool, q: &[u8], rows: &[u8], stride: usize, scale: f32, out: &mut [f32]) {
    let row_bytes = q.len() / if f16 { 2 } else { 1 };
    for (t, o) in out.iter_mut().enumerate() {
        let row = &rows[t * stride..t * stride + row_bytes];
        *o = if f16 { dot_f16_f32(row, q) } else { dot_f32(row, q) } * scale;
    }
}

/// `y = fma(p[t], rows[t], y)` for t in order, where row `t` is the `y.len()` values of
/// `dtype` at byte `t·stride`: the same operations as [`axpy_f32`] / [`axpy_f16`] row after row,
/// but `y` stays in registers, 64 columns at a time, for all rows (instead of being loaded and
/// stored once per row). Lengths are checked by the caller.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_rows(f16: bool, p: &[f32], rows: &[u8], stride: usize, y: &mut [f32]) {
    if f16 {
        axpy_rows_of::<true>(p, rows, stride, y)
    } else {
        axpy_rows_of::<false>(p, rows, stride, y)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_rows_of<const F16: bool>(p: &[f32], rows: &[u8], stride: usize, y: &mut [f32]) {
    const COLS: usize = 64;
    let value_bytes = if F16 { 2 } else { 4 };
    let full = y.len() / COLS * COLS;
    for c0 in (0..full).step_by(COLS) {
        let yb: &mut [f32; COLS] = (&mut y[c0..c0 + COLS]).try_into().expect("64 values");
        // SAFETY: `yb` is 64 readable f32; `loadu` has no alignment requirement.
        let mut acc: [__m256; 8] =
            std::array::from_fn(|j| unsafe { _mm256_loadu_ps(yb.as_ptr().add(8 * j)) });
        for (t, &pt) in p.iter().enumerate() {
            let a = _mm256_set1_ps(pt);
            let row = &rows[t * stride + c0 * value_bytes..][..COLS * value_bytes];
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = if F16 {
                    _mm256_cvtph_ps(load_128(array_at(row, 16 * j)))
                } else {
                    load_f32x8(array_at(row, 32 * j))
                };
                *acc = _mm256_fmadd_ps(a, x, *acc);
            }
        }
        for (j, v) in acc.into_iter().enumerate() {
            // SAFETY: `yb` is 64 writable f32; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(yb.as_mut_ptr().add(8 * j), v) };
        }
    }
    if full < y.len() {
        let tail = &mut y[full..];
        for (t, &pt) in p.iter().enumerate() {
            let row = &rows[t * stride + full * value_bytes..][..tail.len() * value_bytes];
            if F16 {
                axpy_f16(pt, row, tail)
            } else {
                axpy_f32(pt, row, tail)
            }
        }
    }
}

/// [`crate::widen_rows`] for F16: row `t` (`n` halves at byte `t·stride` of `src`) widened into
/// `dst[t·4n..]` as `f32` bytes, eight halves at a time with `vcvtph2ps`. Lengths are checked by the caller.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn widen_f16_rows(src: &[u8], stride: usize, n: usize, dst: &mut [u8]) {
    for (t, out) in dst.chunks_exact_mut(4 * n).enumerate() {
        let row = &src[t * stride..t * stride + 2 * n];
        let (whole, tail) = (row.chunks_exact(16), row.chunks_exact(16).remainder());
        let mut outs = out.chunks_exact_mut(32);
        for (h, o) in whole.zip(&mut outs) {
            let v = _mm256_cvtph_ps(load_128(array_at(h, 0)));
            // SAFETY: `o` is 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().cast(), v) };
        }
        for (h, o) in tail.chunks_exact(2).zip(outs.into_remainder().chunks_exact_mut(4)) {
            o.copy_from_slice(&f16_to_f32(array_at(h, 0)).to_le_bytes());
        }
    }
}

/// Widens halves (little-endian bytes) to `f32`, eight at a time with `vcvtph2ps` (exact, as the
/// scalar conversion; NaNs stay NaNs).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (see [`crate::x86::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    let (sc, dc) = (src.chunks_exact(16), dst.chunks_exact_mut(8));
    let s_tail = sc.remainder();
    let mut d_iter = dc;
    for (sb, db) in sc.zip(&mut d_iter) {
        let v = _mm256_cvtph_ps(load_128(array_at(sb, 0)));
        // SAFETY: `db` is eight writable f32; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(db.as_mut_ptr(), v) };
    }
    for (sb, d) in s_tail.chunks_exact(2).zip(d_iter.into_remainder()) {
        *d = f16_to_f32(array_at(sb, 0));
    }
}
