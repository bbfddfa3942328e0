//! Continuous batching: `n_slots` conversations share one model on one worker thread.
//!
//! Each step, the worker gathers one token from every slot that is generating plus a chunk of prompt from
//! slots that are still prefilling (up to `n_batch` tokens in all) and runs them through
//! `Model::forward_multi` together, so the weights are read from memory once for all of them. New requests
//! take a free slot between steps; long prompts are prefilled a chunk per step so running streams keep
//! flowing. A free slot keeps its tokens and KV cache, and a new request goes to the free slot sharing the
//! longest prefix with it (multi-turn chat re-sends the whole history), reusing that prefix's KV.
//!
//! Every logit is one dot product over the request's own quantized activation row, and attention runs per
//! sequence, so a request's output does not depend on what else is in the batch: same seed, same request,
//! same text, alone or alongside others.
//!
//! Interactive first: a [`Priority::Batch`] request takes a slot only when no interactive request waits, and
//! when an interactive request arrives while batch work holds every slot, one batch request is paused before
//! the next step: it leaves its slot with its sampler and grammar state, and when a slot frees up its cache
//! is refilled (prompt and tokens so far, prefilled again; nothing is recomputed where the slot still holds
//! them) and it goes on exactly where it was: the same tokens as if it had never paused.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Result;

use crate::draft::{self, DraftCache, DraftJob};
use crate::generate::{
    check_prompt, common_prefix, reusable_prefix, Engine, FinishReason, GenerateParams, Generation,
    PromptError, Speculation, Step,
};
use crate::kv_cache::KvCache;
use crate::memory::MemoryPlan;
use crate::model::{Logits, RunState, SeqBatch};
use crate::sampler::TokenLogprob;
use crate::speculate::{self, CostModel, SpecCounts};

/// How many conversations run at once and how much each may hold.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Slots decoding together (`--parallel`).
    pub n_slots: usize,
    /// Context size of each slot, in tokens.
    pub n_ctx: usize,
    /// Requests allowed to wait for a slot; more are refused with `SubmitError::QueueFull`.
    pub queue_capacity: usize,
    /// Most tokens in one forward pass (decode tokens plus prefill chunks).
    pub n_batch: usize,
}

/// One generation request. `on_event` runs on the worker thread: it gets `Event::Text` pieces, then exactly
/// one `Event::Done` or `Event::Failed`. Returning `ControlFlow::Break` (the client went away) cancels the
/// request and frees its slot before the next step.
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Past this instant (queue wait included) the request ends with [`Failure::TimedOut`].
    pub deadline: Option<Instant>,
    pub priority: Priority,
    pub on_event: Box<dyn FnMut(Event) -> ControlFlow<()> + Send>,
}

/// Who waits for a request: a person (first served) or a batch job (served when no person waits, and paused
/// for one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

/// What a request's consumer is told.
#[derive(Clone, Debug)]
pub enum Event {
    /// New text: whole UTF-8 characters, stop strings withheld.
    Text(String),
    /// A generated token's log-probabilities (requests with `GenerateParams::logprobs`), sent before the
    /// text it completes.
    Logprob(TokenLogprob),
    /// Generation ended normally (or was cancelled by the consumer).
    Done(Usage),
    /// Generation could not go on.
    Failed(Failure),
}

/// Why a request ended without finishing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Failure {
    /// It ran past its deadline, in the queue or generating.
    #[error("request timed out after {secs:.1} s ({generated} tokens generated)")]
    TimedOut { secs: f64, generated: usize },
    /// The model could not run it (its sequence failed the model's checks mid-generation, or the pass
    /// failed); the message says why.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Token counts and timings of a finished request.
#[derive(Clone, Debug)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the slot's previous conversation.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    /// Speculative decoding's drafted and accepted tokens.
    pub spec: SpecCounts,
}

/// Why a request was not accepted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {capacity} requests are already waiting; retry shortly")]
    QueueFull { capacity: usize },
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// A token id the model does not have.
    #[error("{0}")]
    BadToken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A snapshot of the scheduler for metrics.
#[derive(Clone, Debug, Default)]
pub struct SchedulerStats {
    /// Requests waiting for a slot (batch requests paused for interactive ones included).
    pub queued: usize,
    /// Batch requests among `queued`.
    pub queued_batch: usize,
    pub active: usize,
    /// Batch requests among `active`.
    pub active_batch: usize,
    /// Times a batch request left its slot for an interactive one.
    pub preemptions_total: u64,
    pub n_slots: usize,
    pub kv_used_tokens: usize,
    pub kv_capacity_tokens: usize,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Speculative decoding: drafted tokens verified, and those accepted.
    pub drafted_tokens_total: u64,
    pub accepted_tokens_total: u64,
    /// Prompt tokens per second over the most recent step that prefilled.
    pub prefill_tps: f64,
    /// Generated tokens per second (all slots together) over the most recent decode step.
    pub decode_tps: f64,
    /// The weights are still being copied into the kernels' layout in the background ([`crate::model::Model::is_prepacking`]).
    pub weights_prepacking: bool,
}

struct Shared {
    cfg: SchedulerConfig,
    /// Waiting requests, with when each was submitted.
    queue: Mutex<VecDeque<(Instant, Request)>>,
    wake: Condvar,
    shutting_down: AtomicBool,
    stats: Mutex<SchedulerStats>,
    /// Requests accepted and not yet finished (queued or in a slot). Admission counts these, not just the
    /// queue, so a burst that arrives before the worker wakes still gets the free slots.
    in_system: AtomicUsize,
    /// Batch requests paused by the worker (for the stats).
    paused: AtomicUsize,
}

/// The batching worker and its request queue. Dropping it shuts down and waits for in-flight requests.
pub struct Scheduler {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    engine: Arc<Engine>,
}

impl Scheduler {
    /// Allocate every slot's KV cache (refusing with a clear message when memory is short) and start the
    /// worker thread.
    pub fn new(engine: Arc<Engine>, cfg: SchedulerConfig) -> Result<Scheduler> {
        anyhow::ensure!(cfg.n_slots >= 1, "at least one slot is needed");
        anyhow::ensure!(cfg.n_ctx >= 1, "the context must hold at least one token");
        let cfg = SchedulerConfig { n_batch: cfg.n_batch.max(cfg.n_slots), ..cfg };
        let rows = speculate::logit_rows(&engine.spec, cfg.n_slots, cfg.n_batch);
        let n_ctx_total = cfg.n_ctx * cfg.n_slots;
        MemoryPlan::new(&engine.model, n_ctx_total, cfg.n_batch, rows, engine.kv_type)
            .with_draft(engine.active_draft(), n_ctx_total, cfg.n_slots, engine.kv_type)
            .check_available()?;
        let caches = (0..cfg.n_slots)
            .map(|_| {
                let kv = KvCache::with_type(&engine.model.config, cfg.n_ctx, engine.kv_type)?;
                Ok((kv, engine.draft_cache(cfg.n_ctx)))
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(SchedulerStats {
                n_slots: cfg.n_slots,
                kv_capacity_tokens: cfg.n_slots * cfg.n_ctx,
                ..Default::default()
            }),
            cfg,
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            shutting_down: AtomicBool::new(false),
            in_system: AtomicUsize::new(0),
            paused: AtomicUsize::new(0),
        });
        let (worker_shared, engine_ref) = (shared.clone(), engine.clone());
        let worker = std::thread::Builder::new().name("quire-scheduler".into()).spawn(move || {
            let slots = caches.into_iter().map(|(kv, draft)| Slot::new(kv, draft)).collect();
            Worker {
                engine: &engine,
                shared: &worker_shared,
                slots,
                paused: VecDeque::new(),
                cost: CostModel::default(),
                draft_cost: engine.draft_cost(),
                draft_state: RunState::new(),
            }
            .run()
        })?;
        Ok(Scheduler { shared, worker: Mutex::new(Some(worker)), engine: engine_ref })
    }

    /// Queue a request. Checks what can be checked now (prompt length and token ids, parameters, queue room).
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        let cfg = &self.shared.cfg;
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        check_prompt(req.prompt.len(), cfg.n_ctx)?;
        // a bad id would fail the whole batch it runs in
        self.engine.model.check_tokens(&req.prompt).map_err(|e| SubmitError::BadToken(e.to_string()))?;
        req.params.sampler.validate().map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let mut queue = self.shared.queue.lock().unwrap();
        if self.shared.in_system.load(Ordering::SeqCst) >= cfg.queue_capacity + cfg.n_slots {
            return Err(SubmitError::QueueFull { capacity: cfg.queue_capacity });
        }
        self.shared.in_system.fetch_add(1, Ordering::SeqCst);
        queue.push_back((Instant::now(), req));
        self.shared.publish_queue(&queue);
        drop(queue);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// A snapshot of queue, slots and throughput.
    pub fn stats(&self) -> SchedulerStats {
        let stats = self.shared.stats.lock().unwrap().clone();
        SchedulerStats { weights_prepacking: self.engine.model.is_prepacking(), ..stats }
    }

    /// The configuration in force (n_batch raised to at least n_slots).
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.cfg
    }

    /// Stop taking requests; queued and running ones still finish, then the worker exits.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }

    /// Shut down and wait for the worker to finish what it has.
    pub fn join(&self) {
        self.shutdown();
        if let Some(handle) = self.worker.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.join();
    }
}

/// One conversation slot: its KV cache, the tokens in it, and the request it serves (if any).
struct Slot<'e> {
    kv: KvCache,
    /// Tokens whose keys and values are in `kv`.
    tokens: Vec<u32>,
    active: Option<Active<'e>>,
    /// The draft model's cache for this slot's context (with a draft model).
    draft: Option<DraftCache>,
}

impl Slot<'_> {
    fn new(kv: KvCache, draft: Option<DraftCache>) -> Self {
        Slot { kv, tokens: Vec::new(), active: None, draft }
    }
}

/// A request being served.
struct Active<'e> {
    req: Request,
    gen: Generation<'e>,
    /// After a pause: the tokens its cache held, to be in the slot's cache again before it goes on, and how
    /// many are.
    refill: Vec<u32>,
    refilled: usize,
    /// Prompt tokens already in the cache.
    prompt_done: usize,
    cached: usize,
    /// The token sampled last, to feed next (decode phase).
    next: Option<u32>,
    submitted: Instant,
    started: Instant,
    prompt_secs: f64,
    first_token_at: Option<Instant>,
    spec: Speculation,
}

struct Worker<'e> {
    engine: &'e Engine,
    shared: &'e Shared,
    slots: Vec<Slot<'e>>,
    /// Batch requests that gave their slot to an interactive one, oldest first.
    paused: VecDeque<Active<'e>>,
    /// Measured pass times, for how much to draft ([`speculate::plan`]): the model's and the draft model's.
    cost: CostModel,
    draft_cost: CostModel,
    draft_state: RunState,
}

impl Active<'_> {
    fn refilling(&self) -> bool {
        self.refilled < self.refill.len()
    }

    /// Feeds its sampled token this step.
    fn decoding(&self) -> bool {
        self.next.is_some() && !self.refilling()
    }
}

impl Shared {
    /// The queue's numbers for the stats; called with the queue locked (queue before stats, as everywhere).
    fn publish_queue(&self, queue: &VecDeque<(Instant, Request)>) {
        let paused = self.paused.load(Ordering::SeqCst);
        let batch = queue.iter().filter(|(_, r)| r.priority == Priority::Batch).count();
        let mut stats = self.stats.lock().unwrap();
        stats.queued = queue.len() + paused;
        stats.queued_batch = batch + paused;
    }
}

impl<'e> Worker<'e> {
    fn run(mut self) {
        let mut state = RunState::new();
        loop {
            self.admit();
            if self.slots.iter().all(|s| s.active.is_none()) {
                let queue = self.shared.queue.lock().unwrap();
                if queue.is_empty() {
                    if self.shared.shutting_down.load(Ordering::SeqCst) {
                        return;
                    }
                    drop(
                        self.shared.wake.wait_timeout(queue, std::time::Duration::from_millis(200)).unwrap(),
                    );
                }
                continue;
            }
            self.expire_deadlines();
            self.expire_queued();
            if self.slots.iter().all(|s| s.active.is_none()) {
                self.publish_occupancy();
                continue;
            }
            self.step(&mut state);
            self.publish_occupancy();
        }
    }

    /// Move waiting requests into free slots: interactive ones first (pausing batch work for those that
    /// find no free slot), then paused batch requests, then new ones. Each goes to the free slot sharing the
    /// longest prefix with what it needs in the cache.
    fn admit(&mut self) {
        self.preempt();
        loop {
            if !self.slots.iter().any(|s| s.active.is_none()) {
                return;
            }
            let mut queue = self.shared.queue.lock().unwrap();
            let waiting = queue.iter().position(|(_, r)| r.priority == Priority::Interactive);
            if let Some(pos) = waiting {
                let (submitted, req) = queue.remove(pos).expect("position is in the queue");
                drop(queue);
                self.start(submitted, req);
            } else if let Some(a) = self.paused.pop_front() {
                drop(queue);
                self.shared.paused.fetch_sub(1, Ordering::SeqCst);
                self.resume(a);
            } else if let Some((submitted, req)) = queue.pop_front() {
                drop(queue);
                self.start(submitted, req);
            } else {
                return;
            }
            // queue before stats, as everywhere (the other order could deadlock with `submit`)
            let queue = self.shared.queue.lock().unwrap();
            self.shared.publish_queue(&queue);
        }
    }

    /// The free slot that holds the longest prefix of `tokens` (by `prefix`), lowest index on ties.
    fn best_free_slot(&self, prefix: impl Fn(&[u32]) -> usize) -> usize {
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(i, s)| (prefix(&s.tokens), usize::MAX - i))
            .expect("a free slot exists");
        i
    }

    /// A new request into a free slot.
    fn start(&mut self, submitted: Instant, req: Request) {
        let i = self.best_free_slot(|held| reusable_prefix(held, &req.prompt));
        let slot = &mut self.slots[i];
        let reuse = reusable_prefix(&slot.tokens, &req.prompt);
        slot.kv.truncate(reuse);
        slot.tokens.truncate(reuse);
        let gen = Generation::new(&self.engine.tokenizer, &req.params);
        slot.active = Some(Active {
            gen,
            spec: Speculation::new(&req.params, self.engine.model.config.vocab_size),
            refill: Vec::new(),
            refilled: 0,
            prompt_done: reuse,
            cached: reuse,
            next: None,
            submitted,
            started: Instant::now(),
            prompt_secs: 0.0,
            first_token_at: None,
            req,
        });
    }

    /// A paused request back into a free slot (its own, if nobody used it since): what the slot still holds
    /// of its tokens stays, the rest is prefilled again before it goes on.
    fn resume(&mut self, mut a: Active<'e>) {
        let common = |held: &[u32]| common_prefix(held, &a.refill);
        let i = self.best_free_slot(common);
        let slot = &mut self.slots[i];
        let keep = common(&slot.tokens);
        slot.kv.truncate(keep);
        slot.tokens.truncate(keep);
        a.refilled = keep;
        slot.active = Some(a);
    }

    /// Pause batch requests for the interactive ones that would otherwise wait: one slot each, taking the
    /// batch request with the least in its cache (the cheapest to refill).
    fn preempt(&mut self) {
        let free = self.slots.iter().filter(|s| s.active.is_none()).count();
        let waiting = {
            let queue = self.shared.queue.lock().unwrap();
            queue.iter().filter(|(_, r)| r.priority == Priority::Interactive).count()
        };
        for _ in free..waiting {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active.as_ref().is_some_and(|a| a.req.priority == Priority::Batch))
                .min_by_key(|(i, s)| (s.tokens.len(), *i))
                .map(|(i, _)| i);
            let Some(i) = victim else { return };
            let slot = &mut self.slots[i];
            let mut a = slot.active.take().expect("the victim is active");
            if !a.refilling() {
                // (paused again before its refill ended: what it needs is still `refill`)
                a.refill = slot.tokens.clone();
            }
            a.refilled = 0;
            self.paused.push_back(a);
            self.shared.paused.fetch_add(1, Ordering::SeqCst);
            self.shared.stats.lock().unwrap().preemptions_total += 1;
        }
    }

    /// End the active and paused requests past their deadline.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        let late = |a: &Active| a.req.deadline.is_some_and(|d| now >= d);
        if self.paused.iter().any(late) {
            let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                std::mem::take(&mut self.paused).into_iter().partition(late);
            self.paused = kept;
            self.shared.paused.fetch_sub(gone.len(), Ordering::SeqCst);
            for a in gone {
                let (secs, generated) = (a.submitted.elapsed().as_secs_f64(), a.gen.tokens.len());
                self.fail(a.req, Failure::TimedOut { secs, generated });
            }
            let queue = self.shared.queue.lock().unwrap();
            self.shared.publish_queue(&queue);
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.active.as_ref().is_some_and(|a| a.req.deadline.is_some_and(|d| now >= d)) {
                let a = slot.active.take().unwrap();
                let (secs, generated) = (a.submitted.elapsed().as_secs_f64(), a.gen.tokens.len());
                self.fail(a.req, Failure::TimedOut { secs, generated });
            }
        }
    }

    /// End the queued requests past their deadline (they would wait for nothing).
    fn expire_queued(&mut self) {
        let now = Instant::now();
        let late = |r: &Request| r.deadline.is_some_and(|d| now >= d);
        let expired: VecDeque<(Instant, Request)> = {
            let mut queue = self.shared.queue.lock().unwrap();
            if !queue.iter().any(|(_, r)| late(r)) {
                return;
            }
            let (gone, kept) = std::mem::take(&mut *queue).into_iter().partition(|(_, r)| late(r));
            *queue = kept;
            self.shared.publish_queue(&queue);
            gone
        };
        for (submitted, req) in expired {
            let secs = (now - submitted).as_secs_f64();
            self.fail(req, Failure::TimedOut { secs, generated: 0 });
        }
    }

    /// Tell a request's consumer it failed; it leaves the system.
    fn fail(&self, mut req: Request, failure: Failure) {
        self.shared.in_system.fetch_sub(1, Ordering::SeqCst);
        let _ = (req.on_event)(Event::Failed(failure));
    }

    /// One forward pass over every active slot, then sampling and events.
    fn step(&mut self, state: &mut RunState) {
        let n_batch = self.shared.cfg.n_batch;
        let t0 = Instant::now();

        // The decoding slots' tokens first: each feeds its sampled token and the drafted tokens the plan
        // says are worth verifying ([`speculate::plan`]), within the batch.
        let decoding: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].active.as_ref().is_some_and(|a| a.decoding()))
            .collect();
        let offers: Vec<_> = decoding
            .iter()
            .map(|&i| {
                let slot = &mut self.slots[i];
                let a = slot.active.as_mut().expect("decoding slots are active");
                let next = a.next.expect("a decoding slot has a token to feed");
                let model = slot.draft.is_some().then_some((&self.cost, &self.draft_cost));
                a.spec.offer(&mut slot.tokens, next, &self.engine.spec, &a.gen, slot.kv.capacity(), model)
            })
            .collect();
        let mut ks = speculate::choose(&self.engine.spec, &offers, &self.cost, &self.draft_cost);
        // Drafts fit in the batch beside at least one token of every slot prefilling or refilling (n_batch
        // is at least n_slots), so speculation never starves a prompt.
        let waiting = self.slots.iter().filter(|s| s.active.as_ref().is_some_and(|a| !a.decoding())).count();
        while decoding.len() + waiting + ks.iter().sum::<usize>() > n_batch {
            let widest = (0..ks.len()).max_by_key(|&j| ks[j]).expect("some slot drafts");
            ks[widest] -= 1;
        }
        if let Some(model) = &self.engine.draft {
            // the draft model's offers that the plan took: drafted now, all slots in one pass per position
            let mut k_of = vec![0; self.slots.len()];
            for ((&i, o), &k) in decoding.iter().zip(&offers).zip(&ks) {
                k_of[i] = if o.model { k } else { 0 };
            }
            let mut jobs = Vec::new();
            let mut whose = Vec::new();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let k = k_of[i];
                let (true, Some(cache), Some(a)) = (k > 0, slot.draft.as_mut(), slot.active.as_ref()) else {
                    continue;
                };
                let next = a.next.expect("a decoding slot has a token to feed");
                jobs.push(DraftJob { cache, context: &slot.tokens, next, k });
                whose.push(i);
            }
            if !jobs.is_empty() {
                let drafts = draft::draft(model, &mut self.draft_state, &mut jobs, &mut self.draft_cost);
                for (i, tokens) in whose.into_iter().zip(drafts) {
                    self.slots[i]
                        .active
                        .as_mut()
                        .expect("decoding slots are active")
                        .spec
                        .set_model_draft(tokens);
                }
            }
        }
        let mut fed_of = vec![None; self.slots.len()];
        for (&i, &k) in decoding.iter().zip(&ks) {
            let a = self.slots[i].active.as_ref().expect("decoding slots are active");
            fed_of[i] = Some(a.spec.fed(a.next.expect("a decoding slot has a token to feed"), k));
        }
        let n_decode: usize = fed_of.iter().flatten().map(Vec::len).sum();
        let mut budget = n_batch.saturating_sub(n_decode);

        // What each slot feeds this step (never nothing: the caller only steps with an active slot, and an
        // active slot decodes or has prompt or a refill left, and the budget covers at least n_slots tokens).
        let mut plan: Vec<(usize, Vec<u32>, Logits)> = Vec::new();
        let mut n_prefill = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(a) = &slot.active else { continue };
            if a.refilling() {
                if budget > 0 {
                    let end = (a.refilled + budget).min(a.refill.len());
                    let chunk = a.refill[a.refilled..end].to_vec();
                    budget -= chunk.len();
                    n_prefill += chunk.len();
                    plan.push((i, chunk, Logits::None));
                }
            } else if let Some(fed) = fed_of[i].take() {
                let want = speculate::logits_wanted(&fed);
                plan.push((i, fed, want));
            } else if budget > 0 {
                let end = (a.prompt_done + budget).min(a.req.prompt.len());
                let chunk = a.req.prompt[a.prompt_done..end].to_vec();
                budget -= chunk.len();
                n_prefill += chunk.len();
                let want = if end == a.req.prompt.len() { Logits::Last } else { Logits::None };
                plan.push((i, chunk, want));
            }
        }

        // A sequence the model would refuse fails alone, before the batch runs without it.
        let mut refused = Vec::new();
        plan.retain(|(i, tokens, _)| match self.engine.model.check_seq(&self.slots[*i].kv, tokens) {
            Ok(()) => true,
            Err(e) => {
                refused.push((*i, e));
                false
            }
        });
        for (i, e) in refused {
            self.drop_slot(i, Failure::Inference(format!("{e:#}")));
        }
        if plan.is_empty() {
            return;
        }
        let t_pass = Instant::now();
        let result = {
            let mut seqs: Vec<SeqBatch> = Vec::with_capacity(plan.len());
            let mut planned = plan.iter().peekable();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if planned.peek().is_some_and(|p| p.0 == i) {
                    let (_, tokens, want) = planned.next().unwrap();
                    seqs.push(SeqBatch { kv: &mut slot.kv, tokens, want: *want });
                }
            }
            self.engine.model.forward_multi(state, &mut seqs)
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Unreachable today (every sequence passed the model's checks); kept so that a future error
                // fails this step's requests with a reason instead of leaving them waiting.
                for (i, _, _) in &plan {
                    self.drop_slot(*i, Failure::Inference(format!("{e:#}")));
                }
                return;
            }
        };
        // decode passes only: the cost model prices decode steps, sampling and verification included
        let decode_fed = (n_prefill == 0).then(|| plan.iter().map(|(_, t, _)| t.len()).sum::<usize>());
        let secs = t0.elapsed().as_secs_f64();
        let vocab = self.engine.model.config.vocab_size;
        let mut offset = 0;
        let (mut generated, mut decoded) = (0u64, 0u64);
        let mut spec_step = SpecCounts::default();
        let mut finished = Vec::new();
        let mut broken = Vec::new();
        for (i, tokens, want) in plan {
            let n_rows = want.rows(tokens.len());
            let mut rows = logits[offset..offset + n_rows * vocab].to_vec();
            offset += n_rows * vocab;
            let slot = &mut self.slots[i];
            let a = slot.active.as_mut().expect("planned slots are active");
            if a.refilling() {
                slot.tokens.extend_from_slice(&tokens);
                a.refilled += tokens.len();
                if !a.refilling() {
                    (a.refill, a.refilled) = (Vec::new(), 0);
                }
                continue;
            }
            let cap = slot.kv.capacity();
            let steps: Result<Vec<Step>> = if a.next.is_some() {
                // decoding: the sampled token and its drafts, verified
                speculate::verify(&mut a.gen, &mut rows, vocab, &tokens, &mut slot.tokens, cap).map(|v| {
                    slot.kv.truncate(slot.tokens.len());
                    a.spec.verified(&tokens, &v);
                    spec_step.add(SpecCounts { drafted: tokens.len() - 1, accepted: v.accepted });
                    decoded += v.steps.len() as u64;
                    v.steps
                })
            } else {
                slot.tokens.extend_from_slice(&tokens);
                a.prompt_done += tokens.len();
                if a.prompt_done == a.req.prompt.len() {
                    a.prompt_secs = a.started.elapsed().as_secs_f64();
                }
                if want != Logits::Last {
                    continue;
                }
                let room = cap - slot.kv.len();
                a.gen.accept(&mut rows, &slot.tokens, room).map(|s| vec![s])
            };
            let steps = match steps {
                Ok(steps) => steps,
                Err(e) => {
                    broken.push((i, e));
                    continue;
                }
            };
            a.first_token_at.get_or_insert_with(Instant::now);
            let mut done = false;
            let n_steps = steps.len();
            for (j, step) in steps.into_iter().enumerate() {
                generated += 1;
                a.next = Some(step.token);
                done = step.done;
                let left = step.logprob.is_some_and(|lp| (a.req.on_event)(Event::Logprob(lp)).is_break());
                if left || (!step.text.is_empty() && (a.req.on_event)(Event::Text(step.text)).is_break()) {
                    a.gen.cancel(n_steps - j - 1);
                    spec_step.accepted -= a.spec.cancelled(j + 1).min(spec_step.accepted);
                    done = true;
                }
                if done {
                    break;
                }
            }
            if done {
                let a = slot.active.take().unwrap();
                let usage = Usage {
                    prompt_tokens: a.req.prompt.len(),
                    cached_tokens: a.cached,
                    completion_tokens: a.gen.tokens.len(),
                    finish: a.gen.finish.unwrap_or(FinishReason::Length),
                    prompt_secs: a.prompt_secs,
                    gen_secs: a.first_token_at.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                    spec: a.spec.counts,
                };
                finished.push((a, usage));
            }
        }
        if let Some(fed) = decode_fed {
            self.cost.record(fed, t_pass.elapsed());
        }
        for (i, e) in broken {
            self.drop_slot(i, Failure::Inference(format!("{e:#}")));
        }
        {
            let mut stats = self.shared.stats.lock().unwrap();
            stats.generated_tokens_total += generated;
            stats.prompt_tokens_total += n_prefill as u64;
            stats.drafted_tokens_total += spec_step.drafted as u64;
            stats.accepted_tokens_total += spec_step.accepted as u64;
            if n_prefill > 0 {
                stats.prefill_tps = n_prefill as f64 / secs;
            }
            if decoded > 0 {
                stats.decode_tps = decoded as f64 / secs;
            }
        }
        // Done goes out only after the stats count the request as finished, so a client that reads the
        // stats right after its Done sees them up to date.
        if !finished.is_empty() {
            self.publish_occupancy();
        }
        for (mut a, usage) in finished {
            self.shared.in_system.fetch_sub(1, Ordering::SeqCst);
            let _ = (a.req.on_event)(Event::Done(usage));
        }
    }

    /// Fail slot `i`'s request and forget what its cache holds (it may be half written).
    fn drop_slot(&mut self, i: usize, failure: Failure) {
        if let Some(a) = self.slots[i].active.take() {
            self.fail(a.req, failure);
        }
        self.slots[i].tokens.clear();
        self.slots[i].kv.clear();
    }

    fn publish_occupancy(&self) {
        let mut stats = self.shared.stats.lock().unwrap();
        stats.active = self.slots.iter().filter(|s| s.active.is_some()).count();
        stats.active_batch = self
            .slots
            .iter()
            .filter(|s| s.active.as_ref().is_some_and(|a| a.req.priority == Priority::Batch))
            .count();
        stats.kv_used_tokens = self.slots.iter().map(|s| s.kv.len()).sum();
    }
}
