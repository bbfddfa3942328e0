//! `axpy` (the attention value sum): every instruction set gives the scalar result bit
//! for bit (one fused multiply-add per element), for every length and extreme inputs.

mod common;

use quire_kernels::dispatch::Isa;
use quire_kernels::{axpy_with, DType};

#[test]
fn simd_axpy_equals_scalar() {
    let mut rng = common::rng(21);
    for dtype in [DType::F32, DType::F16] {
        for n in [1, 7, 8, 9, 15, 16, 17, 64, 128, 131] {
            for (alpha, scale) in [(0.37f32, 1.0f32), (-3e4, 2.0), (1e-30, 6e4), (0.0, 1.0)] {
                let x = common::quantize(dtype, &common::random_values(&mut rng, n, scale));
                let y0 = common::random_values(&mut rng, n, 5.0);
                let mut want = y0.clone();
                axpy_with(Isa::SCALAR, dtype, alpha, &x, &mut want);
                let xs = common::dequantize(dtype, &x, n);
                for ((w, y), xv) in want.iter().zip(&y0).zip(&xs) {
                    assert_eq!(w.to_bits(), alpha.mul_add(*xv, *y).to_bits());
                }
                for isa in common::simd_isas() {
                    let mut got = y0.clone();
                    axpy_with(isa, dtype, alpha, &x, &mut got);
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{dtype} n={n} alpha={alpha} {isa}");
                }
            }
        }
    }
}

/// The strided row helpers of attention equal one `vec_dot` / `axpy` per row, bit for bit.
#[test]
fn row_helpers_equal_one_call_per_row() {
    use quire_kernels::{axpy, axpy_rows, dot_rows, vec_dot};
    let mut rng = common::rng(22);
    for dtype in [DType::F32, DType::F16] {
        for (hd, n, pad) in [(128usize, 37usize, 3usize), (64, 1, 0), (8, 5, 1), (200, 9, 2)] {
            let es = dtype.block_bytes();
            let stride = (hd + pad) * es;
            let rows = common::quantize(dtype, &common::random_values(&mut rng, n * (hd + pad), 3.0));
            let q: Vec<u8> =
                common::random_values(&mut rng, hd, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut scores = vec![0.0f32; n];
            dot_rows(dtype, &q, &rows, stride, 0.125, &mut scores);
            for (t, s) in scores.iter().enumerate() {
                let want = vec_dot(dtype, hd, &rows[t * stride..t * stride + hd * es], &q) * 0.125;
                assert_eq!(s.to_bits(), want.to_bits(), "{dtype} hd={hd} row {t}");
            }
            let mut y = common::random_values(&mut rng, hd, 1.0);
            let mut want = y.clone();
            axpy_rows(dtype, &scores, &rows, stride, &mut y);
            for (t, &p) in scores.iter().enumerate() {
                axpy(dtype, p, &rows[t * stride..t * stride + hd * es], &mut want);
            }
            assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype} hd={hd}");
        }
    }
}

/// F16 rows widen to exactly the scalar conversion's floats on every instruction set (the attention
/// chunks and F16 embeddings go through `dequantize_row`): all 65536 halves, NaNs included, at every
/// tail length.
#[test]
fn f16_rows_widen_exactly() {
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for n in [65536usize, 1, 7, 8, 9, 23] {
        let src = &all[2 * (65536 - n)..];
        let mut got = vec![0.0f32; n];
        quire_kernels::dequantize_row(DType::F16, src, &mut got);
        let mut want = vec![0.0f32; n];
        quire_kernels::formats::f16::dequantize(src, &mut want);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "n={n} value {i}: {g} vs {w}");
        }
    }
}

/// `widen_rows` (a chunk of cached keys or values at once) gives exactly `dequantize_row` of each row, as f32
/// bytes, for F16 and Q8_0 rows at a stride wider than a row, on every instruction set, at widths with and
/// without a tail of fewer than eight halves.
#[test]
fn widen_rows_equals_dequantize_row_by_row() {
    let mut rng = common::rng(31);
    let mut checked = 0;
    for (dtype, n) in
        [(DType::F16, 128usize), (DType::F16, 44), (DType::F16, 3), (DType::Q8_0, 128), (DType::Q8_0, 32)]
    {
        let row_bytes = dtype.row_bytes(n).unwrap();
        for len in [1usize, 7, 64] {
            let stride = row_bytes * 3 + 10;
            let values = common::random_values(&mut rng, n, 3.0);
            let mut src = vec![0u8; (len - 1) * stride + row_bytes];
            for t in 0..len {
                let scaled: Vec<f32> = values.iter().map(|v| v * (t as f32 + 0.5)).collect();
                quire_kernels::quantize_row(dtype, &scaled, &mut src[t * stride..t * stride + row_bytes]);
            }
            let mut want = Vec::new();
            let mut row = vec![0.0f32; n];
            for t in 0..len {
                quire_kernels::dequantize_row(dtype, &src[t * stride..t * stride + row_bytes], &mut row);
                want.extend(row.iter().flat_map(|v| v.to_le_bytes()));
            }
            for isa in common::isas() {
                let mut got = vec![0xAAu8; len * n * 4];
                quire_kernels::widen_rows_with(isa, dtype, &src, stride, n, &mut got);
                assert_eq!(got, want, "{isa:?} {dtype} n={n} len={len}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "the scalar path runs everywhere");
}

/// The AVX-512 attention row kernels (f32 rows) give the AVX2 kernels' results bit for bit, whole heads and odd
/// widths alike (widths that are not whole 32- or 64-value groups fall back to AVX2 for their tail), on random
/// rows, extreme scales and zeros; and both stay within 1e-5 of the scalar reference, relative to the sum of
/// the products' magnitudes.
#[test]
fn avx512_row_kernels_equal_avx2() {
    use quire_kernels::{axpy_rows_with, dot_rows_with};
    let mut rng = common::rng(23);
    let isas: Vec<Isa> = common::simd_isas();
    // no rows: nothing to read, `y` unchanged
    for &isa in &isas {
        let mut y = vec![1.5f32; 100];
        axpy_rows_with(isa, DType::F32, &[], &[], 400, &mut y);
        assert!(y.iter().all(|&v| v == 1.5), "{isa}: empty");
    }
    for hd in [1usize, 8, 32, 64, 96, 128, 160, 200, 256] {
        for (n, pad) in [(1usize, 0usize), (5, 3), (37, 1)] {
            for scale in [1.0f32, 3e4, 1e-30, 0.0] {
                let stride = (hd + pad) * 4;
                let values: Vec<f32> = common::random_values(&mut rng, n * (hd + pad), scale.max(1e-30));
                let values: Vec<f32> = values.iter().map(|v| if scale == 0.0 { 0.0 } else { *v }).collect();
                let rows: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let qv = common::random_values(&mut rng, hd, 1.0);
                let q: Vec<u8> = qv.iter().flat_map(|v| v.to_le_bytes()).collect();
                let p = common::random_values(&mut rng, n, 1.0);
                let y0 = common::random_values(&mut rng, hd, 1.0);
                let run = |isa: Isa| {
                    let mut scores = vec![0.0f32; n];
                    dot_rows_with(isa, DType::F32, &q, &rows, stride, 0.125, &mut scores);
                    let mut y = y0.clone();
                    axpy_rows_with(isa, DType::F32, &p, &rows, stride, &mut y);
                    (scores, y)
                };
                let (want_s, want_y) = run(Isa::SCALAR);
                let results: Vec<_> = isas.iter().map(|&isa| run(isa)).collect();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let case = format!("hd={hd} n={n} scale={scale}");
                if let [avx2, avx512] = &results[..] {
                    assert_eq!(bits(&avx2.0), bits(&avx512.0), "scores, {case}");
                    assert_eq!(bits(&avx2.1), bits(&avx512.1), "values, {case}");
                }
                for (s, y) in &results {
                    for (t, (got, want)) in s.iter().zip(&want_s).enumerate() {
                        let row = &values[t * (hd + pad)..t * (hd + pad) + hd];
                        let mag: f32 = row.iter().zip(&qv).map(|(a, b)| (a * b).abs()).sum::<f32>() * 0.125;
                        assert!((got - want).abs() <= 1e-5 * mag + f32::MIN_POSITIVE, "score {t}, {case}");
                    }
                    // one fused multiply-add per element and row, in row order, on every instruction set
                    assert_eq!(bits(y), bits(&want_y), "values vs scalar, {case}");
                }
            }
        }
    }
}
