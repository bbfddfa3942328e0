//! RMSNorm's and RoPE's element-wise kernels: every instruction set gives the scalar reference's bits, for
//! lengths around the vector widths, extreme magnitudes and zeros; the scalar references themselves against
//! direct formulas.

mod common;

use quire_kernels::dispatch::Isa;
use quire_kernels::norm_rope::*;

const LENGTHS: [usize; 12] = [0, 1, 3, 7, 8, 15, 16, 17, 33, 64, 128, 2561];
/// Value magnitudes: ordinary, tiny (subnormal squares), huge (squares overflow f32, not f64), and zeros.
const SCALES: [f32; 4] = [1.0, 1e-25, 3e30, 0.0];

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn sum_squares_equals_scalar_and_the_exact_sum() {
    let mut rng = common::rng(31);
    for n in LENGTHS {
        for scale in SCALES {
            let x = common::random_values(&mut rng, n, scale);
            let want = sum_squares_with(Isa::SCALAR, &x);
            // each x² is exact in f64; the sum of up to 2561 of them is within n ulps
            let direct: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            assert!((want - direct).abs() <= direct * 1e-15 * n as f64, "n={n} scale={scale}");
            assert!(want.is_finite(), "n={n} scale={scale}");
            for isa in common::simd_isas() {
                let got = sum_squares_with(isa, &x);
                assert_eq!(got.to_bits(), want.to_bits(), "n={n} scale={scale} {isa}");
            }
        }
    }
}

#[test]
fn scale_mul_equals_scalar() {
    let mut rng = common::rng(32);
    for n in LENGTHS {
        for (scale, s) in SCALES.into_iter().zip([0.37f32, 1e20, 1e-30, 5.0]) {
            let x0 = common::random_values(&mut rng, n, scale);
            let w = common::random_values(&mut rng, n + 3, 2.0);
            let mut want = x0.clone();
            scale_mul_with(Isa::SCALAR, &mut want, s, &w);
            for (i, (&got, &x)) in want.iter().zip(&x0).enumerate() {
                assert_eq!(got.to_bits(), (x * s * w[i]).to_bits());
            }
            for isa in common::simd_isas() {
                let mut got = x0.clone();
                scale_mul_with(isa, &mut got, s, &w);
                assert!(same_bits(&got, &want), "n={n} scale={scale} {isa}");
            }
        }
    }
}

#[test]
fn rope_turn_equals_scalar_and_keeps_the_norm() {
    let mut rng = common::rng(33);
    for n in LENGTHS {
        for scale in SCALES {
            let (lo0, hi0) =
                (common::random_values(&mut rng, n, scale), common::random_values(&mut rng, n, scale));
            let angles = common::random_values(&mut rng, n, 50.0);
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let (mut lo, mut hi) = (lo0.clone(), hi0.clone());
            rope_turn_with(Isa::SCALAR, &mut lo, &mut hi, &cos, &sin);
            if scale == 1.0 {
                for i in 0..n {
                    let before = lo0[i].hypot(hi0[i]);
                    assert!((lo[i].hypot(hi[i]) - before).abs() <= 1e-5 * before.max(1.0), "n={n} i={i}");
                }
            }
            for isa in common::simd_isas() {
                let (mut l, mut h) = (lo0.clone(), hi0.clone());
                rope_turn_with(isa, &mut l, &mut h, &cos, &sin);
                assert!(same_bits(&l, &lo) && same_bits(&h, &hi), "n={n} scale={scale} {isa}");
            }
        }
    }
}
