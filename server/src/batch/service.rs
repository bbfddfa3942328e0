//! The server's batch worker: one batch at a time, oldest first, through `validating → in_progress →
//! finalizing → completed` (or `failed`, or `cancelling → cancelled`), its requests `--parallel` at a time
//! behind interactive ones. Every status change and every finished request is committed to the [`Store`]
//! when it happens, so after a restart (even a `kill -9`) the worker picks up every open batch where it
//! was: requests without a result run again, the others never do.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::input::{self, Limits};
use super::provenance::ModelInfo;
use super::runner::{self, RunEnd};
use super::store::{BatchRow, FileRow, Status, Store};
use crate::routes::BatchEndpoint;
use crate::state::{unix_now, AppState, LoadState, Ready};

/// The batch side of a server: its store, the worker's wake-up and the batch it is running.
pub struct Batches {
    pub store: Store,
    pub limits: Limits,
    /// Largest upload to `/v1/files`, in bytes.
    pub max_upload: u64,
    wake: Notify,
    running: Mutex<Option<Running>>,
    /// Held while this process uses the data dir: a second server on it would run the same batches twice.
    _lock: File,
}

/// The batch being run: how to stop it and how fast it goes.
struct Running {
    id: String,
    stop: watch::Sender<bool>,
    started: Instant,
    done: Arc<AtomicU64>,
    left: Arc<AtomicU64>,
}

impl Batches {
    /// Opens the store in `dir` (created if needed), refusing a dir another process is using.
    pub fn open(dir: &Path, max_upload: u64) -> Result<Batches> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        let lock_path = dir.join("quire.lock");
        let lock =
            File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "the data dir {} is in use by another quire process; give each server its own --data-dir",
                dir.display()
            )
        })?;
        Ok(Batches {
            store: Store::open(dir)?,
            limits: Limits::default(),
            max_upload,
            wake: Notify::new(),
            running: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Tell the worker there is work (a new batch, a cancellation).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the batch `id` if it is the one running (its status already says `cancelling`).
    pub fn stop_if_running(&self, id: &str) {
        if let Some(r) = self.running.lock().unwrap().as_ref().filter(|r| r.id == id) {
            let _ = r.stop.send(true);
        }
        self.wake();
    }

    /// The extension field of a batch: its place among the open batches (0: running) and the seconds
    /// until it is done at the current pace (once the running batch has finished a request).
    pub fn queue_info(&self, row: &BatchRow) -> Value {
        if !row.status.is_open() {
            return Value::Null;
        }
        let Ok(open) = self.store.open_batches() else { return Value::Null };
        let Some(position) = open.iter().position(|b| b.id == row.id) else { return Value::Null };
        let pace = self.running.lock().unwrap().as_ref().and_then(|r| {
            let done = r.done.load(Ordering::Relaxed);
            (done > 0).then(|| r.started.elapsed().as_secs_f64() / done as f64)
        });
        let eta = pace.map(|secs_per_request| {
            let left: u64 =
                open[..=position].iter().map(|b| b.total.saturating_sub(b.completed + b.failed)).sum();
            (left as f64 * secs_per_request).round() as u64
        });
        json!({"queue_position": position, "eta_seconds": eta})
    }

    /// Requests of open batches without a result, for /metrics.
    pub fn pending_requests(&self) -> u64 {
        if let Some(r) = self.running.lock().unwrap().as_ref() {
            let running_left = r.left.load(Ordering::Relaxed);
            let others: u64 = self
                .store
                .open_batches()
                .map(|v| {
                    v.iter()
                        .filter(|b| b.id != r.id)
                        .map(|b| b.total.saturating_sub(b.completed + b.failed))
                        .sum()
                })
                .unwrap_or(0);
            return running_left + others;
        }
        self.store
            .open_batches()
            .map(|v| v.iter().map(|b| b.total.saturating_sub(b.completed + b.failed)).sum())
            .unwrap_or(0)
    }
}

/// The worker: waits for the model, then works through the open batches forever (the runtime's end stops
/// it; what was in flight runs again at the next start).
pub async fn worker(state: Arc<AppState>) {
    let Some(batches) = state.batches.clone() else { return };
    let mut load = state.subscribe_load();
    let ready = loop {
        match state.load_state() {
            LoadState::Ready(r) => break r,
            LoadState::Failed(_) => return,
            LoadState::Loading => {
                if load.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let path = state.cfg.model_path.clone();
    let quant = ready.engine.model.main_type();
    let model = match tokio::task::spawn_blocking(move || ModelInfo::of(&path, quant)).await {
        Ok(Ok(m)) => Arc::new(m),
        Ok(Err(e)) => {
            tracing::error!("batch worker: {e:#}");
            return;
        }
        Err(e) => {
            tracing::error!("batch worker: {e}");
            return;
        }
    };
    loop {
        if state.is_shutting_down() {
            return;
        }
        let next = match batches.store.open_batches() {
            Ok(open) => open.into_iter().next(),
            Err(e) => {
                tracing::error!("batch worker: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(batch) = next else {
            batches.wake.notified().await;
            continue;
        };
        if let Err(e) = step(&state, &ready, &batches, &model, batch).await {
            tracing::error!("batch worker: {e:#}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Moves `batch` on by one status.
async fn step(
    state: &Arc<AppState>,
    ready: &Arc<Ready>,
    b: &Arc<Batches>,
    model: &Arc<ModelInfo>,
    batch: BatchRow,
) -> Result<()> {
    let endpoint = BatchEndpoint::from_url(&batch.endpoint).unwrap_or(BatchEndpoint::Chat);
    let input_path = b.store.file_path(&batch.input_file_id);
    match batch.status {
        Status::Validating => {
            let limits = b.limits;
            let path = input_path.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let f = File::open(&path)
                    .map_err(|e| input::FileError(format!("cannot read the input file: {e}")))?;
                input::validate(BufReader::new(f), Some(endpoint), &limits)
            })
            .await?;
            match checked {
                Ok(summary) => {
                    b.store.set_total(&batch.id, summary.requests as u64)?;
                    b.store.set_status(&batch.id, Status::InProgress, &[Status::Validating], unix_now())?;
                }
                Err(e) => {
                    let errors = json!({"object": "list", "data": [{"code": "invalid_file", "message": e.0, "param": "input_file_id", "line": null}]});
                    b.store.fail_validation(&batch.id, &errors, unix_now())?;
                }
            }
        }
        Status::InProgress => {
            let done = b.store.done_ids(&batch.id)?;
            let left = batch.total.saturating_sub(done.len() as u64);
            let (stop_tx, stop_rx) = watch::channel(false);
            let counter = Arc::new(AtomicU64::new(0));
            let left_counter = Arc::new(AtomicU64::new(left));
            *b.running.lock().unwrap() = Some(Running {
                id: batch.id.clone(),
                stop: stop_tx,
                started: Instant::now(),
                done: counter.clone(),
                left: left_counter.clone(),
            });
            let f = File::open(&input_path).context("cannot read the input file")?;
            let max_line = b.limits.max_line_bytes;
            let items = input::lines(BufReader::new(f), max_line).filter_map(move |(n, l)| {
                let l = l.ok()?;
                if l.trim().is_empty() {
                    return None;
                }
                let item = input::parse(n, &l, Some(endpoint)).ok()?;
                (!done.contains(item.custom_id())).then_some(item)
            });
            let mut record_error = None;
            let end = runner::run(
                state.clone(),
                ready.clone(),
                model.clone(),
                items,
                ready.n_slots,
                stop_rx,
                |o| {
                    if let Err(e) = b.store.record(&batch.id, &o.custom_id, o.line, o.ok, &o.json) {
                        record_error.get_or_insert(e);
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ =
                        left_counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
                },
            )
            .await;
            *b.running.lock().unwrap() = None;
            if let Some(e) = record_error {
                return Err(e);
            }
            // Finished with a result for every request (a shutdown leaves some without: they run next start)
            let all_done = b.store.batch(&batch.id)?.is_some_and(|r| r.completed + r.failed >= r.total);
            if end == RunEnd::Finished && all_done {
                b.store.set_status(&batch.id, Status::Finalizing, &[Status::InProgress], unix_now())?;
            }
        }
        Status::Finalizing | Status::Cancelling => {
            let store = &b.store;
            let now = unix_now();
            let file = |ok: bool| -> Result<Option<FileRow>> {
                let id = format!(
                    "file-{}-{}",
                    batch.id.trim_start_matches("batch_"),
                    if ok { "output" } else { "errors" }
                );
                let path = store.file_path(&id);
                let n = store.write_results(&batch.id, ok, &path)?;
                if n == 0 {
                    let _ = std::fs::remove_file(&path);
                    return Ok(None);
                }
                let bytes = std::fs::metadata(&path)?.len();
                let filename = format!("{}_{}.jsonl", batch.id, if ok { "output" } else { "errors" });
                Ok(Some(FileRow { id, filename, purpose: "batch_output".into(), bytes, created_at: now }))
            };
            let (output, errors) = (file(true)?, file(false)?);
            store.set_result_files(&batch.id, output.as_ref(), errors.as_ref())?;
            let (to, from) = if batch.status == Status::Finalizing {
                (Status::Completed, Status::Finalizing)
            } else {
                (Status::Cancelled, Status::Cancelling)
            };
            store.set_status(&batch.id, to, &[from], now)?;
        }
        Status::Failed | Status::Completed | Status::Cancelled => {}
    }
    Ok(())
}
