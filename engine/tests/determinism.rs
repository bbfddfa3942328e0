//! Bit-identical logits for any thread count: every output of every matmul and every attention head is
//! computed by one thread in a fixed order, however the work is split. Checked on the tiny model for every
//! tensor type (threads 1, 2 and 3, each splitting rows and tokens differently) and on the real model when
//! it is present.

mod common;

use common::*;
use quire_engine::kv_cache::KvCache;
use quire_engine::model::{Logits, Model, RunState};

/// All-position logits of `ids` (in batches of `batch`) and then of 4 single decoded tokens, on a pool of
/// `threads` threads.
fn logits(model: &Model, ids: &[u32], batch: usize, threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut kv = KvCache::new(&model.config, 512).unwrap();
        let mut st = RunState::new();
        let mut all = Vec::new();
        for chunk in ids.chunks(batch) {
            let pos = kv.len();
            all.extend(
                model.forward(&mut st, &mut kv, chunk, pos, Logits::All).unwrap().iter().map(|v| v.to_bits()),
            );
        }
        for t in [1u32, 2, 3, 4] {
            let pos = kv.len();
            all.extend(
                model.forward(&mut st, &mut kv, &[t], pos, Logits::Last).unwrap().iter().map(|v| v.to_bits()),
            );
        }
        all
    })
}

#[test]
fn thread_count_does_not_change_logits() {
    let reference = read_json("tiny-qwen3/reference.json");
    let ids = ids(&reference["prompts"]["long_random"]["ids"]);
    for ty in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] {
        let model = Model::open(fixture(&format!("tiny-qwen3-{ty}.gguf"))).unwrap();
        // 64-token batches take the token split (≥ 32 tokens), 9-token batches the row split.
        for batch in [64, 9] {
            let one = logits(&model, &ids, batch, 1);
            for threads in [2, 3] {
                assert!(
                    one == logits(&model, &ids, batch, threads),
                    "{ty}: batch {batch}, {threads} threads differ"
                );
            }
        }
    }
}

#[test]
fn real_model_logits_equal_for_one_and_two_threads() {
    let Some(path) = real_model() else { return };
    let model = Model::open(path).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 11) % 150_000).collect();
    assert!(logits(&model, &ids, 40, 1) == logits(&model, &ids, 40, 2), "real model: 1 vs 2 threads differ");
}
