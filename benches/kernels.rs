//! Kernel benchmarks: memory read bandwidth (the decode limit), quantized GEMV in weight GB/s on a
//! Qwen3-4B FFN matrix (9728 rows of 2560), and GEMM in GOPS for a 512-token batch — each through
//! `quire_engine::ops::matmul`, i.e. with activation quantization and the global thread pool.
//!
//! `cargo bench --bench kernels` (set RAYON_NUM_THREADS to pin the thread count).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quire_engine::ops::{matmul, MatmulScratch, Matrix, Weights};
use quire_kernels::{quantize_row, DType};

const ROWS: usize = 9728;
const COLS: usize = 2560;

fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn quantized(dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let row_bytes = dtype.row_bytes(cols).unwrap();
    let src = values(7, rows * cols);
    let mut w = vec![0u8; rows * row_bytes];
    for (dst, s) in w.chunks_exact_mut(row_bytes).zip(src.chunks_exact(cols)) {
        quantize_row(dtype, s, dst);
    }
    w
}

fn matrix(dtype: DType, rows: usize, cols: usize) -> Matrix {
    let bytes = rows * dtype.row_bytes(cols).unwrap();
    Matrix { name: format!("bench {dtype}"), dtype, rows, cols, range: 0..bytes, packed: Default::default() }
}

/// The weight layouts to measure: every format as stored in the file, and also prepacked (what
/// the engine runs on AVX-512 machines). Returns (name, matrix, bytes, whether prepacked).
fn layouts(rows: usize, cols: usize) -> Vec<(String, Matrix, Vec<u8>, bool)> {
    let mut out = Vec::new();
    for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        let w = quantized(dtype, rows, cols);
        if quire_kernels::can_prepack(dtype, rows) {
            let mut packed = vec![0; w.len()];
            quire_kernels::prepack(dtype, cols, &w, &mut packed);
            out.push((format!("{} prepacked", dtype.name()), matrix(dtype, rows, cols), packed, true));
        }
        out.push((dtype.name().to_string(), matrix(dtype, rows, cols), w, false));
    }
    out
}

/// Plain sequential reads with all threads: the ceiling for decode on this machine.
fn read_bandwidth(c: &mut Criterion) {
    use rayon::prelude::*;
    let buf: Vec<u64> = (0..(1usize << 30) / 8).map(|i| i as u64).collect();
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    g.sample_size(10);
    g.bench_function("read_1GiB", |b| {
        b.iter(|| {
            black_box(
                buf.par_chunks(1 << 16)
                    .map(|c| c.iter().fold(0u64, |a, &x| a ^ x))
                    .reduce(|| 0, |a, b| a ^ b),
            )
        })
    });
    g.finish();
}

/// One token times a 9728×2560 matrix; the weights rotate over copies larger than the L3 cache.
fn gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_2560x9728");
    for (name, m, one, prepacked) in layouts(ROWS, COLS) {
        let copies = (512usize << 20).div_ceil(one.len());
        let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * copies).collect();
        let x = values(3, COLS);
        let mut out = vec![0.0f32; ROWS];
        let mut scratch = MatmulScratch::default();
        let mut i = 0;
        g.throughput(Throughput::Bytes(one.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let w = &all[i * one.len()..(i + 1) * one.len()];
                i = (i + 1) % copies;
                matmul(&m, Weights { bytes: w, prepacked }, &x, &mut out, &mut scratch);
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// 512 tokens times a 9728×2560 matrix; throughput counts 2 operations per multiply-add.
fn gemm(c: &mut Criterion) {
    const BATCH: usize = 512;
    let mut g = c.benchmark_group("gemm_2560x9728_batch512");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * ROWS * COLS * BATCH) as u64));
    for (name, m, w, prepacked) in layouts(ROWS, COLS) {
        let x = values(3, COLS * BATCH);
        let mut out = vec![0.0f32; ROWS * BATCH];
        let mut scratch = MatmulScratch::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                matmul(&m, Weights { bytes: &w, prepacked }, &x, &mut out, &mut scratch);
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, read_bandwidth, gemv, gemm);
criterion_main!(benches);
