//! Dot products: the SIMD kernels against the scalar reference, and the scalar
//! reference against the plain sum of dequantized products, on random data and on
//! edge cases (one block, Qwen3-4B row lengths, zero rows, extreme scales, extreme
//! quants).
//!
//! Exactness contract checked here:
//! - Quantized formats: SIMD and scalar share the integer sums and the float
//!   combination, so they must be bit-identical.
//! - F32/F16/BF16: within 1e-5 of Σ|w·a|.

mod common;

use quire_kernels::dispatch;
use quire_kernels::{vec_dot, vec_dot_scalar, DType};
use rand::rngs::StdRng;
use rand::Rng;

const WEIGHT_TYPES: [DType; 15] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::Q2_K,
    DType::Q3_K,
    DType::IQ4_XS,
];

/// Row lengths: one block, a few blocks, and the Qwen3-4B hidden and FFN sizes.
fn lengths(dtype: DType) -> Vec<usize> {
    let mut n = vec![dtype.block_len(), 4 * 256, 2560, 9728];
    if dtype.block_len() == 1 {
        // Float rows have no block constraint: exercise every SIMD tail.
        n.extend([1, 7, 8, 31, 33, 65, 127, 1000]);
    }
    if dtype.block_len() == 32 {
        n.extend([64, 96]);
    }
    n
}

/// Σ|w_i·a_i| over the dequantized operands, and Σ w_i·a_i in f64.
fn dequantized_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> (f64, f64) {
    let wv = common::dequantize(dtype, w, n);
    let av = common::dequantize(dtype.vec_dot_type(), act, n);
    let dot = wv.iter().zip(&av).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = wv.iter().zip(&av).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
    (dot, mag)
}

/// The block formats, whose SIMD kernels must match the scalar reference bit for bit.
fn is_quantized(dtype: DType) -> bool {
    dtype.block_len() > 1
}

/// Checks every kernel on one operand pair; returns the scalar result.
fn check_pair(what: &str, dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    let scalar = vec_dot_scalar(dtype, n, w, act);
    let (exact, mag) = dequantized_dot(dtype, n, w, act);
    assert!(scalar.is_finite(), "{what}: scalar {scalar}");
    // The reference is itself the dequantized dot, up to f32 rounding.
    let tol = 1e-5 * mag + 1e-30;
    assert!(
        (scalar as f64 - exact).abs() <= tol,
        "{what}: scalar {scalar} vs dequantized {exact} (|w·a| {mag})"
    );
    for isa in common::simd_isas() {
        let simd = dispatch::vec_dot_with(isa, dtype, n, w, act);
        if is_quantized(dtype) {
            assert_eq!(simd.to_bits(), scalar.to_bits(), "{what} {isa}: {simd} vs {scalar}");
        } else {
            assert!(
                (simd as f64 - scalar as f64).abs() <= tol,
                "{what} {isa}: {simd} vs scalar {scalar} (|w·a| {mag})"
            );
        }
    }
    let process = vec_dot(dtype, n, w, act);
    let expected = dispatch::vec_dot_with(dispatch::isa(), dtype, n, w, act);
    assert_eq!(process.to_bits(), expected.to_bits(), "{what}: vec_dot uses isa()");
    scalar
}

/// A random weight row: quantized from random values.
fn random_weights(rng: &mut StdRng, dtype: DType, n: usize, scale: f32) -> Vec<u8> {
    common::quantize(dtype, &common::random_values(rng, n, scale))
}

/// A random activation row in `dtype.vec_dot_type()`.
fn random_acts(rng: &mut StdRng, dtype: DType, n: usize, scale: f32) -> Vec<u8> {
    common::quantize(dtype.vec_dot_type(), &common::random_values(rng, n, scale))
}

#[test]
fn simd_matches_scalar_on_random_rows() {
    let mut rng = common::rng(1);
    for dtype in WEIGHT_TYPES {
        for n in lengths(dtype) {
            for (ws, as_) in [(0.02f32, 1.0f32), (1.0, 3.0), (1e-3, 50.0)] {
                let w = random_weights(&mut rng, dtype, n, ws);
                let a = random_acts(&mut rng, dtype, n, as_);
                check_pair(&format!("{dtype} n={n} scales {ws}/{as_}"), dtype, n, &w, &a);
            }
        }
    }
}

/// Writes the scale fields of every block of a quant row (f16 `d`, and `dmin` for
/// Q4_K/Q5_K, the minimum `m` for Q4_1/Q5_1) so raw random bytes form valid blocks with known scales.
fn set_scales(dtype: DType, row: &mut [u8], d: f32, dmin: f32) {
    let (d_at, dmin_at) = common::scale_offsets(dtype);
    let d = half::f16::from_f32(d).to_le_bytes();
    let dmin = half::f16::from_f32(dmin).to_le_bytes();
    for block in row.chunks_exact_mut(dtype.block_bytes()) {
        block[d_at..d_at + 2].copy_from_slice(&d);
        if let Some(at) = dmin_at {
            block[at..at + 2].copy_from_slice(&dmin);
        }
    }
}

/// A Q8_0 or Q8_K activation row from raw quants (any i8, including −128) and a scale,
/// with consistent Q8_K group sums.
fn raw_acts(dtype: DType, qs: &[i8], d: f32) -> Vec<u8> {
    let act_type = dtype.vec_dot_type();
    let mut row = vec![0u8; act_type.row_bytes(qs.len()).unwrap()];
    let block_len = act_type.block_len();
    for (block, q) in row.chunks_exact_mut(act_type.block_bytes()).zip(qs.chunks_exact(block_len)) {
        match act_type {
            DType::Q8_0 => {
                block[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                for (b, &v) in block[2..].iter_mut().zip(q) {
                    *b = v as u8;
                }
            }
            DType::Q8_K => {
                block[..4].copy_from_slice(&d.to_le_bytes());
                for (b, &v) in block[4..260].iter_mut().zip(q) {
                    *b = v as u8;
                }
                for g in 0..16 {
                    let s: i32 = q[16 * g..16 * g + 16].iter().map(|&v| v as i32).sum();
                    block[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
                }
            }
            _ => unreachable!(),
        }
    }
    row
}

const QUANT_TYPES: [DType; 12] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::Q2_K,
    DType::Q3_K,
    DType::IQ4_XS,
];

#[test]
fn simd_matches_scalar_on_raw_random_blocks() {
    // Raw bytes reach quant patterns the quantizers never emit (−128 activations, all
    // scale/min codes, every Q6_K scale sign).
    let mut rng = common::rng(2);
    for dtype in QUANT_TYPES {
        for n in lengths(dtype) {
            for _ in 0..3 {
                let mut w = common::random_bytes(&mut rng, dtype.row_bytes(n).unwrap());
                let d = rng.random_range(1e-4f32..1.0);
                set_scales(dtype, &mut w, d, rng.random_range(0.0f32..1.0) * d);
                let qs: Vec<i8> = (0..n).map(|_| rng.random()).collect();
                let a = raw_acts(dtype, &qs, rng.random_range(1e-3f32..2.0));
                check_pair(&format!("{dtype} n={n} raw"), dtype, n, &w, &a);
            }
        }
    }
}

#[test]
fn integer_sums_are_exact_with_unit_scales() {
    // With every scale 1.0 the dot is an integer below 2^24: all kernels must return it
    // exactly, whatever their accumulation order.
    let mut rng = common::rng(3);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL] {
        for n in [32, 64, 512, 2560] {
            let mut w = common::random_bytes(&mut rng, dtype.row_bytes(n).unwrap());
            set_scales(dtype, &mut w, 1.0, 0.0);
            let qs: Vec<i8> = (0..n).map(|_| rng.random()).collect();
            let a = raw_acts(dtype, &qs, 1.0);
            let wv = common::dequantize(dtype, &w, n);
            let expected: i64 = wv.iter().zip(&qs).map(|(&x, &y)| x as i64 * y as i64).sum();
            let scalar = vec_dot_scalar(dtype, n, &w, &a);
            assert_eq!(scalar, expected as f32, "{dtype} n={n} scalar");
            for isa in common::simd_isas() {
                let simd = dispatch::vec_dot_with(isa, dtype, n, &w, &a);
                assert_eq!(simd, expected as f32, "{dtype} n={n} {isa}");
            }
        }
    }
}

#[test]
fn extreme_quants_are_exact() {
    // Largest-magnitude quants on both sides, same and opposite signs, where a signed
    // maddubs trick would saturate or wrap.
    for dtype in QUANT_TYPES {
        let n = 512;
        let nbytes = dtype.row_bytes(n).unwrap();
        // 0x00 and 0xff bytes give the extreme codes of every packed field (for Q8_0
        // quants 0 and −1; its −128/127 come from 0x80/0x7f).
        let fills: &[u8] = if dtype == DType::Q8_0 { &[0x80, 0x7f, 0xff] } else { &[0x00, 0xff] };
        for &fill in fills {
            for a_q in [-128i8, 127, -127] {
                let mut w = vec![fill; nbytes];
                set_scales(dtype, &mut w, 1.0, 1.0);
                let a = raw_acts(dtype, &vec![a_q; n], 1.0);
                let what = format!("{dtype} fill {fill:#x} act {a_q}");
                let scalar = check_pair(&what, dtype, n, &w, &a);
                let (exact, _) = dequantized_dot(dtype, n, &w, &a);
                assert_eq!(scalar as f64, exact, "{what}: integer result");
            }
        }
    }
}

#[test]
fn zero_rows_give_zero() {
    let mut rng = common::rng(4);
    for dtype in WEIGHT_TYPES {
        for n in [dtype.block_len().max(8), 2560] {
            let zeros_w = common::quantize(dtype, &vec![0.0; n]);
            let zeros_a = common::quantize(dtype.vec_dot_type(), &vec![0.0; n]);
            assert!(
                common::dequantize(dtype, &zeros_w, n).iter().all(|&v| v == 0.0),
                "{dtype}: zero row round-trips to zeros"
            );
            let w = random_weights(&mut rng, dtype, n, 1.0);
            let a = random_acts(&mut rng, dtype, n, 1.0);
            for (wr, ar) in [(&zeros_w, &a), (&w, &zeros_a), (&zeros_w, &zeros_a)] {
                let got = check_pair(&format!("{dtype} n={n} zero"), dtype, n, wr, ar);
                assert_eq!(got, 0.0, "{dtype} n={n}");
            }
        }
    }
}

#[test]
fn extreme_scales_stay_accurate() {
    // Tiny and huge magnitudes: 1e-30 underflows f16 scales to zero (the product must
    // then be 0, not NaN); 6e4 is near the f16 limit and must not overflow.
    let mut rng = common::rng(5);
    for dtype in WEIGHT_TYPES {
        let n = 2560;
        for (ws, as_) in [(1e-30f32, 1.0f32), (1.0, 1e-30), (6e4, 1.0), (1.0, 6e4), (6e4, 6e4)] {
            let w = common::quantize(dtype, &common::random_values(&mut rng, n, ws / 8.0));
            let a = common::quantize(dtype.vec_dot_type(), &common::random_values(&mut rng, n, as_ / 8.0));
            check_pair(&format!("{dtype} scales {ws}/{as_}"), dtype, n, &w, &a);
        }
    }
}

#[test]
fn scalar_reference_matches_float_products_for_float_rows() {
    // For float rows the dot of the stored values must be Σ w·a itself.
    let mut rng = common::rng(6);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let n = 9728;
        let values = common::random_values(&mut rng, n, 1.0);
        let acts = common::random_values(&mut rng, n, 1.0);
        let w = common::quantize(dtype, &values);
        let a = common::quantize(DType::F32, &acts);
        let wv = common::dequantize(dtype, &w, n);
        let exact: f64 = wv.iter().zip(&acts).map(|(&x, &y)| x as f64 * y as f64).sum();
        let mag: f64 = wv.iter().zip(&acts).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
        let got = vec_dot_scalar(dtype, n, &w, &a);
        assert!((got as f64 - exact).abs() <= 1e-6 * mag, "{dtype}: {got} vs {exact}");
    }
}
