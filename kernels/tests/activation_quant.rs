//! The SIMD activation quantizers (Q8_0, Q8_K) must produce the same bytes as the
//! scalar ones (which follow llama.cpp's reference quantizers), including rounding ties,
//! sign ties of the largest value, zero blocks and extreme magnitudes.

mod common;

use quire_kernels::dispatch::{self, Isa};
use quire_kernels::DType;
use rand::Rng;

fn quantize_with(isa: Isa, dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0xAAu8; dtype.row_bytes(x.len()).unwrap()];
    dispatch::quantize_row_with(isa, dtype, x, &mut out);
    out
}

fn check_same_bytes(what: &str, dtype: DType, x: &[f32]) {
    let scalar = quantize_with(Isa::SCALAR, dtype, x);
    for isa in common::simd_isas() {
        let simd = quantize_with(isa, dtype, x);
        if simd != scalar {
            let at = simd.iter().zip(&scalar).position(|(a, b)| a != b).unwrap();
            panic!("{what} {dtype} {isa}: first difference at byte {at}");
        }
    }
    let mut process = vec![0u8; scalar.len()];
    quire_kernels::quantize_row(dtype, x, &mut process);
    assert_eq!(process, scalar, "{what} {dtype}: quantize_row");
}

#[test]
fn simd_activation_quantizers_match_scalar_on_random_rows() {
    let mut rng = common::rng(20);
    for dtype in [DType::Q8_0, DType::Q8_K] {
        for n in [256, 2560, 9728] {
            for scale in [1e-3f32, 1.0, 1e3] {
                let x = common::random_values(&mut rng, n, scale);
                check_same_bytes(&format!("n={n} scale {scale}"), dtype, &x);
            }
        }
    }
}

#[test]
fn rounding_ties_follow_each_reference() {
    // Q8_0: max 127 gives d = 1 and the quants are roundf(x): ties away from zero.
    // Q8_K: max −127 gives iscale = 1 and the quants are nearest_int(x): ties to even.
    let ties: Vec<f32> = (0..255).map(|i| (i as f32 - 127.0) + 0.5).collect();
    for (dtype, max) in [(DType::Q8_0, 127.0f32), (DType::Q8_K, -127.0)] {
        let mut x = vec![0.0f32; 512];
        for (k, v) in x.iter_mut().enumerate() {
            *v = if k % 32 == 0 { max } else { ties[k % ties.len()].clamp(-126.5, 126.5) };
        }
        check_same_bytes("ties", dtype, &x);
        let q = quantize_with(Isa::SCALAR, dtype, &x);
        let qs_at = if dtype == DType::Q8_0 { 2 } else { 4 };
        // x[1] = −125.5 → roundf −126, nearest-even −126; x[2] = −124.5 → −125 / −124.
        assert_eq!(q[qs_at + 2] as i8, if dtype == DType::Q8_0 { -125 } else { -124 });
    }
}

#[test]
fn largest_magnitude_sign_ties_keep_the_first() {
    for dtype in [DType::Q8_0, DType::Q8_K] {
        for first in [3.0f32, -3.0] {
            let mut x = vec![0.25f32; 256];
            x[10] = first;
            x[200] = -first;
            check_same_bytes(&format!("first {first}"), dtype, &x);
        }
    }
}

#[test]
fn zero_tiny_and_huge_blocks_match_scalar() {
    let mut rng = common::rng(21);
    for dtype in [DType::Q8_0, DType::Q8_K] {
        let mut x = vec![0.0f32; 1024];
        check_same_bytes("zeros", dtype, &x);
        for amax in [1e-30f32, 1e-38, 6e4, 1e38] {
            for v in x.iter_mut() {
                *v = rng.random_range(-amax..=amax);
            }
            x[..256].fill(0.0); // a zero block among non-zero ones
            check_same_bytes(&format!("amax {amax}"), dtype, &x);
        }
    }
}
