//! AVX-512 versions of [`crate::norm_rope`]'s kernels, the scalar references' results bit for bit: the sum of
//! squares keeps the sixteen f64 lanes in two vectors, the rest is one operation per value as in the scalar
//! code. Tails past the last whole sixteen run the scalar code.

use std::arch::x86_64::*;

use crate::norm_rope::{self, LANES};

/// See [`norm_rope::sum_squares`].
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub fn sum_squares(x: &[f32]) -> f64 {
    let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let whole = x.len() / LANES * LANES;
    for c in x[..whole].chunks_exact(LANES) {
        // SAFETY: `c` is sixteen readable f32; `loadu` has no alignment requirement.
        let (a, b) = unsafe { (_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(c.as_ptr().add(8))) };
        let (a, b) = (_mm512_cvtps_pd(a), _mm512_cvtps_pd(b));
        // x² is exact in f64, so the fused multiply-add rounds once, like the scalar `lane + v * v`
        lo = _mm512_fmadd_pd(a, a, lo);
        hi = _mm512_fmadd_pd(b, b, hi);
    }
    let mut lanes = [0.0f64; LANES];
    // SAFETY: `lanes` is sixteen writable f64.
    unsafe {
        _mm512_storeu_pd(lanes.as_mut_ptr(), lo);
        _mm512_storeu_pd(lanes.as_mut_ptr().add(8), hi);
    }
    norm_rope::add_squares(&mut lanes, whole, &x[whole..]);
    norm_rope::fold_lanes(&lanes)
}

/// See [`norm_rope::scale_mul`]. `w` has at least `x.len()` values (else it panics).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub fn scale_mul(x: &mut [f32], scale: f32, w: &[f32]) {
    let whole = x.len() / 16 * 16;
    let s = _mm512_set1_ps(scale);
    for (c, w) in x[..whole].chunks_exact_mut(16).zip(w.chunks_exact(16)) {
        // SAFETY: `c` and `w` are sixteen f32 each; no alignment requirement.
        unsafe {
            let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), s), _mm512_loadu_ps(w.as_ptr()));
            _mm512_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    norm_rope::scale_mul_scalar(&mut x[whole..], scale, &w[whole..]);
}

/// See [`norm_rope::rope_turn`]. `hi`, `cos` and `sin` have at least `lo.len()` values (else it panics).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub fn rope_turn(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    // the pointer arithmetic below relies on these lengths (a short slice panics here, never reads past)
    let n = lo.len();
    let (hi, cos, sin) = (&mut hi[..n], &cos[..n], &sin[..n]);
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= whole <= len` for all four slices; no alignment requirement.
        unsafe {
            let (a, b) = (_mm512_loadu_ps(lo.as_ptr().add(i)), _mm512_loadu_ps(hi.as_ptr().add(i)));
            let (c, s) = (_mm512_loadu_ps(cos.as_ptr().add(i)), _mm512_loadu_ps(sin.as_ptr().add(i)));
            _mm512_storeu_ps(lo.as_mut_ptr().add(i), _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
            _mm512_storeu_ps(hi.as_mut_ptr().add(i), _mm512_add_ps(_mm512_mul_ps(a, s), _mm512_mul_ps(b, c)));
        }
    }
    norm_rope::rope_turn_scalar(&mut lo[whole..], &mut hi[whole..], &cos[whole..], &sin[whole..]);
}
