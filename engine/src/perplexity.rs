//! Perplexity with llama.cpp's method (`llama-perplexity`), so our figure is comparable with theirs:
//! cut the tokenized text into `floor(n / n_ctx)` non-overlapping windows, evaluate each from an empty
//! context, and score only the second half of each window: the logits at positions n_ctx/2 .. n_ctx-2
//! predict the tokens at n_ctx/2+1 .. n_ctx-1. PPL = exp(mean negative log-likelihood).

use anyhow::{bail, Result};

use crate::generate::Engine;
use crate::kv_cache::KvCache;
use crate::model::{Logits, RunState};
use crate::ops::log_softmax_at;

/// Result after each window: running perplexity over all windows so far.
#[derive(Clone, Debug)]
pub struct PerplexityChunk {
    pub index: usize,
    pub n_chunks: usize,
    pub ppl: f64,
}

/// Perplexity of `tokens` with windows of `n_ctx` tokens, prefilled `n_batch` at a time.
/// `on_chunk` sees the running value after each window. Returns the final perplexity.
pub fn perplexity(
    engine: &Engine,
    tokens: &[u32],
    n_ctx: usize,
    n_batch: usize,
    mut on_chunk: impl FnMut(&PerplexityChunk),
) -> Result<f64> {
    if n_ctx < 4 {
        bail!("context for perplexity must be at least 4 tokens");
    }
    let n_chunks = tokens.len() / n_ctx;
    if n_chunks == 0 {
        bail!("the text has {} tokens, fewer than one window of {n_ctx}", tokens.len());
    }
    let model = &engine.model;
    let vocab = model.config.vocab_size;
    let mut kv = KvCache::with_type(&model.config, n_ctx, engine.kv_type)?;
    let mut state = RunState::new();
    let first_scored = n_ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for chunk in 0..n_chunks {
        let window = &tokens[chunk * n_ctx..(chunk + 1) * n_ctx];
        kv.clear();
        let mut pos = 0;
        while pos < n_ctx {
            let end = (pos + n_batch.max(1)).min(n_ctx);
            // Only batches that reach the scored half need logits.
            let want = if end > first_scored { Logits::All } else { Logits::None };
            let logits = model.forward(&mut state, &mut kv, &window[pos..end], pos, want)?;
            if want == Logits::All {
                for p in pos.max(first_scored)..end.min(n_ctx - 1) {
                    let row = &logits[(p - pos) * vocab..(p - pos + 1) * vocab];
                    nll -= log_softmax_at(row, window[p + 1] as usize);
                    count += 1;
                }
            }
            pos = end;
        }
        on_chunk(&PerplexityChunk { index: chunk, n_chunks, ppl: (nll / count as f64).exp() });
    }
    Ok((nll / count as f64).exp())
}
