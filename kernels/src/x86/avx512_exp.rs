//! `e^x` for sixteen `f32` at a time, bit-identical to glibc's `expf` (the FMA variant x86-64 glibc 2.27+
//! runs on CPUs with FMA, which is what `f32::exp` calls there).
//!
//! Why identical rather than merely accurate: SwiGLU and the attention softmax call `e^x` about 300 million
//! times per 512-token prompt (4 % of prefill through libm), and a vectorized `e^x` that was within 3 ulp
//! of libm moved the real model's greedy agreement with llama.cpp from 4/5 prompts to 3/5 (near-tie tokens;
//! see benches/RESULTS.md). So this follows the same steps in double precision, operation for operation
//! (read from the library's disassembly; the method is the classic table-driven one):
//! `k = round(x·32/ln 2)`, `r = x·32/ln 2 − k`, `e^x = 2^(k/32) · p(r)` with a 32-entry table of `2^(i/32)`
//! and a cubic `p`, then one rounding to `f32`. Inputs with |x| ≥ 88 or NaN (overflow, underflow and the
//! special values, which libm handles on a separate path) go to libm one by one.

use std::arch::x86_64::*;

/// 32/ln 2.
const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// Adding 1.5·2^52 rounds a double of magnitude below 2^51 to an integer (ties to even) in its low bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic's coefficients: `p(r) = (C0·r + C1)·r² + (C2·r + 1)`.
const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);

/// `bits(2^(i/32)) − i·2^47` for i in 0..32: adding `k·2^47` to entry `k mod 32` puts `k div 32` into the
/// exponent, giving `2^(k/32)` (wrapping arithmetic on the bits).
pub(crate) const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `e^x` of eight values widened to double, for lanes with |x| < 88.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
fn exp8(x: __m256) -> __m256 {
    let xd = _mm512_cvtps_pd(x);
    let inv = _mm512_set1_pd(INV_LN2_N);
    let shift = _mm512_set1_pd(SHIFT);
    // k + 1.5·2^52 = fma(32/ln 2, x, shift); its low bits are k
    let kd_shifted = _mm512_fmadd_pd(inv, xd, shift);
    let ki = _mm512_castpd_si512(kd_shifted);
    let kd = _mm512_sub_pd(kd_shifted, shift);
    // r = 32/ln 2 · x − k, one rounding
    let r = _mm512_fmsub_pd(inv, xd, kd);
    let index = _mm512_and_si512(ki, _mm512_set1_epi64(31));
    // SAFETY: every index is in 0..32, the table's length; the gather reads 8-byte entries (scale 8).
    let t = unsafe { _mm512_i64gather_epi64::<8>(index, TABLE.as_ptr().cast()) };
    let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
    let z = _mm512_fmadd_pd(r, _mm512_set1_pd(C0), _mm512_set1_pd(C1));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, _mm512_set1_pd(C2), _mm512_set1_pd(1.0));
    let y = _mm512_fmadd_pd(z, r2, y);
    _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
}

/// `x[i] = e^x[i]` for every value, as `f32::exp` (glibc) would give them.
///
/// # Safety
/// The CPU must support AVX-512 F and VL (see [`crate::x86::has_avx512`]).
#[target_feature(enable = "avx512f,avx512vl")]
pub fn exp_in_place(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let c: &mut [f32; 16] = c.try_into().expect("16 values");
        let orig = *c;
        // SAFETY: `orig` is 16 readable f32; `loadu` has no alignment requirement.
        let v = unsafe { _mm512_loadu_ps(orig.as_ptr()) };
        // |x| ≥ 88 or NaN: libm's separate path (the same test as libm's: exponent and top mantissa bits)
        let top = _mm512_and_si512(_mm512_srli_epi32::<20>(_mm512_castps_si512(v)), _mm512_set1_epi32(0x7ff));
        let special = _mm512_cmpgt_epi32_mask(top, _mm512_set1_epi32(0x42a));
        let lo = exp8(_mm512_castps512_ps256(v));
        let hi = exp8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
        let e = _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi));
        // SAFETY: `c` is 16 writable f32; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), _mm512_castpd_ps(e)) };
        if special != 0 {
            for (i, (v, x)) in c.iter_mut().zip(orig).enumerate() {
                if special & (1 << i) != 0 {
                    *v = x.exp();
                }
            }
        }
    }
    for v in chunks.into_remainder() {
        *v = v.exp();
    }
}

#[cfg(test)]
mod tests {
    /// The table holds `2^(i/32)`, as the wrapping offset form says.
    #[test]
    fn table_is_powers_of_two() {
        for (i, &t) in super::TABLE.iter().enumerate() {
            let want = (i as f64 / 32.0).exp2().to_bits().wrapping_sub((i as u64) << 47);
            assert_eq!(t, want, "entry {i}");
        }
    }
}
