//! Kernel benchmarks: memory read bandwidth (the decode limit), quantized GEMV in weight GB/s on a
//! Qwen3-4B FFN matrix (9728 rows of 2560), and GEMM in GOPS for a 512-token batch — each through
//! `quire_engine::ops::matmul`, i.e. with activation quantization and the global thread pool.
//!
//! `cargo bench --bench kernels` (set RAYON_NUM_THREADS to pin the thread count).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quire_engine::ops::{matmul, MatmulScratch};
use quire_engine::weights::Matrix;
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

/// The weight layouts to measure: every format as stored in the file, and also prepacked (what the engine
/// runs on AVX-512 machines), each as `copies` matrices (rotating over copies larger than the L3 cache keeps
/// the weights coming from memory). Returns (name, matrices).
fn layouts(rows: usize, cols: usize, copies: impl Fn(usize) -> usize) -> Vec<(String, Vec<Matrix>)> {
    let mut out = Vec::new();
    for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        let w = quantized(dtype, rows, cols);
        let n = copies(w.len());
        let make = |prepack: bool| -> Vec<Matrix> {
            let name = format!("bench {dtype}");
            let ms: Vec<Matrix> =
                (0..n).map(|_| Matrix::in_memory(&name, dtype, rows, cols, w.clone())).collect();
            ms.iter().for_each(|m| assert_eq!(m.prepack_now(), prepack));
            ms
        };
        if quire_kernels::can_prepack(dtype, rows) {
            out.push((format!("{} prepacked", dtype.name()), make(true)));
        }
        out.push((dtype.name().to_string(), make(false)));
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
    for (name, ms) in layouts(ROWS, COLS, |bytes| (512usize << 20).div_ceil(bytes)) {
        let x = values(3, COLS);
        let mut out = vec![0.0f32; ROWS];
        let mut scratch = MatmulScratch::default();
        let mut i = 0;
        g.throughput(Throughput::Bytes((ROWS * ms[0].row_bytes()) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                matmul(&ms[i], &x, &mut out, &mut scratch);
                i = (i + 1) % ms.len();
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
    for (name, ms) in layouts(ROWS, COLS, |_| 1) {
        let x = values(3, COLS * BATCH);
        let mut out = vec![0.0f32; ROWS * BATCH];
        let mut scratch = MatmulScratch::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                matmul(&ms[0], &x, &mut out, &mut scratch);
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, read_bandwidth, gemv, gemm);
criterion_main!(benches);
