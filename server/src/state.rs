//! What every request handler shares: the configuration, the model once it is loaded (it loads in the
//! background while the server already answers `/health` with 503), the metrics and request ids.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use quire_engine::generate::{Engine, DEFAULT_BATCH};
use quire_engine::memory::{self, human_bytes, Budget, Sizes, Wants};
use quire_engine::model::LoadOptions;
use tokio::sync::watch;

use crate::batch::service::Batches;
use crate::config::ServerConfig;
use crate::errors::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::templates::Library;
use quire_engine::scheduler::{Scheduler, SchedulerConfig, SchedulerStats};

/// A loaded model and the scheduler serving it.
pub struct Ready {
    pub engine: Arc<Engine>,
    pub scheduler: Scheduler,
    /// Context per slot, in tokens: the longest prompt + completion one request can have.
    pub n_ctx: usize,
    /// Slots (the RAM planner's choice: `--parallel`, or fewer when memory is short).
    pub n_slots: usize,
}

/// Where model loading stands.
#[derive(Clone)]
pub enum LoadState {
    Loading,
    Ready(Arc<Ready>),
    Failed(String),
}

/// Shared by all connections.
pub struct AppState {
    pub cfg: ServerConfig,
    pub metrics: Arc<Metrics>,
    load: watch::Sender<LoadState>,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
    /// Distinguishes this process's request ids from an earlier run's in the logs.
    id_prefix: u32,
    /// Unix time the server started (OpenAI's `created` of the model).
    pub started_unix: u64,
    pub open_connections: AtomicUsize,
    /// Set when a request's events stop without a final one: the scheduler's worker is gone, and `/health`
    /// reports an error from then on so a supervisor restarts us.
    pub scheduler_lost: Arc<AtomicBool>,
    /// Files and batch jobs (`--data-dir`); `None`: the batch API answers that it is off.
    pub batches: Option<Arc<Batches>>,
    /// The prompt templates (built in, and `--templates DIR`).
    pub templates: Library,
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl AppState {
    pub fn new(cfg: ServerConfig, batches: Option<Arc<Batches>>, templates: Library) -> AppState {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        AppState {
            cfg,
            metrics: Arc::new(Metrics::default()),
            load: watch::channel(LoadState::Loading).0,
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            id_prefix: nanos ^ std::process::id().rotate_left(16),
            started_unix: unix_now(),
            open_connections: AtomicUsize::new(0),
            scheduler_lost: Arc::new(AtomicBool::new(false)),
            batches,
            templates,
        }
    }

    /// A new request id, unique in this process and unlikely to repeat across restarts.
    pub fn next_request_id(&self) -> String {
        format!("{:08x}{:06x}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn load_state(&self) -> LoadState {
        self.load.borrow().clone()
    }

    /// Follow the load state (the serve loop stops when loading fails).
    pub fn subscribe_load(&self) -> watch::Receiver<LoadState> {
        self.load.subscribe()
    }

    pub fn set_load_state(&self, s: LoadState) {
        self.load.send_replace(s);
    }

    /// The model, or the 503 a request gets while there is none.
    pub fn ready(&self) -> ApiResult<Arc<Ready>> {
        if self.is_shutting_down() {
            return Err(ApiError::shutting_down());
        }
        match self.load_state() {
            LoadState::Ready(r) => Ok(r),
            LoadState::Loading => Err(ApiError::loading()),
            LoadState::Failed(m) => {
                Err(ApiError::internal(format!("the model failed to load: {m}"))
                    .with_code("model_load_failed"))
            }
        }
    }

    pub fn scheduler_stats(&self) -> Option<SchedulerStats> {
        match self.load_state() {
            LoadState::Ready(r) => Some(r.scheduler.stats()),
            _ => None,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Stop taking generation requests; those in flight finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        if let LoadState::Ready(r) = self.load_state() {
            r.scheduler.shutdown();
        }
    }
}

/// Load the model and start the scheduler (blocking; runs on a blocking thread).
pub fn load_model(cfg: &ServerConfig) -> anyhow::Result<Ready> {
    let t0 = Instant::now();
    let opts = LoadOptions { prepack: cfg.prepack, ..Default::default() };
    let mut engine = Engine::load_with(&cfg.model_path, &opts)
        .with_context(|| format!("cannot load {}", cfg.model_path.display()))?;
    engine.spec = cfg.spec;
    if let Some(d) = cfg.draft_model.as_ref().filter(|_| cfg.spec.limit() > 0) {
        engine.load_draft(d, &opts)?;
        tracing::info!("draft model {} loaded for speculative decoding", d.display());
    }
    // The RAM planner: context, KV type and slots that fit --max-ram or the memory available, before the
    // caches are allocated (the scheduler refuses, with numbers, if they still do not fit).
    let sizes = Sizes::of(&engine, cfg.n_slots);
    let wants = Wants {
        ctx: cfg.ctx,
        kv_type: cfg.kv_type_set.then_some(cfg.kv_type),
        slots: cfg.n_slots_set.then_some(cfg.n_slots),
    };
    let choice = memory::choose(&sizes, wants, Budget::from_flag(cfg.max_ram))?;
    tracing::info!("{}", choice.describe());
    let (n_ctx, n_slots) = (choice.ctx, choice.slots);
    engine.kv_type = choice.kv_type;
    let c = &engine.model.config;
    if n_ctx > c.ctx_train {
        tracing::warn!(
            "--ctx {n_ctx} is beyond the {} tokens the model was trained on; quality may drop",
            c.ctx_train
        );
    }
    let plan = choice.plan;
    let engine = Arc::new(engine);
    // Build the grammar compiler's token trie now, beside the first requests, so the first request with a
    // `response_format` does not wait for it (it waits only if it comes within that time).
    let warm = engine.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        match warm.grammars() {
            Ok(_) => tracing::info!("grammar compiler ready in {:.2} s", t.elapsed().as_secs_f64()),
            Err(e) => tracing::warn!("{e:#}"),
        }
    });
    let scheduler = Scheduler::new(
        engine.clone(),
        SchedulerConfig { n_slots, n_ctx, queue_capacity: cfg.queue_capacity, n_batch: DEFAULT_BATCH },
    )?;
    tracing::info!(
        "loaded {} in {:.2} s: {n_slots} slots x {n_ctx} tokens of context, KV cache {} ({}), queue {}, {} threads",
        cfg.model_path.display(),
        t0.elapsed().as_secs_f64(),
        human_bytes(plan.kv_cache),
        engine.kv_type,
        cfg.queue_capacity,
        rayon::current_num_threads()
    );
    Ok(Ready { engine, scheduler, n_ctx, n_slots })
}
