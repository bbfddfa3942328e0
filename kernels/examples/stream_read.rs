//! What this machine's memory can deliver to a reading kernel: the decode limit. Each of T threads streams
//! its own contiguous 1/T of a buffer far larger than the caches (as the decode matmuls split rows), with
//! 512-bit loads folded by XOR (one cheap operation per load, so the loads are the only limit), with and
//! without software prefetch ahead of the loads (what the matmul kernels do). Prints GB/s per variant, best
//! of the repetitions; `benches/RESULTS.md` compares decode's weight bytes per second with it.
//!
//! `cargo run --release -p quire-kernels --example stream_read [GiB] [reps] [threads]` (default threads: 1
//! and 2). The last line, `best N GB/s`, is the fastest variant at the largest thread count (what
//! `scripts/bench-vs-llamacpp.sh` reads).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::time::Instant;

/// XOR of every 64-byte line of `buf`, prefetching `ahead` bytes in front (0: no software prefetch).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fold(buf: &[u8], ahead: usize) -> u64 {
    let mut acc = [_mm512_setzero_si512(); 4];
    for (i, c) in buf.chunks_exact(256).enumerate() {
        if ahead > 0 {
            let p = c.as_ptr().wrapping_add(ahead);
            // a prefetch is only a hint and never faults, wherever it points
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line).cast());
            }
        }
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` has 256 readable bytes, so `64j..64j+64` is in bounds; no alignment requirement.
            let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(64 * j).cast()) };
            *a = _mm512_xor_si512(*a, v);
        }
        std::hint::black_box(i);
    }
    let x = _mm512_xor_si512(_mm512_xor_si512(acc[0], acc[1]), _mm512_xor_si512(acc[2], acc[3]));
    _mm512_reduce_add_epi64(x) as u64
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("stream_read needs an x86-64 CPU with AVX-512 F");
    std::process::exit(2);
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("stream_read needs AVX-512 F");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let gib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let thread_counts: Vec<usize> = match args.get(3).and_then(|s| s.parse().ok()) {
        Some(t) => vec![std::cmp::max(t, 1)],
        None => vec![1, 2],
    };
    let buf: Vec<u8> = (0..gib << 30).map(|i| ((i * 131) >> 7) as u8).collect();
    let mut best_rate = 0.0f64;
    for &threads in &thread_counts {
        best_rate = 0.0;
        for ahead in [0usize, 1024, 4096, 8192] {
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for part in buf.chunks(buf.len().div_ceil(threads)) {
                        // SAFETY: AVX-512 F was detected above.
                        s.spawn(move || std::hint::black_box(unsafe { fold(part, ahead) }));
                    }
                });
                best = best.min(t.elapsed().as_secs_f64());
            }
            let rate = buf.len() as f64 / best / 1e9;
            best_rate = best_rate.max(rate);
            println!("threads {threads}  prefetch {ahead:>5} B ahead  {rate:6.2} GB/s");
        }
    }
    println!("best {best_rate:.2} GB/s");
}
