//! A draft model: a small model with the same vocabulary as the one serving (Qwen2.5-Coder-0.5B for the
//! 1.5B, Qwen3-0.6B for Qwen3-4B) that guesses the next few tokens, greedily, from its own KV cache per
//! request. Its guesses only ever become drafts: the serving model verifies them ([`crate::speculate`]), so
//! the draft model changes how fast a reply comes, never what it is.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::generate::common_prefix;
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvType};
use crate::model::{LoadOptions, Logits, Model, RunState, SeqBatch};
use crate::ops::argmax;
use crate::speculate::CostModel;
use crate::tokenizer::{Tokenizer, VocabSpec};

/// Missing tokens a draft cache takes in the same pass as its first drafted position; more (a new prompt)
/// are fed one chunk of this size per step, so a draft model's prefill never stalls the other streams long.
pub const CATCH_UP_CHUNK: usize = 64;

/// A loaded draft model.
pub struct DraftModel {
    pub model: Model,
}

impl DraftModel {
    /// Loads the draft model at `path` for a model whose tokenizer is `target` and whose embedding has
    /// `target_rows` rows: refused, saying where they differ, unless both have the same tokens under the same
    /// ids (a draft is a list of token ids) and the draft can be fed every id the model can.
    pub fn load(
        path: &Path,
        target: &Tokenizer,
        target_rows: usize,
        opts: &LoadOptions,
    ) -> Result<DraftModel> {
        let what = || format!("draft model {}", path.display());
        let file = GgufFile::open(path).with_context(what)?;
        let spec = VocabSpec::from_metadata(file.metadata()).with_context(what)?;
        same_vocabulary(&spec.tokens, target).with_context(|| {
            format!("{} cannot draft for this model: its vocabulary differs", path.display())
        })?;
        let model = Model::load_with(file, opts).with_context(what)?;
        if model.config.vocab_size < target_rows {
            bail!(
                "{}: its embedding has {} rows, fewer than the model's {target_rows}: some tokens could not be fed to it",
                path.display(),
                model.config.vocab_size
            );
        }
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
        let common = common_prefix(&self.tokens, context);
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
/// the rounds' times by the number of jobs in them.
///
/// A cache far behind its context (a new prompt, a resumed request in another slot) takes one chunk of
/// [`CATCH_UP_CHUNK`] tokens per call, all such jobs in one pass, and drafts from the next call on: other
/// streams never wait for a draft model's whole prefill. A job the draft model would refuse (checked
/// before its pass, so it fails alone) gets no tokens and an empty cache: drafts are optional.
pub fn draft(
    draft: &DraftModel,
    state: &mut RunState,
    jobs: &mut [DraftJob],
    cost: &mut CostModel,
) -> Vec<Vec<u32>> {
    let model = &draft.model;
    let vocab = model.config.vocab_size;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    // what each job feeds in its first round (its missing context, then `next`) or to catch up
    let mut feed: Vec<Vec<u32>> = Vec::with_capacity(jobs.len());
    let mut behind: Vec<Vec<u32>> = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let missing = job.cache.sync(job.context);
        let (mut first, mut chunk) = (Vec::new(), Vec::new());
        if job.k > 0 && job.context.len() + job.k <= job.cache.kv.capacity() {
            if missing.len() > CATCH_UP_CHUNK {
                chunk = missing[..CATCH_UP_CHUNK].to_vec();
            } else {
                first = [missing, &[job.next]].concat();
            }
        }
        let refused = |tokens: &[u32]| !tokens.is_empty() && model.check_seq(&job.cache.kv, tokens).is_err();
        if refused(&first) || refused(&chunk) {
            job.cache.forget();
            (first, chunk) = (Vec::new(), Vec::new());
        }
        feed.push(first);
        behind.push(chunk);
    }
    let catching_up: Vec<usize> = (0..jobs.len()).filter(|&i| !behind[i].is_empty()).collect();
    if !catching_up.is_empty() {
        let ok = pass(model, state, jobs, &catching_up, &behind, Logits::None).is_some();
        for &i in &catching_up {
            if ok {
                jobs[i].cache.tokens.extend_from_slice(&behind[i]);
            } else {
                jobs[i].cache.forget();
            }
        }
    }
    let rounds = jobs.iter().zip(&feed).filter(|(_, f)| !f.is_empty()).map(|(j, _)| j.k).max().unwrap_or(0);
    for round in 0..rounds {
        let active: Vec<usize> =
            (0..jobs.len()).filter(|&i| !feed[i].is_empty() && jobs[i].k > round).collect();
        if active.is_empty() {
            break;
        }
        let t = Instant::now();
        let Some(logits) = pass(model, state, jobs, &active, &feed, Logits::Last) else {
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

/// One draft-model pass feeding `tokens[i]` to each job `i` of `which` (ascending), in one batch; the
/// logits asked for, or `None` if the model refused.
fn pass(
    model: &Model,
    state: &mut RunState,
    jobs: &mut [DraftJob],
    which: &[usize],
    tokens: &[Vec<u32>],
    want: Logits,
) -> Option<Vec<f32>> {
    let mut seqs: Vec<SeqBatch> = Vec::with_capacity(which.len());
    let mut next = which.iter().peekable();
    for (i, job) in jobs.iter_mut().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            seqs.push(SeqBatch { kv: &mut job.cache.kv, tokens: &tokens[i], want });
        }
    }
    model.forward_multi(state, &mut seqs).ok().map(|l| l.to_vec())
}
