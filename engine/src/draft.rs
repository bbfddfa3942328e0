//! A draft model: a small model with the same vocabulary as the one serving (Qwen2.5-Coder-0.5B for the
//! 1.5B, Qwen3-0.6B for Qwen3-4B) that guesses the next few tokens, greedily, from its own KV cache per
//! request. Its guesses only ever become drafts: the serving model verifies them ([`crate::speculate`]), so
//! the draft model changes how fast a reply comes, never what it is.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvType};
use crate::model::{LoadOptions, Logits, Model, RunState, SeqBatch};
use crate::ops::argmax;
use crate::speculate::CostModel;
use crate::tokenizer::{Tokenizer, VocabSpec};

/// Missing tokens a draft cache takes in the same pass as its first drafted position; more (a new prompt)
/// are fed first, in chunks of this size.
pub const CATCH_UP_CHUNK: usize = 256;

/// A loaded draft model.
pub struct DraftModel {
    pub model: Model,
}

impl DraftModel {
    /// Loads the draft model at `path` for a model whose tokenizer is `target`: refused, saying where they
    /// differ, unless both have the same tokens under the same ids (a draft is a list of token ids).
    pub fn load(path: &Path, target: &Tokenizer, opts: &LoadOptions) -> Result<DraftModel> {
        let what = || format!("draft model {}", path.display());
        let file = GgufFile::open(path).with_context(what)?;
        let spec = VocabSpec::from_metadata(file.metadata()).with_context(what)?;
        same_vocabulary(&spec.tokens, target).with_context(|| {
            format!("{} cannot draft for this model: its vocabulary differs", path.display())
        })?;
        let model = Model::load_with(file, opts).with_context(what)?;
        Ok(DraftModel { model })
    }

    /// Bytes of its file (mapped, as the serving model's).
    pub fn file_len(&self) -> usize {
        self.model.file.file_len()
    }
}

/// Same tokens under the same ids (the draft's token strings against the model's tokenizer), or the first
/// difference.
fn same_vocabulary(draft: &[String], target: &Tokenizer) -> Result<()> {
    if draft.len() != target.vocab_size() {
        bail!("it has {} tokens, the model {}", draft.len(), target.vocab_size());
    }
    for (id, d) in draft.iter().enumerate() {
        let t = target.id_to_token(id as u32).unwrap_or_default();
        if *d != t {
            bail!("token {id} is {d:?} there and {t:?} here");
        }
    }
    Ok(())
}

/// One request's draft state: the draft model's KV cache and the tokens it holds.
pub struct DraftCache {
    kv: KvCache,
    tokens: Vec<u32>,
}

impl DraftCache {
    pub fn new(draft: &DraftModel, n_ctx: usize, kv_type: KvType) -> Result<DraftCache> {
        Ok(DraftCache { kv: KvCache::with_type(&draft.model.config, n_ctx, kv_type)?, tokens: Vec::new() })
    }

    /// Keeps the longest common prefix with `context` and returns what is missing of it.
    fn sync<'c>(&mut self, context: &'c [u32]) -> &'c [u32] {
        let common = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count();
        self.kv.truncate(common);
        self.tokens.truncate(common);
        &context[common..]
    }

    fn forget(&mut self) {
        self.kv.clear();
        self.tokens.clear();
    }
}

/// One request's part of a drafting round: its cache, the tokens its serving cache holds, the token it
/// feeds next, and how many tokens to draft after it.
pub struct DraftJob<'a> {
    pub cache: &'a mut DraftCache,
    pub context: &'a [u32],
    pub next: u32,
    pub k: usize,
}

/// Drafts `k` tokens greedily for each job: each cache first catches up with its context and `next`, then
/// every round feeds each job's last drafted token, all jobs in one forward call per round. `cost` learns
/// the rounds' times by the number of jobs in them. A job whose draft fails (which the checks below make
/// unreachable) gets no tokens and an empty cache: drafts are optional.
pub fn draft(
    draft: &DraftModel,
    state: &mut RunState,
    jobs: &mut [DraftJob],
    cost: &mut CostModel,
) -> Vec<Vec<u32>> {
    let model = &draft.model;
    let vocab = model.config.vocab_size;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    // what each job feeds in its first round: the tail of its missing context, then `next`
    let mut feed: Vec<Vec<u32>> = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let missing = job.cache.sync(job.context);
        let mut first = Vec::new();
        if job.k > 0 && job.context.len() + job.k <= job.cache.kv.capacity() {
            let (bulk, tail) = missing.split_at(missing.len().saturating_sub(CATCH_UP_CHUNK));
            let mut ok = true;
            for chunk in bulk.chunks(CATCH_UP_CHUNK) {
                let pos = job.cache.tokens.len();
                ok = model.forward(state, &mut job.cache.kv, chunk, pos, Logits::None).is_ok();
                if !ok {
                    break;
                }
                job.cache.tokens.extend_from_slice(chunk);
            }
            if ok {
                first.extend_from_slice(tail);
                first.push(job.next);
            } else {
                job.cache.forget();
            }
        }
        feed.push(first);
    }
    let rounds = jobs.iter().zip(&feed).filter(|(_, f)| !f.is_empty()).map(|(j, _)| j.k).max().unwrap_or(0);
    for round in 0..rounds {
        let active: Vec<usize> =
            (0..jobs.len()).filter(|&i| !feed[i].is_empty() && jobs[i].k > round).collect();
        if active.is_empty() {
            break;
        }
        let t = Instant::now();
        let result = {
            let mut seqs: Vec<SeqBatch> = Vec::with_capacity(active.len());
            let mut next_active = active.iter().peekable();
            for (i, job) in jobs.iter_mut().enumerate() {
                if next_active.peek() == Some(&&i) {
                    next_active.next();
                    seqs.push(SeqBatch { kv: &mut job.cache.kv, tokens: &feed[i], want: Logits::Last });
                }
            }
            model.forward_multi(state, &mut seqs).map(|l| l.to_vec())
        };
        let Ok(logits) = result else {
            for &i in &active {
                jobs[i].cache.forget();
                feed[i].clear();
            }
            break;
        };
        if active.iter().all(|&i| feed[i].len() == 1) {
            cost.record(active.len(), t.elapsed());
        }
        for (row, &i) in logits.chunks_exact(vocab).zip(&active) {
            jobs[i].cache.tokens.extend_from_slice(&feed[i]);
            let token = argmax(row) as u32;
            out[i].push(token);
            feed[i] = vec![token];
        }
    }
    out
}
