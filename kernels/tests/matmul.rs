//! Matrix products (`gemm`) against the scalar reference dot product, under every
//! instruction set this CPU supports.
//!
//! Contract checked here: the AVX-512 panel kernels equal the *scalar* reference bit
//! for bit for every quantized format; every other output of `gemm` equals one
//! `vec_dot` of the same instruction set bit for bit; and results do not depend on the token range
//! (batch) or on which rows a call covers (thread split).

mod common;

use quire_kernels::dispatch::{self, Isa, IsaKind};
use quire_kernels::matmul::{gemm_with, has_panel_kernel};
use quire_kernels::{vec_dot_scalar, DType, QuantizedActs};
use rand::rngs::StdRng;
use rand::Rng;

const WEIGHT_TYPES: [DType; 15] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::Q2_K,
    DType::Q3_K,
    DType::IQ4_XS,
    DType::F32,
    DType::F16,
    DType::BF16,
];

/// `rows` random weight rows of `k` values: quantized from random floats, or raw random
/// bytes with valid scales (reaches every quant and scale code, including −128 in Q8_0).
fn weights(rng: &mut StdRng, dtype: DType, rows: usize, k: usize, raw: bool, scale: f32) -> Vec<u8> {
    if !raw || dtype.block_len() == 1 {
        return common::quantize(dtype, &common::random_values(rng, rows * k, scale));
    }
    let mut w = common::random_bytes(rng, rows * dtype.row_bytes(k).unwrap());
    let (d_at, dmin_at) = common::scale_offsets(dtype);
    for block in w.chunks_exact_mut(dtype.block_bytes()) {
        let d = rng.random_range(1e-4f32..1.0) * scale;
        block[d_at..d_at + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if let Some(at) = dmin_at {
            let m = rng.random_range(0.0f32..1.0) * d;
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(m).to_le_bytes());
        }
    }
    w
}

/// Checks `gemm` on one matrix and batch, for every instruction set, every token range
/// split and a row split.
fn check(what: &str, dtype: DType, k: usize, w: &[u8], x: &[f32]) {
    let row_bytes = dtype.row_bytes(k).unwrap();
    let rows = w.len() / row_bytes;
    let n_tokens = x.len() / k;
    let mut acts = QuantizedActs::new();
    acts.quantize(dtype, k, x);
    let scalar: Vec<f32> = (0..n_tokens)
        .flat_map(|t| {
            let a = acts.row(t).to_vec();
            w.chunks_exact(row_bytes).map(move |wr| vec_dot_scalar(dtype, k, wr, &a)).collect::<Vec<_>>()
        })
        .collect();
    for isa in common::isas() {
        let mut out = vec![f32::NAN; rows * n_tokens];
        gemm_with(isa, dtype, w, &acts, 0..n_tokens, &mut out);
        for (i, (&got, &want)) in out.iter().zip(&scalar).enumerate() {
            let (t, r) = (i / rows, i % rows);
            if has_panel_kernel(isa, dtype) || isa == Isa::SCALAR {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{what} {isa}: token {t} row {r}: {got} vs scalar {want}"
                );
            } else {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                let single = dispatch::vec_dot_with(isa, dtype, k, wr, acts.row(t));
                assert_eq!(got.to_bits(), single.to_bits(), "{what} {isa}: token {t} row {r} vs vec_dot");
            }
        }
        // Any token range gives the same numbers (batch invariance).
        for t in 0..n_tokens {
            let mut one = vec![f32::NAN; rows];
            gemm_with(isa, dtype, w, &acts, t..t + 1, &mut one);
            assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                out[t * rows..(t + 1) * rows].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{what} {isa}: token {t} alone"
            );
        }
        // Any row split gives the same numbers (thread invariance).
        if rows > 3 {
            let split = rows / 3;
            let mut tail = vec![f32::NAN; (rows - split) * n_tokens];
            gemm_with(isa, dtype, &w[split * row_bytes..], &acts, 0..n_tokens, &mut tail);
            for t in 0..n_tokens {
                assert_eq!(
                    &tail[t * (rows - split)..(t + 1) * (rows - split)],
                    &out[t * rows + split..(t + 1) * rows],
                    "{what} {isa}: rows from {split}"
                );
            }
        }
    }
}

#[test]
fn gemm_matches_scalar_on_random_matrices() {
    let mut rng = common::rng(11);
    for dtype in WEIGHT_TYPES {
        let block = dtype.block_len().max(32);
        // One block; a few blocks; the Qwen3-4B hidden size. Row counts around the panel size.
        for (k, rows, tokens) in
            [(block, 1, 1), (block, 17, 3), (4 * 256, 15, 5), (2560, 33, 9), (512, 16, 4)]
        {
            for raw in [false, true] {
                for (ws, xs) in [(0.05f32, 1.0f32), (1.0, 40.0)] {
                    let w = weights(&mut rng, dtype, rows, k, raw, ws);
                    let x = common::random_values(&mut rng, tokens * k, xs);
                    check(
                        &format!("{dtype} k={k} rows={rows} tokens={tokens} raw={raw} scales {ws}/{xs}"),
                        dtype,
                        k,
                        &w,
                        &x,
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_handles_zeros_and_extreme_scales() {
    let mut rng = common::rng(12);
    for dtype in WEIGHT_TYPES.into_iter().filter(|d| d.block_len() > 1) {
        let k = 512;
        let rows = 20;
        // All-zero weights and activations, huge and tiny activations, a zero token in a batch.
        let zeros_w = vec![0u8; rows * dtype.row_bytes(k).unwrap()];
        let x = common::random_values(&mut rng, 3 * k, 1.0);
        check(&format!("{dtype} zero weights"), dtype, k, &zeros_w, &x);
        let w = weights(&mut rng, dtype, rows, k, true, 1.0);
        let mut x = common::random_values(&mut rng, 4 * k, 1e4);
        x[k..2 * k].fill(0.0);
        for v in &mut x[2 * k..3 * k] {
            *v *= 1e-30;
        }
        check(&format!("{dtype} extreme activations"), dtype, k, &w, &x);
        let w = weights(&mut rng, dtype, rows, k, true, 6e4);
        check(&format!("{dtype} huge weight scales"), dtype, k, &w, &x);
    }
}

#[test]
#[should_panic(expected = "activations quantized for")]
fn gemm_rejects_activations_of_another_format() {
    let mut acts = QuantizedActs::new();
    acts.quantize(DType::Q4_0, 32, &[0.5; 32]);
    let mut out = [0.0f32; 1];
    quire_kernels::gemm(DType::Q8_0, &[0u8; 34], &acts, 0..1, &mut out);
}

/// Prepacked matrices of every quantized format (AVX-512 only: elsewhere `can_prepack` is false and the
/// engine keeps the file's layout) give the scalar reference's bits, for whole batches (unpacked into
/// scratch or block by block), single tokens and every tail size of the token tiles (read in place), and a whole-panel row
/// split; and every row reads back as the file's bytes (`unpack_row`, the tied embedding lookup).
#[test]
fn prepacked_gemm_equals_scalar() {
    let mut rng = common::rng(13);
    let mut checked = 0;
    let prepackable: Vec<DType> =
        WEIGHT_TYPES.into_iter().filter(|d| quire_kernels::prepacked::Layout::of(*d).is_some()).collect();
    assert_eq!(prepackable.len(), 12, "every quantized format has a prepacked layout");
    for &dtype in &prepackable {
        let k1 = dtype.block_len();
        // batches of one tile or less (read in place), of whole and partial tiles below 32 tokens (K-quant
        // panels unpacked once for all tiles), and of 32 (unpacked into scratch)
        let shapes = [
            (k1, 16, 1),
            (512, 32, 4),
            (2560, 48, 13),
            (3 * k1, 16, 7),
            (k1, 32, 3),
            (2 * k1, 16, 16),
            (k1, 32, 31),
            (k1, 16, 32),
        ];
        for (k, rows, tokens) in shapes {
            if !quire_kernels::can_prepack(dtype, rows) {
                continue;
            }
            for (raw, ws, xs) in [(false, 0.05f32, 1.0f32), (true, 1.0, 40.0), (true, 6e4, 1e4)] {
                let what = format!("{dtype} k={k} rows={rows} tokens={tokens} raw={raw} scales {ws}/{xs}");
                let w = weights(&mut rng, dtype, rows, k, raw, ws);
                let mut x = common::random_values(&mut rng, tokens * k, xs);
                x[..k].fill(0.0);
                let row_bytes = dtype.row_bytes(k).unwrap();
                let mut packed = vec![0u8; w.len()];
                quire_kernels::prepack(dtype, k, &w, &mut packed);
                assert_ne!(packed, w, "{what}: the layout changed");
                let mut row = vec![0u8; row_bytes];
                for r in 0..rows {
                    quire_kernels::prepacked::unpack_row(dtype, k, &packed, r, &mut row);
                    assert_eq!(row, w[r * row_bytes..(r + 1) * row_bytes], "{what}: row {r} read back");
                }
                let mut acts = QuantizedActs::new();
                acts.quantize(dtype, k, &x);
                let mut out = vec![f32::NAN; rows * tokens];
                quire_kernels::gemm_prepacked(dtype, &packed, &acts, 0..tokens, &mut out);
                for (i, got) in out.iter().enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    let want = vec_dot_scalar(dtype, k, &w[r * row_bytes..(r + 1) * row_bytes], acts.row(t));
                    assert_eq!(got.to_bits(), want.to_bits(), "{what}: token {t} row {r}: {got} vs {want}");
                }
                for t in 0..tokens {
                    let mut one = vec![f32::NAN; rows];
                    quire_kernels::gemm_prepacked(dtype, &packed, &acts, t..t + 1, &mut one);
                    assert_eq!(one, out[t * rows..(t + 1) * rows], "{what}: token {t} alone");
                }
                // token ranges made of the batch's own tiles, and ranges that cut one (how threads split tokens)
                for range in [8..tokens, 0..tokens - 1, 1..tokens] {
                    if range.is_empty() {
                        continue;
                    }
                    let mut part = vec![f32::NAN; rows * range.len()];
                    quire_kernels::gemm_prepacked(dtype, &packed, &acts, range.clone(), &mut part);
                    assert_eq!(part, out[range.start * rows..range.end * rows], "{what}: tokens {range:?}");
                }
                // the second panel on its own (how threads split rows): into a buffer of its own, and in
                // place into every token's full-width row (how the engine splits a decode batch's rows)
                if rows >= 32 {
                    let second = &packed[16 * row_bytes..];
                    let mut tail = vec![f32::NAN; (rows - 16) * tokens];
                    quire_kernels::gemm_prepacked(dtype, second, &acts, 0..tokens, &mut tail);
                    let mut full = vec![f32::NAN; rows * tokens];
                    let mut pieces: Vec<&mut [f32]> = full.chunks_mut(rows).map(|r| &mut r[16..]).collect();
                    quire_kernels::gemm_prepacked_into_rows(dtype, second, &acts, 0..tokens, &mut pieces);
                    for t in 0..tokens {
                        let want = &out[t * rows + 16..(t + 1) * rows];
                        assert_eq!(
                            tail[t * (rows - 16)..(t + 1) * (rows - 16)],
                            *want,
                            "{what}: second panel"
                        );
                        assert_eq!(full[t * rows + 16..(t + 1) * rows], *want, "{what}: in place");
                        assert!(
                            full[t * rows..t * rows + 16].iter().all(|v| v.is_nan()),
                            "{what}: first panel untouched"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    if dispatch::isa().kind() == IsaKind::Avx512 {
        assert_eq!(checked, 3 * 8 * prepackable.len(), "every shape ran on this AVX-512 machine");
    }
}

/// The row kernels (`gemm_rows_into_rows`, what single tokens use where they are measured faster) give
/// `vec_dot`'s bits for every format (the scalar reference's for the quantized ones), and `rows_beat_panels` answers for real matrices without
/// failing (false where there is nothing to choose).
#[test]
fn row_kernels_equal_scalar_and_the_measurement_runs() {
    let mut rng = common::rng(17);
    for dtype in WEIGHT_TYPES {
        let k = 2 * dtype.block_len().max(256);
        let rows = 40;
        let w = weights(&mut rng, dtype, rows, k, true, 1.0);
        let x = common::random_values(&mut rng, 3 * k, 1.0);
        let mut acts = QuantizedActs::new();
        acts.quantize(dtype, k, &x);
        let mut out = vec![f32::NAN; 3 * rows];
        let mut token_rows: Vec<&mut [f32]> = out.chunks_mut(rows).collect();
        quire_kernels::gemm_rows_into_rows(dtype, &w, &acts, 0..3, &mut token_rows);
        let row_bytes = dtype.row_bytes(k).unwrap();
        for (i, got) in out.iter().enumerate() {
            let (t, r) = (i / rows, i % rows);
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let want = quire_kernels::vec_dot(dtype, k, wr, acts.row(t));
            assert_eq!(got.to_bits(), want.to_bits(), "{dtype}: token {t} row {r}");
            if dtype.block_len() > 1 {
                assert_eq!(want.to_bits(), vec_dot_scalar(dtype, k, wr, acts.row(t)).to_bits(), "{dtype}");
            }
        }
        let choice = quire_kernels::rows_beat_panels(&[(dtype, k, &w)]);
        if !has_panel_kernel(dispatch::isa(), dtype) {
            assert!(!choice, "{dtype}: no panel kernel, nothing to choose");
        }
    }
}
