//! Quick throughput check of `gemm`: weight GB/s for one token (GEMV, memory-bound) and
//! GOPS for a batch (GEMM, compute-bound), on a Qwen3-4B FFN-shaped matrix.
//!
//! `cargo run --release -p quire-kernels --example gemm_bench [TYPE] [tokens] [threads] [rows] [k]`

use std::time::Instant;

use quire_kernels::dispatch::isa;
use quire_kernels::{can_prepack, gemm, gemm_prepacked, prepack, quantize_row, DType, QuantizedActs};

fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dtype = match args.get(1).map(String::as_str).unwrap_or("Q4_0") {
        "Q8_0" => DType::Q8_0,
        "Q4_K" => DType::Q4_K,
        "Q5_K" => DType::Q5_K,
        "Q6_K" => DType::Q6_K,
        _ => DType::Q4_0,
    };
    let tokens: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let rows: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(9728);
    let k: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(2560);
    let row_bytes = dtype.row_bytes(k).unwrap();
    // Several matrices so that one GEMV streams from memory, not from the 300 MB L3... at
    // least as much as this box allows: 8 copies.
    let copies =
        std::env::var("COPIES").ok().and_then(|s| s.parse().ok()).unwrap_or(if tokens <= 8 { 8 } else { 1 });
    let mut mats = Vec::new();
    for c in 0..copies {
        let src = values(c as u32 + 7, rows * k);
        let mut w = vec![0u8; rows * row_bytes];
        for (dst, s) in w.chunks_exact_mut(row_bytes).zip(src.chunks_exact(k)) {
            quantize_row(dtype, s, dst);
        }
        // PREPACK=1: the layout the engine keeps its matrices in (decode reads it in place).
        if std::env::var("PREPACK").is_ok_and(|v| v == "1") && can_prepack(dtype, rows) {
            let mut packed = vec![0u8; w.len()];
            prepack(dtype, k, &w, &mut packed);
            w = packed;
        }
        mats.push(w);
    }
    let prepacked = std::env::var("PREPACK").is_ok_and(|v| v == "1") && can_prepack(dtype, rows);
    let gemm = if prepacked { gemm_prepacked } else { gemm };
    let x = values(3, tokens * k);
    let mut acts = QuantizedActs::new();
    acts.quantize(dtype, k, &x);
    let mut out = vec![0.0f32; rows * tokens];
    let per = rows.div_ceil(threads).next_multiple_of(16);
    let run = |w: &[u8], out: &mut [f32]| {
        if threads == 1 {
            gemm(dtype, w, &acts, 0..tokens, out);
            return;
        }
        std::thread::scope(|s| {
            if tokens <= 8 {
                // Decode-sized batches are split by rows, as the engine does (`[tokens][rows]` per part).
                for (o, wr) in out.chunks_mut(per * tokens).zip(w.chunks(per * row_bytes)) {
                    let acts = &acts;
                    s.spawn(move || gemm(dtype, wr, acts, 0..tokens, o));
                }
            } else {
                let per_t = tokens.div_ceil(threads);
                for (i, o) in out.chunks_mut(per_t * rows).enumerate() {
                    let acts = &acts;
                    s.spawn(move || gemm(dtype, w, acts, i * per_t..i * per_t + o.len() / rows, o));
                }
            }
        });
    };
    let mut best = f64::MAX;
    let reps: usize =
        std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(if tokens <= 8 { 40 } else { 3 });
    for r in 0..reps {
        let t = Instant::now();
        run(&mats[r % copies], &mut out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let bytes = (rows * row_bytes) as f64;
    let ops = 2.0 * (rows * k * tokens) as f64;
    println!(
        "{dtype} {rows}x{k} tokens {tokens} threads {threads} isa {}: {:.3} ms, {:.1} GB/s weights, {:.1} GOPS",
        isa(),
        best * 1e3,
        bytes / best / 1e9,
        ops / best / 1e9
    );
}
