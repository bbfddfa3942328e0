//! Generation: a loaded model with its tokenizer and chat template (`Engine`), and a conversation's KV
//! cache with the token loop that prefills a prompt and samples until a stop (`Session`).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::chat::{ChatTemplate, Message, RenderOptions};
use crate::draft::{self, DraftCache, DraftJob, DraftModel};
use crate::gguf::GgufFile;
use crate::grammar::{Constraint, Grammars};
use crate::kv_cache::{KvCache, KvType};
use crate::model::{LoadOptions, Logits, Model, RunState};
use crate::sampler::{Sampler, SamplerConfig, StopMatcher, TokenLogprob};
use crate::speculate::{self, Acceptance, CostModel, Lookup, Offer, SpecConfig, SpecCounts};
use crate::tokenizer::{StreamDecoder, Tokenizer, VocabSpec};

/// Tokens fed to the model per forward call while prefilling a prompt.
pub const DEFAULT_BATCH: usize = 256;

/// A model ready to serve: weights, tokenizer and chat template from one GGUF file.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Element type of every KV cache this engine allocates (sessions, scheduler slots, perplexity):
    /// f16 unless set (`--kv-type`).
    pub kv_type: KvType,
    /// Speculative decoding in sessions and schedulers of this engine (prompt lookup unless set: `--spec`).
    pub spec: SpecConfig,
    /// A small model that drafts tokens too (`--draft`; [`Engine::load_draft`]).
    pub draft: Option<DraftModel>,
    /// The grammar compiler for this vocabulary, built on first use ([`Engine::grammars`]).
    grammars: OnceLock<std::result::Result<Grammars, String>>,
}

impl Engine {
    /// Load everything from a GGUF file (weights stay memory-mapped), with the default [`LoadOptions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Engine> {
        Engine::load_with(path, &LoadOptions::default())
    }

    /// [`Engine::load`] with `opts`.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Engine> {
        let file = GgufFile::open(path.as_ref())?;
        let spec = VocabSpec::from_metadata(file.metadata())
            .with_context(|| format!("{}: cannot build the tokenizer", path.as_ref().display()))?;
        let tokenizer = Tokenizer::from_vocab(&spec)?;
        let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let template = ChatTemplate::new(
            file.get_str("tokenizer.chat_template"),
            &token_text(spec.bos_id),
            &token_text(spec.eos_id),
        )
        .context("cannot compile the model's chat template")?;
        let model = Model::load_with(file, opts)?;
        if tokenizer.vocab_size() > model.config.vocab_size {
            bail!(
                "tokenizer has {} tokens but the embedding has only {} rows",
                tokenizer.vocab_size(),
                model.config.vocab_size
            );
        }
        Ok(Engine {
            model,
            tokenizer,
            template,
            kv_type: KvType::default(),
            spec: SpecConfig::default(),
            draft: None,
            grammars: OnceLock::new(),
        })
    }

    /// Load a draft model for speculative decoding (refused unless its vocabulary is this model's).
    pub fn load_draft(&mut self, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<()> {
        let rows = self.model.config.vocab_size;
        self.draft = Some(DraftModel::load(path.as_ref(), &self.tokenizer, rows, opts)?);
        Ok(())
    }

    /// The draft model's cost model, before any measurement: its passes priced by the file sizes' ratio.
    pub fn draft_cost(&self) -> CostModel {
        match &self.draft {
            Some(d) => CostModel::relative(d.file_len() as f64 / self.model.file.file_len().max(1) as f64),
            None => CostModel::default(),
        }
    }

    /// The draft model, when there is one and speculation is on.
    pub fn active_draft(&self) -> Option<&DraftModel> {
        self.draft.as_ref().filter(|_| self.spec.limit() > 0)
    }

    /// A draft model's cache for one request with room for `n_ctx` tokens, when there is an active draft
    /// model (none if it cannot be made: drafts are optional, and the memory plan counted it).
    pub fn draft_cache(&self, n_ctx: usize) -> Option<DraftCache> {
        DraftCache::new(self.active_draft()?, n_ctx, self.kv_type).ok()
    }

    /// The grammar compiler for constrained decoding, built on first use (its token trie costs a few hundred
    /// milliseconds for a 152k vocabulary, which only requests with a grammar should pay).
    pub fn grammars(&self) -> Result<&Grammars> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(&self.tokenizer, self.model.config.vocab_size).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("constrained decoding is unavailable for this model: {e}"))
    }

    /// Qwen3's reasoning block for a reply to `prompt`, when the model may reason before answering: the
    /// vocabulary has `<think>`/`</think>`, and either the prompt ends inside an open block (templates that
    /// open it for the model) or `may_open` (the chat template lets this model think and the request did not
    /// turn it off).
    pub fn thinking(&self, prompt: &[u32], may_open: bool) -> Option<Thinking> {
        let open = self.tokenizer.token_to_id("<think>")?;
        let close = self.tokenizer.token_to_id("</think>")?;
        let last = |id: u32| prompt.iter().rposition(|&t| t == id);
        let started = match (last(open), last(close)) {
            (Some(o), Some(c)) => o > c,
            (Some(_), None) => true,
            _ => false,
        };
        (started || may_open).then_some(Thinking { open, close, started })
    }

    /// Render a conversation with the model's chat template and tokenize it.
    pub fn chat_tokens(&self, messages: &[Message], opts: &RenderOptions) -> Result<Vec<u32>> {
        let text = self.template.render(messages, opts)?;
        self.tokenizer.encode(&text)
    }

    /// A fresh session with room for `n_ctx` tokens of context.
    pub fn session(&self, n_ctx: usize) -> Result<Session<'_>> {
        Session::new(self, n_ctx)
    }
}

/// Why a prompt cannot be generated from: empty, or too long for the context. One rule for every caller
/// (sessions, the scheduler, the server): a prompt must leave at least one position for the reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("the prompt is empty")]
    Empty,
    #[error(
        "the prompt is {prompt_tokens} tokens but the context holds only {n_ctx} \
         (at least one position must be left for the reply): raise --ctx or shorten the prompt"
    )]
    TooLong { prompt_tokens: usize, n_ctx: usize },
}

/// Checks that a prompt of `prompt_tokens` can be generated from in a context of `n_ctx` tokens.
pub fn check_prompt(prompt_tokens: usize, n_ctx: usize) -> Result<(), PromptError> {
    match prompt_tokens {
        0 => Err(PromptError::Empty),
        p if p >= n_ctx => Err(PromptError::TooLong { prompt_tokens: p, n_ctx }),
        _ => Ok(()),
    }
}

/// How many leading tokens of `prompt` a cache holding `held` can keep: their common prefix, less the last
/// prompt token, which is always recomputed because its logits are needed.
pub fn reusable_prefix(held: &[u32], prompt: &[u32]) -> usize {
    common_prefix(held, prompt).min(prompt.len().saturating_sub(1))
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop strings: generation ends before the first occurrence, which is not emitted.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and those of this many most likely alternatives
    /// ([`TokenLogprob`]); `None`: none.
    pub logprobs: Option<usize>,
    /// What the reply must match (from [`Grammars::compile`]); `None`: free text.
    pub constraint: Option<Constraint>,
    /// The model may reason first ([`Engine::thinking`]): the reasoning is free and the constraint starts
    /// after it.
    pub thinking: Option<Thinking>,
    /// Apply `constraint` only after a trigger token, until the grammar is complete; the rest of the reply
    /// is free (`tool_choice: "auto"`: a call's body after `<tool_call>`).
    pub constraint_after: Option<Trigger>,
    /// What the caller expects the reply to be, mostly (OpenAI's Predicted Outputs: the file being edited),
    /// tokenized: drafts for speculative decoding. It changes how fast the reply comes, never what it is.
    pub prediction: Vec<u32>,
}

/// When a lazy constraint starts: after `token` outside a reasoning block, afresh each time (`repeat`) or
/// once, the reply ending when that block is complete (`parallel_tool_calls: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub token: u32,
    pub repeat: bool,
}

/// A reasoning block's delimiting tokens, and whether the prompt already opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thinking {
    pub open: u32,
    pub close: u32,
    pub started: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            constraint: None,
            thinking: None,
            constraint_after: None,
            prediction: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller's callback asked to stop (client went away).
    Cancelled,
}

/// Counts and timings of one generation.
#[derive(Clone, Debug)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the previous turn instead of recomputed.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    pub finish: FinishReason,
    /// The generated token ids (including a final end-of-generation token, if any).
    pub tokens: Vec<u32>,
    /// Speculative decoding's drafted and accepted tokens.
    pub spec: SpecCounts,
}

impl GenerationStats {
    pub fn prompt_tps(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prompt_secs.max(1e-9)
    }
    pub fn gen_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.gen_secs.max(1e-9)
    }
}

/// One conversation's state: the KV cache and the tokens it holds.
pub struct Session<'e> {
    engine: &'e Engine,
    kv: KvCache,
    state: RunState,
    /// Tokens whose keys and values are in `kv`, in order.
    tokens: Vec<u32>,
    n_batch: usize,
    /// Measured pass times, for how much to draft ([`speculate::plan`]).
    cost: CostModel,
    /// With a draft model: its cache, scratch and measured pass times.
    drafter: Option<Drafter>,
}

/// A session's draft model state.
struct Drafter {
    cache: DraftCache,
    state: RunState,
    cost: CostModel,
}

impl<'e> Session<'e> {
    pub fn new(engine: &'e Engine, n_ctx: usize) -> Result<Session<'e>> {
        let kv = KvCache::with_type(&engine.model.config, n_ctx, engine.kv_type)?;
        let drafter = engine.draft_cache(n_ctx).map(|cache| Drafter {
            cache,
            state: RunState::new(),
            cost: engine.draft_cost(),
        });
        Ok(Session {
            engine,
            kv,
            state: RunState::new(),
            tokens: Vec::new(),
            n_batch: DEFAULT_BATCH,
            cost: CostModel::default(),
            drafter,
        })
    }

    /// Tokens whose keys and values are in the cache.
    pub fn n_cached(&self) -> usize {
        debug_assert_eq!(self.tokens.len(), self.kv.len());
        self.kv.len()
    }

    /// The context size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.kv.capacity()
    }

    /// Tokens fed per forward call during prefill.
    pub fn set_batch(&mut self, n_batch: usize) {
        self.n_batch = n_batch.max(1);
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.kv.clear();
        self.tokens.clear();
    }

    /// Bring the cache to exactly `prompt`, reusing the longest common prefix with what it holds, and
    /// return the logits after the last prompt token plus the number of reused tokens.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        check_prompt(prompt.len(), self.kv.capacity())?;
        let reuse = reusable_prefix(&self.tokens, prompt);
        self.kv.truncate(reuse);
        self.tokens.truncate(reuse);
        let model = &self.engine.model;
        let mut logits = Vec::new();
        let rest = &prompt[reuse..];
        let n_chunks = rest.len().div_ceil(self.n_batch);
        for (i, chunk) in rest.chunks(self.n_batch).enumerate() {
            let want = if i + 1 == n_chunks { Logits::Last } else { Logits::None };
            let out = model.forward(&mut self.state, &mut self.kv, chunk, self.tokens.len(), want)?;
            self.tokens.extend_from_slice(chunk);
            if want == Logits::Last {
                logits = out.to_vec();
            }
        }
        Ok((logits, reuse))
    }

    /// Prefill `prompt`, then sample until an end-of-generation token, a stop string, `max_tokens` or a full
    /// context. `on_text` receives each new piece of text (whole UTF-8 characters, stop strings withheld);
    /// returning `ControlFlow::Break` cancels. With speculation on ([`Engine::spec`]) a step may feed drafted
    /// tokens too ([`speculate`]); the text is the same.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats> {
        params.sampler.validate()?;
        let t0 = Instant::now();
        let (mut logits, cached) = self.prefill(prompt)?;
        let prompt_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let cap = self.kv.capacity();
        let vocab = self.engine.model.config.vocab_size;
        let mut gen = Generation::new(&self.engine.tokenizer, params);
        let mut spec = Speculation::new(params, vocab);
        let mut steps = vec![gen.accept(&mut logits, &self.tokens, cap - self.tokens.len())?];
        'outer: loop {
            for (j, step) in steps.iter().enumerate() {
                if !step.text.is_empty() && on_text(&step.text).is_break() {
                    gen.cancel(steps.len() - j - 1);
                    spec.cancelled(j + 1);
                    break 'outer;
                }
            }
            let last = steps.last().expect("every step draws a token");
            if last.done {
                break;
            }
            let next = last.token;
            let fed =
                spec.draft(&mut self.tokens, next, &gen, cap, self.engine, &self.cost, self.drafter.as_mut());
            let t = Instant::now();
            let want = speculate::logits_wanted(&fed);
            let base = self.tokens.len();
            let mut rows =
                self.engine.model.forward(&mut self.state, &mut self.kv, &fed, base, want)?.to_vec();
            let v = speculate::verify(&mut gen, &mut rows, vocab, &fed, &mut self.tokens, cap);
            // the step's cost: the pass and the sampling of every row it verified
            self.cost.record(fed.len(), t.elapsed());
            // the cache keeps what verification kept, also when it failed part way
            self.kv.truncate(self.tokens.len());
            let v = v?;
            spec.verified(&fed, &v);
            steps = v.steps;
        }
        Ok(GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: cached,
            generated_tokens: gen.tokens.len(),
            prompt_secs,
            gen_secs: t1.elapsed().as_secs_f64(),
            finish: gen.finish.unwrap_or(FinishReason::Length),
            tokens: gen.tokens,
            spec: spec.counts,
        })
    }
}

/// One request's speculation: where its drafts come from, how often they were right, what they saved.
pub struct Speculation {
    lookup: Lookup,
    acceptance: Acceptance,
    /// The last draft on offer and its kind (see [`speculate::Draft`]; 0: the draft model's, whose tokens
    /// come once the plan says how many), to learn from once it is verified.
    offered: speculate::Draft,
    vocab: usize,
    /// Drafts accepted in the last verified step (its first steps are theirs).
    last_accepted: usize,
    pub counts: SpecCounts,
}

impl Speculation {
    /// For a request with `params`, in a model of `vocab` tokens (a predicted output's ids outside it, which
    /// only an engine caller can pass, are dropped: a draft must be a token the model can be fed).
    pub fn new(params: &GenerateParams, vocab: usize) -> Speculation {
        let prediction = params.prediction.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        Speculation {
            lookup: Lookup::new(prediction),
            acceptance: Acceptance::default(),
            offered: Default::default(),
            vocab,
            last_accepted: 0,
            counts: SpecCounts::default(),
        }
    }

    /// What a plan for this request alone would feed after `context` (the tokens in a cache of `capacity`):
    /// `next`, then the drafted tokens on offer ([`Speculation::offer`]) worth verifying by `cost`, drafted
    /// by the draft model when its offer wins.
    #[allow(clippy::too_many_arguments)]
    fn draft(
        &mut self,
        context: &mut Vec<u32>,
        next: u32,
        gen: &Generation,
        capacity: usize,
        engine: &Engine,
        cost: &CostModel,
        drafter: Option<&mut Drafter>,
    ) -> Vec<u32> {
        let cfg = &engine.spec;
        let none = CostModel::default();
        let draft_cost = drafter.as_ref().map_or(&none, |d| &d.cost);
        let model = drafter.is_some().then_some((cost, draft_cost));
        let offer = self.offer(context, next, cfg, gen, capacity, model);
        let k = speculate::choose(cfg, &[offer], cost, draft_cost)[0];
        if let (true, Some(model), Some(d)) = (offer.model && k > 0, &engine.draft, drafter) {
            let mut jobs = [DraftJob { cache: &mut d.cache, context, next, k }];
            let tokens = draft::draft(model, &mut d.state, &mut jobs, &mut d.cost);
            self.set_model_draft(tokens.into_iter().next().unwrap_or_default());
        }
        self.fed(next, k)
    }

    /// Proposes tokens to follow `context` (the tokens in a cache of `capacity`) and `next`, and says what
    /// they are worth: at most `cfg`'s limit, and no more than `gen` may still draw after `next` or the
    /// cache has room for after it. With a draft model (`model`: the serving and the draft model's cost
    /// models), its offer replaces lookup's when lookup has nothing, or only a one-token match expected to
    /// yield fewer tokens per second (lookup drafts are free, the model's cost a pass each); the model's
    /// tokens then come from
    /// [`Speculation::set_model_draft`].
    pub fn offer(
        &mut self,
        context: &mut Vec<u32>,
        next: u32,
        cfg: &SpecConfig,
        gen: &Generation,
        capacity: usize,
        model: Option<(&CostModel, &CostModel)>,
    ) -> Offer {
        let limit = cfg.limit().min(gen.remaining() - 1).min(capacity - context.len() - 1);
        context.push(next);
        self.offered = self.lookup.propose(context, limit);
        context.pop();
        let lookup = Offer {
            rate: self.acceptance.rate(self.offered.kind),
            max: self.offered.tokens.len(),
            model: false,
        };
        let Some((target, draft)) = model.filter(|_| limit > 0) else { return lookup };
        let by_model = Offer { rate: self.acceptance.rate(0), max: limit, model: true };
        // A match of two tokens or more is a copy in progress: free, and the draft model would first have
        // to catch up with the tokens lookup drafted (which its measured pass times do not include).
        let better = match (
            speculate::expected_rate(lookup, target, draft),
            speculate::expected_rate(by_model, target, draft),
        ) {
            _ if lookup.max == 0 => true,
            _ if self.offered.kind >= 2 => false,
            (Some(l), Some(m)) => m > l,
            _ => lookup.rate < by_model.rate,
        };
        if better {
            self.lookup.forget();
            self.offered = speculate::Draft { tokens: Vec::new(), kind: 0 };
            return by_model;
        }
        lookup
    }

    /// The draft model's tokens for the offer it made (cut before any id the serving model lacks).
    pub fn set_model_draft(&mut self, mut tokens: Vec<u32>) {
        if let Some(bad) = tokens.iter().position(|&t| t as usize >= self.vocab) {
            tokens.truncate(bad);
        }
        self.offered.tokens = tokens;
    }

    /// What to feed: `next`, then the first `k` drafted tokens on offer (fewer if the draft model drew
    /// fewer).
    pub fn fed(&self, next: u32, k: usize) -> Vec<u32> {
        let k = k.min(self.offered.tokens.len());
        let mut fed = Vec::with_capacity(k + 1);
        fed.push(next);
        fed.extend_from_slice(&self.offered.tokens[..k]);
        fed
    }

    /// The consumer left after `delivered` steps of the last verified step: accepted drafts it never got
    /// are not counted as accepted (they are not in the reply). Returns how many were taken back.
    pub fn cancelled(&mut self, delivered: usize) -> usize {
        let dropped = self.last_accepted.saturating_sub(delivered);
        self.counts.accepted -= dropped;
        self.last_accepted -= dropped;
        dropped
    }

    /// Learns from a verified step: `fed` was fed, and `v` is what verification found.
    pub fn verified(&mut self, fed: &[u32], v: &speculate::Verified) {
        let (k, kind, accepted) = (fed.len() - 1, self.offered.kind, v.accepted);
        let last = v.steps.last().expect("a verified step draws a token");
        // A draft equal to a token that ended generation (a stop, max_tokens) was right, though unused.
        let right = accepted + usize::from(last.done && fed.get(v.kept) == Some(&last.token));
        self.acceptance.observe(kind, right, k);
        self.counts.add(SpecCounts { drafted: k, accepted });
        self.last_accepted = accepted;
        if kind > 0 {
            self.lookup.accepted(accepted);
        }
        // When every fed draft was accepted, the token drawn after them tells, for free, whether the next
        // token on offer was right: the rate stays measured where the plan drafted less than was offered
        // (or nothing at all).
        if accepted == k && !last.done {
            if let Some(&d) = self.offered.tokens.get(k) {
                self.acceptance.observe(kind, usize::from(last.token == d), 1);
            }
        }
    }
}

/// One request's decoding state, separate from the model call so a scheduler can batch the model calls of
/// many requests: give it the logits for the next position, get back the sampled token, the text it
/// completes, and whether generation is over.
pub struct Generation<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    penalty_window: usize,
    /// `GenerateParams::logprobs`, and the raw logits kept for them (the sampler's penalties edit its input).
    logprobs: Option<usize>,
    raw: Vec<f32>,
    /// The constraint in force, if any.
    constraint: Option<Constraint>,
    /// `GenerateParams::constraint_after`: what starts a fresh copy of the constraint.
    lazy: Option<(Trigger, Constraint)>,
    /// With a lazy constraint and a reasoning model: inside `<think>…</think>`, where triggers do not count.
    lazy_thinking: Option<(Thinking, bool)>,
    phase: Phase,
    /// Tokens generated so far (a final end-of-generation token included).
    pub tokens: Vec<u32>,
    /// Set once generation is over.
    pub finish: Option<FinishReason>,
}

/// Where a constrained reply is: the constraint applies from the first token (`Constrained`), or the model may
/// first open a reasoning block (`MayThink`: the grammar's tokens or `<think>`), is inside one (`Thinking`:
/// free until `</think>`), or there is no constraint (`Free`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    MayThink(Thinking),
    Thinking(Thinking),
    Constrained,
}

/// The outcome of one `Generation::accept`.
pub struct Step {
    /// The sampled token; feed it to the model unless `done`.
    pub token: u32,
    /// Text to show now (may be empty).
    pub text: String,
    pub done: bool,
    /// The token's log-probabilities when asked for (never for an end-of-generation token that ends it).
    pub logprob: Option<TokenLogprob>,
}

impl<'t> Generation<'t> {
    pub fn new(tokenizer: &'t Tokenizer, params: &GenerateParams) -> Generation<'t> {
        Generation {
            tokenizer,
            sampler: Sampler::new(params.sampler.clone()),
            decoder: StreamDecoder::new(tokenizer, true),
            stops: StopMatcher::new(params.stop.clone()),
            max_tokens: params.max_tokens,
            ignore_eos: params.ignore_eos,
            penalty_window: params.sampler.penalty_last_n.max(1),
            logprobs: params.logprobs,
            raw: Vec::new(),
            constraint: params.constraint.clone().filter(|_| params.constraint_after.is_none()),
            lazy: params.constraint_after.zip(params.constraint.clone()),
            lazy_thinking: params
                .thinking
                .filter(|_| params.constraint_after.is_some())
                .map(|t| (t, t.started)),
            phase: match (&params.constraint, params.thinking) {
                _ if params.constraint_after.is_some() => Phase::Free,
                (None, _) => Phase::Free,
                (Some(_), None) => Phase::Constrained,
                (Some(_), Some(t)) if t.started => Phase::Thinking(t),
                (Some(_), Some(t)) => Phase::MayThink(t),
            },
            tokens: Vec::new(),
            finish: if params.max_tokens == 0 { Some(FinishReason::Length) } else { None },
        }
    }

    /// Sample from `logits` (the model's prediction after `context`, the tokens in the cache), with
    /// `room` free positions left in the context.
    ///
    /// Fails only if the grammar does (an internal error of the constraint, never a user's mistake).
    pub fn accept(&mut self, logits: &mut [f32], context: &[u32], room: usize) -> Result<Step> {
        if self.finish.is_some() {
            return Ok(Step { token: 0, text: String::new(), done: true, logprob: None });
        }
        if self.logprobs.is_some() {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        self.restrict(logits)?;
        let recent = &context[context.len().saturating_sub(self.penalty_window)..];
        let token = self.sampler.sample(logits, recent);
        self.tokens.push(token);
        let eog = !self.ignore_eos && self.tokenizer.is_eog(token);
        if !eog {
            self.advance(token)?;
        }
        if eog {
            self.finish = Some(FinishReason::Stop);
            return Ok(Step { token, text: self.flush(), done: true, logprob: None });
        }
        let tok = self.tokenizer;
        let logprob =
            self.logprobs.map(|n| TokenLogprob::from_logits(&self.raw, token, n, |t| tok.token_bytes(t)));
        let (mut text, hit_stop) = self.stops.push(&self.decoder.push(token));
        let mut complete =
            self.phase == Phase::Constrained && self.constraint.as_ref().is_some_and(|c| c.is_finished());
        if complete && self.lazy.as_ref().is_some_and(|(t, _)| t.repeat) {
            // a triggered block is over: back to free text until the next trigger
            (self.phase, self.constraint, complete) = (Phase::Free, None, false);
        }
        if hit_stop {
            self.finish = Some(FinishReason::Stop);
        } else if complete || self.tokens.len() >= self.max_tokens || room == 0 {
            self.finish = Some(if complete { FinishReason::Stop } else { FinishReason::Length });
            text += &self.flush();
        }
        Ok(Step { token, text, done: self.finish.is_some(), logprob })
    }

    /// Masks what the constraint forbids at this point of the reply: everything outside the grammar once it
    /// applies, plus, while the model reasons before a constrained answer, the end of generation (it must
    /// close the block and answer).
    fn restrict(&mut self, logits: &mut [f32]) -> Result<()> {
        let Some(c) = self.constraint.as_mut() else { return Ok(()) };
        match self.phase {
            Phase::Free => {}
            Phase::Constrained => c.mask(logits)?,
            Phase::MayThink(t) => {
                let open = logits.get(t.open as usize).copied();
                c.mask(logits)?;
                if let (Some(l), Some(v)) = (logits.get_mut(t.open as usize), open) {
                    *l = v;
                }
            }
            Phase::Thinking(_) => {
                if !self.ignore_eos {
                    for &id in self.tokenizer.eog_ids() {
                        if let Some(l) = logits.get_mut(id as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the constraint past an accepted token (not an end-of-generation token that ends the reply).
    fn advance(&mut self, token: u32) -> Result<()> {
        if self.phase == Phase::Free {
            if let Some((t, inside)) = self.lazy_thinking.as_mut() {
                if token == t.open || token == t.close {
                    *inside = token == t.open;
                    return Ok(());
                }
                if *inside {
                    return Ok(());
                }
            }
            if let Some((_, template)) = self.lazy.as_ref().filter(|(t, _)| t.token == token) {
                self.constraint = Some(template.clone());
                self.phase = Phase::Constrained;
            }
            return Ok(());
        }
        let Some(c) = self.constraint.as_mut() else { return Ok(()) };
        match self.phase {
            Phase::Free => {}
            Phase::MayThink(t) if token == t.open => self.phase = Phase::Thinking(t),
            Phase::Thinking(t) => {
                if token == t.close {
                    self.phase = Phase::Constrained;
                }
            }
            Phase::MayThink(_) | Phase::Constrained => {
                self.phase = Phase::Constrained;
                c.commit(token)?;
            }
        }
        Ok(())
    }

    /// Tokens still to draw before `max_tokens` (at least 1 while generation goes on).
    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.tokens.len()).max(1)
    }

    /// End early because the consumer went away, after the last `undelivered` tokens drawn (a verified
    /// step draws several) were drawn but never shown: they are not part of the reply.
    pub fn cancel(&mut self, undelivered: usize) {
        self.tokens.truncate(self.tokens.len().saturating_sub(undelivered));
        self.finish = Some(FinishReason::Cancelled);
    }

    /// Release what the detokenizer and the stop matcher still hold back (only when no stop string hit).
    fn flush(&mut self) -> String {
        let (text, hit) = self.stops.push(&self.decoder.finish());
        if hit {
            text
        } else {
            text + &self.stops.finish()
        }
    }
}
