//! Quick throughput check of the dot kernels: scalar reference vs the SIMD set.
//!
//! `cargo run --release -p quire-kernels --example dot_bench [rows] [TYPE]`
//!
//! Computes one matrix-vector product of `rows` × 2560 weights (the Qwen3-4B hidden
//! size) per repetition, single-threaded, and prints time per row and weight bytes read
//! per second. 64 rows fit in L2 (kernel speed); 9728 rows (a Qwen3-4B FFN matrix) come
//! from memory.

use std::hint::black_box;
use std::time::{Duration, Instant};

use quire_kernels::dispatch::{self, Isa};
use quire_kernels::{quantize_row, DType};

const N: usize = 2560;

fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Seconds per matrix-vector product, best of many short timed batches (robust against
/// other processes sharing the cores).
fn time(isa: Isa, dtype: DType, rows: usize, w: &[u8], act: &[u8]) -> f64 {
    let row_bytes = dtype.row_bytes(N).unwrap();
    let run = || {
        let mut sum = 0.0f32;
        for r in 0..rows {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            sum += dispatch::vec_dot_with(isa, dtype, N, row, act);
        }
        black_box(sum);
    };
    run();
    let mut best = f64::INFINITY;
    for _ in 0..40 {
        let start = Instant::now();
        let mut reps = 0u32;
        while start.elapsed() < Duration::from_millis(15) {
            run();
            reps += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn main() {
    let rows: usize = std::env::args().nth(1).map_or(64, |s| s.parse().expect("rows"));
    let only = std::env::args().nth(2);
    println!("process isa: {}; {rows} rows x {N}", dispatch::isa());
    println!(
        "{:6} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "type", "scalar ns/row", "simd ns/row", "scalar GB/s", "simd GB/s", "speedup"
    );
    let simd = Isa::best();
    for dtype in
        [DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::F16, DType::BF16, DType::F32]
    {
        if only.as_deref().is_some_and(|name| name != dtype.name()) {
            continue;
        }
        let row_bytes = dtype.row_bytes(N).unwrap();
        let mut w = vec![0u8; rows * row_bytes];
        let source = values(7, N);
        for row in w.chunks_exact_mut(row_bytes) {
            quantize_row(dtype, &source, row);
        }
        let act_type = dtype.vec_dot_type();
        let mut act = vec![0u8; act_type.row_bytes(N).unwrap()];
        quantize_row(act_type, &values(9, N), &mut act);

        let scalar = time(Isa::SCALAR, dtype, rows, &w, &act);
        let fast = if simd == Isa::SCALAR { scalar } else { time(simd, dtype, rows, &w, &act) };
        let bytes = (rows * row_bytes) as f64;
        println!(
            "{:6} {:>12.0} {:>12.0} {:>10.2} {:>10.2} {:>7.1}x",
            dtype.name(),
            scalar / rows as f64 * 1e9,
            fast / rows as f64 * 1e9,
            bytes / scalar / 1e9,
            bytes / fast / 1e9,
            scalar / fast
        );
    }
}
