//! `exp_in_place` gives `f32::exp`'s results bit for bit on every instruction set: every `f32` below 88 in
//! magnitude (the vector path), and the values libm treats apart (overflow, underflow, infinities, NaN).

mod common;

use quire_kernels::dispatch::{Isa, IsaKind};
use quire_kernels::exp_in_place_with;

/// Compares `exp_in_place_with(isa)` with `f32::exp` on the `f32`s with bit patterns in `bits`, in slices of
/// odd length so the 16-wide path and its scalar tail both run.
fn check_range(isa: Isa, bits: std::ops::Range<u32>) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut start = bits.start;
    while start < bits.end {
        let end = bits.end.min(start + (1 << 16) - 3);
        buf.clear();
        buf.extend((start..end).map(f32::from_bits));
        exp_in_place_with(isa, &mut buf);
        for (b, got) in (start..end).zip(&buf) {
            let want = f32::from_bits(b).exp();
            let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
            assert!(same, "{isa}: exp({:e}) = {got:e}, libm says {want:e}", f32::from_bits(b));
        }
        start = end;
    }
}

#[test]
fn exp_equals_libm_for_every_f32_below_88() {
    let below_88 = 0..88.0f32.to_bits();
    // (the other instruction sets call `f32::exp` itself)
    if let Some(isa) = common::isa_of(IsaKind::Avx512) {
        // both signs, split over two threads
        std::thread::scope(|s| {
            for sign in [0, 0x8000_0000u32] {
                let r = below_88.start | sign..below_88.end | sign;
                s.spawn(move || check_range(isa, r));
            }
        });
    }
}

#[test]
fn exp_equals_libm_on_libms_special_path() {
    let mut xs = vec![
        88.0f32,
        88.5,
        88.72283,
        88.72284,
        89.0,
        1e10,
        f32::MAX,
        f32::INFINITY,
        -88.0,
        -100.0,
        -103.27892,
        -103.279,
        -103.5,
        -103.97207,
        -103.97208,
        -104.0,
        -1e10,
        f32::MIN,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
    ];
    // the whole special range, sparsely: every 4099th pattern from 88 up and from −88 down
    xs.extend((88.0f32.to_bits()..0x7f80_0000).step_by(4099).map(f32::from_bits));
    xs.extend((88.0f32.to_bits()..0x7f80_0000).step_by(4099).map(|b| -f32::from_bits(b)));
    for isa in common::isas() {
        for chunk in xs.chunks(37) {
            let mut got = chunk.to_vec();
            exp_in_place_with(isa, &mut got);
            for (x, g) in chunk.iter().zip(&got) {
                let want = x.exp();
                let same = g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan());
                assert!(same, "{isa}: exp({x:e}) = {g:e}, libm says {want:e}");
            }
        }
    }
}
