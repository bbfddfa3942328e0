//! AVX2 versions of [`crate::norm_rope`]'s kernels, the scalar references' results bit for bit: the sum of
//! squares keeps the sixteen f64 lanes in four vectors, the rest is one operation per value as in the scalar
//! code. Tails past the last whole sixteen (or eight) run the scalar code.

use std::arch::x86_64::*;

use crate::norm_rope::{self, LANES};

/// See [`norm_rope::sum_squares`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub fn sum_squares(x: &[f32]) -> f64 {
    let mut acc = [_mm256_setzero_pd(); 4];
    let whole = x.len() / LANES * LANES;
    for c in x[..whole].chunks_exact(LANES) {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `c` is sixteen readable f32, so `4j..4j+4` is in bounds; no alignment requirement.
            let v = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(c.as_ptr().add(4 * j)) });
            // x² is exact in f64, so the fused multiply-add rounds once, like the scalar `lane + v * v`
            *acc = _mm256_fmadd_pd(v, v, *acc);
        }
    }
    let mut lanes = [0.0f64; LANES];
    for (j, acc) in acc.iter().enumerate() {
        // SAFETY: lanes `4j..4j+4` are writable.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * j), *acc) };
    }
    norm_rope::add_squares(&mut lanes, whole, &x[whole..]);
    norm_rope::fold_lanes(&lanes)
}

/// See [`norm_rope::scale_mul`]. `w` has at least `x.len()` values (else it panics).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub fn scale_mul(x: &mut [f32], scale: f32, w: &[f32]) {
    let whole = x.len() / 8 * 8;
    let s = _mm256_set1_ps(scale);
    for (c, w) in x[..whole].chunks_exact_mut(8).zip(w.chunks_exact(8)) {
        // SAFETY: `c` and `w` are eight f32 each; no alignment requirement.
        unsafe {
            let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), s), _mm256_loadu_ps(w.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    norm_rope::scale_mul_scalar(&mut x[whole..], scale, &w[whole..]);
}

/// See [`norm_rope::rope_turn`]. `hi`, `cos` and `sin` have at least `lo.len()` values (else it panics).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub fn rope_turn(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    // the pointer arithmetic below relies on these lengths (a short slice panics here, never reads past)
    let n = lo.len();
    let (hi, cos, sin) = (&mut hi[..n], &cos[..n], &sin[..n]);
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= whole <= len` for all four slices; no alignment requirement.
        unsafe {
            let (a, b) = (_mm256_loadu_ps(lo.as_ptr().add(i)), _mm256_loadu_ps(hi.as_ptr().add(i)));
            let (c, s) = (_mm256_loadu_ps(cos.as_ptr().add(i)), _mm256_loadu_ps(sin.as_ptr().add(i)));
            _mm256_storeu_ps(lo.as_mut_ptr().add(i), _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(hi.as_mut_ptr().add(i), _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)));
        }
    }
    norm_rope::rope_turn_scalar(&mut lo[whole..], &mut hi[whole..], &cos[whole..], &sin[whole..]);
}
