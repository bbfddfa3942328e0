//! Quantize → dequantize round trips: per-format error bounds on random rows, exact
//! zeros, and extreme magnitudes.

mod common;

use quire_kernels::DType;
use rand::Rng;

const ALL_TYPES: [DType; 16] = [
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
    DType::Q8_K,
    DType::IQ4_NL,
    DType::Q2_K,
    DType::Q3_K,
    DType::IQ4_XS,
];

fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    common::dequantize(dtype, &common::quantize(dtype, x), x.len())
}

/// sqrt(Σ err² / Σ x²).
fn relative_rms_error(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
    let norm: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

/// The largest |error| in each block, divided by that block's largest |x|.
fn worst_block_error(x: &[f32], y: &[f32], block_len: usize) -> f64 {
    x.chunks(block_len)
        .zip(y.chunks(block_len))
        .map(|(xb, yb)| {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let err = xb.iter().zip(yb).map(|(&a, &b)| (a - b).abs() as f64).fold(0.0, f64::max);
            if amax == 0.0 {
                err
            } else {
                err / amax
            }
        })
        .fold(0.0, f64::max)
}

#[test]
fn float_formats_round_as_ieee() {
    let mut rng = common::rng(10);
    let x = common::random_values(&mut rng, 9728, 1.0);
    assert_eq!(round_trip(DType::F32, &x), x);
    for (dtype, rel) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        let y = round_trip(dtype, &x);
        for (&a, &b) in x.iter().zip(&y) {
            // Half an ulp relative (normal range), or half the smallest f16 subnormal.
            assert!((a - b).abs() <= rel * a.abs() + 2f32.powi(-25), "{dtype}: {a} -> {b}");
        }
        // Round to nearest even, not truncation: ties go to the even neighbour.
        let tie = f32::from_bits(0x3f80_1000); // 1 + 2^-11: halfway between two f16
        let tie_bf = f32::from_bits(0x3f80_8000); // 1 + 2^-8: halfway between two bf16
        assert_eq!(round_trip(DType::F16, &[tie])[0], 1.0);
        assert_eq!(round_trip(DType::BF16, &[tie_bf])[0], 1.0);
    }
}

/// Error bounds of the block formats on random rows. The 8-bit and Q4_0 bounds are
/// analytic (half a step, plus the f16 rounding of the scale; Q4_0's clamp at +7 costs a
/// full step); the K-quant bounds are the observed errors of llama.cpp's own quantizers
/// (which ours match byte for byte) with some margin.
#[test]
fn block_formats_stay_within_their_error_bounds() {
    let mut rng = common::rng(11);
    // (type, worst |err| / block amax, relative RMS error)
    let bounds = [
        (DType::Q8_0, 0.57 / 127.0, 0.008),
        (DType::Q8_K, 0.5 / 127.0 * 1.0001, 0.015),
        (DType::Q4_0, 1.01 / 8.0, 0.12),
        (DType::Q4_K, 0.09, 0.09),
        (DType::Q5_K, 0.045, 0.05),
        (DType::Q6_K, 0.022, 0.025),
        // (Later formats last, so the random rows of the ones above stay the same.)
        // d = amax/16: a value rounds by d/2, the largest positive one may clip by d.
        (DType::Q5_0, 1.01 / 16.0, 0.06),
        // d = (max − min)/15 or /31, at most 2·amax/15 or 2·amax/31: a value rounds by d/2 (plus the f16
        // rounding of the minimum); the step is about Q4_0's or Q5_0's, and so is the RMS error.
        (DType::Q4_1, 1.01 / 15.0 + 1e-3, 0.12),
        (DType::Q5_1, 1.01 / 31.0 + 1e-3, 0.06),
        // sixteen levels at most 24/127 of the range apart, with a least-squares scale that may clip the
        // largest value: about Q4_0's accuracy.
        (DType::IQ4_NL, 0.15, 0.12),
        // observed errors of llama.cpp's quantizers (ours match them byte for byte) with some margin
        (DType::Q2_K, 0.37, 0.35),
        (DType::Q3_K, 0.2, 0.19),
        (DType::IQ4_XS, 0.11, 0.1),
    ];
    for (dtype, worst_bound, rms_bound) in bounds {
        // Scales keep the f16 block scales in the normal range (below ~6e-5 they turn
        // subnormal and lose precision, in ggml as here).
        for scale in [0.02f32, 1.0, 300.0] {
            let x = common::random_values(&mut rng, 9728, scale);
            let y = round_trip(dtype, &x);
            let worst = worst_block_error(&x, &y, dtype.block_len());
            let rms = relative_rms_error(&x, &y);
            println!("{dtype} scale {scale}: worst {worst:.5} rms {rms:.5}");
            assert!(worst <= worst_bound && rms <= rms_bound, "{dtype} scale {scale}");
        }
    }
}

#[test]
fn zero_and_constant_rows_round_trip() {
    for dtype in ALL_TYPES {
        let n = 512;
        assert!(round_trip(dtype, &vec![0.0; n]).iter().all(|&v| v == 0.0), "{dtype}: zeros");
        // Constant rows: exact for the float formats (values with few mantissa bits),
        // within the f16
        // rounding of the block scale for the others.
        for c in [1.0f32, -2.0, 0.5, 0.375] {
            let y = round_trip(dtype, &vec![c; n]);
            let tol = if dtype.block_len() == 1 { 0.0 } else { 1e-3 * c.abs() };
            assert!(y.iter().all(|&v| (v - c).abs() <= tol), "{dtype}: constant {c} -> {:?}", &y[..4]);
        }
    }
}

#[test]
fn extreme_magnitudes_round_trip_without_blowing_up() {
    let mut rng = common::rng(12);
    for dtype in ALL_TYPES {
        // 6e4 is close to the f16 maximum (65504); 1e-30 is far below the smallest f16
        // subnormal, so f16-scaled formats flush it to zero.
        for amax in [6e4f32, 1e-30] {
            let x: Vec<f32> = (0..2560).map(|_| rng.random_range(-amax..=amax)).collect();
            let y = round_trip(dtype, &x);
            let worst = worst_block_error(&x, &y, dtype.block_len().max(32));
            assert!(y.iter().all(|v| v.is_finite()), "{dtype} amax {amax}: non-finite");
            assert!(worst <= 1.0, "{dtype} amax {amax}: error {worst} of block max");
            if amax > 1.0 || matches!(dtype, DType::F32 | DType::BF16 | DType::Q8_K) {
                // Scales are representable here, so the usual accuracy holds (2 and 3 bits are coarser).
                let bound = match dtype {
                    DType::Q2_K => 0.4,
                    DType::Q3_K => 0.2,
                    _ => 0.15,
                };
                assert!(relative_rms_error(&x, &y) < bound, "{dtype} amax {amax}");
            }
        }
    }
}
