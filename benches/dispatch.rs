//! What one parallel region costs: rayon's global pool (what Quire uses, its workers pinned by
//! `quire_engine::threads`) against a minimal spin-then-park barrier pool written here only to measure it.
//!
//! Decoding one token runs about 290 parallel regions on a Qwen3-4B shape (7 matmuls and the attention per
//! layer × 36, plus the output head; norms and RoPE of a single token run on the calling thread). Each region
//! here does almost nothing, so the time per iteration is the dispatch and join cost alone; multiplied by 290
//! it is the per-token overhead to set against a ≈ 130 ms token (see benches/RESULTS.md).
//!
//! Run: `cargo bench --bench dispatch`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rayon::prelude::*;

/// Spin this many times on the epoch before parking (≈ 50 µs): long enough to catch the next region of
/// a decode step, short enough not to burn a core between requests.
const SPINS: u32 = 20_000;

/// The minimal alternative: `n − 1` helper threads wait on an epoch counter (spinning, then parking);
/// the caller bumps it, does share 0 itself and waits until every helper has finished its share.
struct SpinPool {
    shared: Arc<Shared>,
    helpers: Vec<thread::JoinHandle<()>>,
}

struct Shared {
    epoch: AtomicUsize,
    done: AtomicUsize,
    stop: AtomicBool,
    sink: AtomicUsize,
}

impl SpinPool {
    fn new(n: usize) -> SpinPool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sink: AtomicUsize::new(0),
        });
        let helpers = (1..n)
            .map(|i| {
                let s = Arc::clone(&shared);
                thread::spawn(move || {
                    let mut seen = 0;
                    loop {
                        let mut spins = 0;
                        while s.epoch.load(Ordering::Acquire) == seen {
                            if s.stop.load(Ordering::Relaxed) {
                                return;
                            }
                            spins += 1;
                            if spins < SPINS {
                                std::hint::spin_loop();
                            } else {
                                thread::park_timeout(Duration::from_micros(100));
                            }
                        }
                        seen = s.epoch.load(Ordering::Acquire);
                        s.sink.fetch_add(black_box(i), Ordering::Relaxed);
                        s.done.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        SpinPool { shared, helpers }
    }

    /// One region: every thread does its (empty) share; returns when all have.
    fn region(&self) {
        let target = self.shared.done.load(Ordering::Acquire) + self.helpers.len();
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for h in &self.helpers {
            h.thread().unpark();
        }
        self.shared.sink.fetch_add(black_box(0), Ordering::Relaxed);
        while self.shared.done.load(Ordering::Acquire) < target {
            std::hint::spin_loop();
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn dispatch(c: &mut Criterion) {
    let threads = quire_engine::threads::init(None, None).expect("thread pool");
    let mut g = c.benchmark_group(format!("dispatch/{threads}_threads"));
    let mut out = vec![0usize; threads];
    g.bench_function("rayon_region", |b| {
        b.iter(|| out.par_iter_mut().enumerate().for_each(|(i, o)| *o = black_box(i)))
    });
    let pool = SpinPool::new(threads);
    g.bench_function("spin_park_region", |b| b.iter(|| pool.region()));
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
