//! AVX-512 versions of the attention row kernels (`avx2::dot_rows`, `avx2::axpy_rows`) for f32 rows, the
//! form every KV chunk reaches them in (f16 and q8_0 caches are widened first).
//!
//! Each 512-bit vector holds exactly two of the AVX2 kernels' 8-lane accumulators side by side, so every
//! lane sees the same fused multiply-adds in the same order and the final sums are added in the same
//! order: the results are the AVX2 kernels' bit for bit (tested), with half the instructions. That matters
//! because attention scores decide near-tie tokens: a different summation order changed the real model's
//! greedy agreement with llama.cpp before (see benches/RESULTS.md).

use std::arch::x86_64::*;

use crate::formats::array_at;
use crate::x86::avx2;

/// Sixteen little-endian f32.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_f32x16(bytes: &[u8; 64]) -> __m512 {
    // SAFETY: `bytes` is 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(bytes.as_ptr().cast()) }
}

/// `out[t] = scale · dot(rows[t], q)` for f32 rows of `q.len() / 4` values at byte `t·stride`, as
/// `avx2::dot_rows` computes them: per 32 values, four 8-lane FMA accumulators (here two 16-lane
/// ones), then `(acc0 + acc1) + (acc2 + acc3)` and the same horizontal sum. Rows whose length is not a
/// multiple of 32 values go to the AVX2 kernel. Lengths are checked by the caller.
///
/// # Safety
/// The CPU must support AVX-512 F on top of AVX2, FMA and F16C (see [`crate::x86::has_avx512`]).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub fn dot_rows_f32(q: &[u8], rows: &[u8], stride: usize, scale: f32, out: &mut [f32]) {
    if !q.len().is_multiple_of(128) {
        return avx2::dot_rows(false, q, rows, stride, scale, out);
    }
    for (t, o) in out.iter_mut().enumerate() {
        let row = &rows[t * stride..t * stride + q.len()];
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for (r, a) in row.chunks_exact(128).zip(q.chunks_exact(128)) {
            lo = _mm512_fmadd_ps(load_f32x16(array_at(r, 0)), load_f32x16(array_at(a, 0)), lo);
            hi = _mm512_fmadd_ps(load_f32x16(array_at(r, 64)), load_f32x16(array_at(a, 64)), hi);
        }
        // (acc0 + acc1) + (acc2 + acc3), acc0/acc1 the halves of `lo`, acc2/acc3 those of `hi`
        let half = |v: __m512, upper: bool| {
            let d = _mm512_castps_pd(v);
            let h = if upper { _mm512_extractf64x4_pd::<1>(d) } else { _mm512_castpd512_pd256(d) };
            _mm256_castpd_ps(h)
        };
        let sum = _mm256_add_ps(
            _mm256_add_ps(half(lo, false), half(lo, true)),
            _mm256_add_ps(half(hi, false), half(hi, true)),
        );
        *o = avx2::hsum_f32(sum) * scale;
    }
}

/// `y = fma(p[t], rows[t], y)` for t in order, f32 rows of `y.len()` values at byte `t·stride`, as
/// `avx2::axpy_rows` computes it; `y` stays in registers 128 columns at a time (one 128-wide attention head
/// in eight vectors). Columns past the last whole 64 go to the AVX2 kernel. Lengths are checked by the caller.
///
/// # Safety
/// As [`dot_rows_f32`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub fn axpy_rows_f32(p: &[f32], rows: &[u8], stride: usize, y: &mut [f32]) {
    if p.is_empty() {
        return; // no rows (and `rows` may then be shorter than one)
    }
    let mut c0 = 0;
    while c0 + 128 <= y.len() {
        axpy_cols::<8>(p, rows, stride, &mut y[c0..c0 + 128], c0);
        c0 += 128;
    }
    if c0 + 64 <= y.len() {
        axpy_cols::<4>(p, rows, stride, &mut y[c0..c0 + 64], c0);
        c0 += 64;
    }
    if c0 < y.len() {
        // row t's columns c0.. start at byte t·stride of `rows[c0 * 4..]`
        avx2::axpy_rows(false, p, &rows[c0 * 4..], stride, &mut y[c0..]);
    }
}

/// Columns `c0..c0 + 16·V` of [`axpy_rows_f32`], held in `V` vectors across all rows.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn axpy_cols<const V: usize>(p: &[f32], rows: &[u8], stride: usize, y: &mut [f32], c0: usize) {
    assert_eq!(y.len(), 16 * V);
    // SAFETY: `y` holds 16·V readable f32; `loadu` has no alignment requirement.
    let mut acc: [__m512; V] = std::array::from_fn(|j| unsafe { _mm512_loadu_ps(y.as_ptr().add(16 * j)) });
    for (t, &pt) in p.iter().enumerate() {
        let a = _mm512_set1_ps(pt);
        let row = &rows[t * stride + 4 * c0..][..64 * V];
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(a, load_f32x16(array_at(row, 64 * j)), *acc);
        }
    }
    for (j, v) in acc.into_iter().enumerate() {
        // SAFETY: `y` holds 16·V writable f32; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(16 * j), v) };
    }
}
