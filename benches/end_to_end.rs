//! End-to-end decode and prefill on a model file, by default the synthetic Qwen3-4B Q4_0 file
//! (`quire synth --preset qwen3-4b DIR && quire convert DIR --type q4_0 -o FILE`), named by
//! `$QUIRE_BENCH_MODEL`. Without that variable (or file) the benchmarks are skipped.
//!
//! `QUIRE_BENCH_MODEL=/path/qwen3-4b-q4_0.gguf cargo bench --bench end_to_end`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quire_engine::kv_cache::KvCache;
use quire_engine::model::{Logits, Model, RunState};

fn model() -> Option<Model> {
    let path = std::env::var_os("QUIRE_BENCH_MODEL")?;
    match Model::open(&path) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("skipping end-to-end benchmarks: {e:#}");
            None
        }
    }
}

fn end_to_end(c: &mut Criterion) {
    let Some(model) = model() else {
        eprintln!("skipping end-to-end benchmarks: set QUIRE_BENCH_MODEL to a GGUF file");
        return;
    };
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..128u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut g = c.benchmark_group("qwen3_4b");
    g.sample_size(10);

    // One decoded token at position 128 (the cache holds the prompt).
    let mut kv = KvCache::new(&model.config, 256).unwrap();
    let mut st = RunState::new();
    model.forward(&mut st, &mut kv, &prompt, 0, Logits::Last).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_token_at_128", |b| {
        b.iter(|| {
            kv.truncate(prompt.len());
            black_box(model.forward(&mut st, &mut kv, &[42], prompt.len(), Logits::Last).unwrap());
        })
    });

    // A 128-token prompt from an empty cache.
    g.throughput(Throughput::Elements(prompt.len() as u64));
    g.bench_function("prefill_128", |b| {
        b.iter(|| {
            kv.clear();
            black_box(model.forward(&mut st, &mut kv, &prompt, 0, Logits::Last).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
