//! The element-wise parts of RMSNorm and RoPE: the sum of squares, the scaling by the norm and the weight,
//! and the rotation of one head's pairs. Scalar references here, AVX2 and AVX-512 versions in
//! `x86::{avx2,avx512}_norm_rope`, all giving the same bits.
//!
//! The sum of squares is the one reduction. It runs in f64 (every `x²` of an f32 is exact there, and the sum
//! keeps 29 more bits than an f32 one; llama.cpp also sums in double, of squares rounded to f32) over sixteen lanes: value `i` goes to
//! lane `i % 16`, each lane adds its values in order, and the lanes are added 0 to 15 at the end. The vector
//! versions keep exactly those sixteen lanes in registers, so every ISA gives the same sum bit for bit.
//! The scaling and the rotation are one multiply (or a multiply and an add) per value, the same operations
//! in the same order as the scalar code (no fused multiply-adds), so they match trivially.

use crate::dispatch::{self, Isa, IsaKind};
#[cfg(target_arch = "x86_64")]
use crate::x86;

/// Lanes of [`sum_squares`]: one 512-bit f32 load widened to two f64 vectors.
pub const LANES: usize = 16;

/// `Σ x[i]²` in f64, lane by lane as the module docs say.
pub fn sum_squares(x: &[f32]) -> f64 {
    sum_squares_with(dispatch::isa(), x)
}

/// [`sum_squares`] with an explicit instruction set, for tests.
pub fn sum_squares_with(isa: Isa, x: &[f32]) -> f64 {
    match isa.kind() {
        IsaKind::Scalar => sum_squares_scalar(x),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected, so it has AVX2 and FMA.
        IsaKind::Avx2 => unsafe { x86::avx2_norm_rope::sum_squares(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected, so it has AVX-512 F.
        IsaKind::Avx512 => unsafe { x86::avx512_norm_rope::sum_squares(x) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => sum_squares_scalar(x),
    }
}

/// The scalar reference of [`sum_squares`].
pub fn sum_squares_scalar(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    add_squares(&mut lanes, 0, x);
    fold_lanes(&lanes)
}

/// Adds the squares of `x` (values `first..` of the whole vector) into their lanes, in order. The vector
/// versions use it for the tail past the last whole sixteen.
pub(crate) fn add_squares(lanes: &mut [f64; LANES], first: usize, x: &[f32]) {
    for (i, &v) in x.iter().enumerate() {
        let v = v as f64;
        lanes[(first + i) % LANES] += v * v;
    }
}

/// The lanes added in order 0 to 15.
pub(crate) fn fold_lanes(lanes: &[f64; LANES]) -> f64 {
    lanes.iter().fold(0.0, |sum, &l| sum + l)
}

/// `x[i] = x[i] · scale · w[i]` (the multiplications in that order), RMSNorm's last step.
pub fn scale_mul(x: &mut [f32], scale: f32, w: &[f32]) {
    scale_mul_with(dispatch::isa(), x, scale, w)
}

/// [`scale_mul`] with an explicit instruction set, for tests. Panics if `w` is shorter than `x`.
pub fn scale_mul_with(isa: Isa, x: &mut [f32], scale: f32, w: &[f32]) {
    let w = &w[..x.len()];
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected; `w` is as long as `x`.
        IsaKind::Avx2 => unsafe { x86::avx2_norm_rope::scale_mul(x, scale, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX-512 F.
        IsaKind::Avx512 => unsafe { x86::avx512_norm_rope::scale_mul(x, scale, w) },
        _ => scale_mul_scalar(x, scale, w),
    }
}

/// The scalar reference of [`scale_mul`].
pub fn scale_mul_scalar(x: &mut [f32], scale: f32, w: &[f32]) {
    for (v, &w) in x.iter_mut().zip(w) {
        *v = *v * scale * w;
    }
}

/// RoPE's rotation of one head in NEOX layout: `lo[i], hi[i] = lo·cos − hi·sin, lo·sin + hi·cos` (each product
/// rounded, then the sum), `i` over `lo.len()`.
pub fn rope_turn(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_turn_with(dispatch::isa(), lo, hi, cos, sin)
}

/// [`rope_turn`] with an explicit instruction set, for tests. Panics if `hi`, `cos` or `sin` is shorter
/// than `lo`.
pub fn rope_turn_with(isa: Isa, lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    let n = lo.len();
    let (hi, cos, sin) = (&mut hi[..n], &cos[..n], &sin[..n]);
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected; all four slices have `n` values.
        IsaKind::Avx2 => unsafe { x86::avx2_norm_rope::rope_turn(lo, hi, cos, sin) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX-512 F.
        IsaKind::Avx512 => unsafe { x86::avx512_norm_rope::rope_turn(lo, hi, cos, sin) },
        _ => rope_turn_scalar(lo, hi, cos, sin),
    }
}

/// The scalar reference of [`rope_turn`].
pub fn rope_turn_scalar(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    for i in 0..lo.len() {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = a * sin[i] + b * cos[i];
    }
}
