//! `quire batch`: a batch file run on the command line, without a server: the same validation, the same
//! request code and the same output lines as `/v1/batches`, into an output and an error file that a rerun
//! continues.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use super::files::ResultFile;
use super::input::{self, Limits};
use super::provenance::ModelInfo;
use super::runner::{self, RunEnd};
use crate::config::ServerConfig;
use crate::routes::BatchEndpoint;
use crate::state::{self, AppState, LoadState};

/// What to run and where its results go.
pub struct OfflineJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    /// The model and its slots (`n_slots` requests run at once); the HTTP fields are unused.
    pub cfg: ServerConfig,
    /// The endpoint every line must name; `None`: the first line's.
    pub endpoint: Option<BatchEndpoint>,
}

/// Where a run stands, after each finished request.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Requests in the file.
    pub total: usize,
    /// Done before this run started (their lines were already in the files).
    pub skipped: usize,
    /// Done in this run, and how many of those went to the error file.
    pub done: usize,
    pub failed: usize,
    pub completion_tokens: usize,
    pub secs: f64,
}

impl Progress {
    /// Seconds left at this run's pace, once something finished.
    pub fn eta_secs(&self) -> Option<f64> {
        let left = self.total.saturating_sub(self.skipped + self.done);
        (self.done > 0).then(|| self.secs / self.done as f64 * left as f64)
    }
}

/// Validates the input, loads the model, runs what is not done yet, `on_progress` after the model is loaded
/// and after each request. `stop`: set it (Ctrl-C) to end early; what finished is written, the rest runs
/// next time.
pub fn run(
    job: &OfflineJob,
    stop: tokio::sync::watch::Receiver<bool>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<(Progress, RunEnd)> {
    let open = || -> Result<BufReader<File>> {
        let f = File::open(&job.input).with_context(|| format!("cannot read {}", job.input.display()))?;
        Ok(BufReader::new(f))
    };
    let limits = Limits { max_requests: usize::MAX, max_bytes: u64::MAX, ..Limits::default() };
    let endpoint = match job.endpoint {
        Some(e) => e,
        None => first_endpoint(open()?, &limits).unwrap_or(BatchEndpoint::Chat),
    };
    let summary = input::validate(open()?, Some(endpoint), &limits)
        .map_err(|e| anyhow::anyhow!("{}: {e}", job.input.display()))?;
    let mut done = HashSet::new();
    let mut output = ResultFile::open(&job.output, &mut done)?;
    let mut errors = ResultFile::open(&job.errors, &mut done)?;
    let items: Vec<(usize, String)> = input::lines(open()?, limits.max_line_bytes)
        .filter_map(|(n, l)| l.ok().filter(|l| !l.trim().is_empty()).map(|l| (n, l)))
        .filter_map(|(n, l)| input::parse(n, &l, Some(endpoint)).ok().map(|i| (n, i.custom_id().to_string())))
        .collect();
    let skipped = items.iter().filter(|(_, id)| done.contains(id)).count();
    if done.len() > skipped {
        bail!(
            "{} or {} holds results for custom_ids that are not in {}: pick new output files for another input",
            job.output.display(),
            job.errors.display(),
            job.input.display()
        );
    }
    drop(items);
    let mut progress = Progress { total: summary.requests, skipped, ..Default::default() };
    if skipped == summary.requests {
        on_progress(&progress);
        return Ok((progress, RunEnd::Finished));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quire-batch")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let state = Arc::new(AppState::new(job.cfg.clone(), None, crate::templates::Library::builtin()));
    let ready = Arc::new(state::load_model(&state.cfg)?);
    state.set_load_state(LoadState::Ready(ready.clone()));
    let quant = ready.engine.model.main_type();
    let model = Arc::new(ModelInfo::of(&job.cfg.model_path, quant)?);
    let parallel = ready.n_slots;
    let reader = open()?;
    let pending = input::lines(reader, limits.max_line_bytes).filter_map(move |(n, l)| {
        let l = l.ok()?;
        if l.trim().is_empty() {
            return None;
        }
        let item = input::parse(n, &l, Some(endpoint)).ok()?;
        (!done.contains(item.custom_id())).then_some(item)
    });
    let t0 = Instant::now();
    on_progress(&progress);
    let mut write_error = None;
    let end = rt.block_on(runner::run(
        state.clone(),
        ready,
        model,
        pending,
        parallel,
        stop,
        |o: runner::Outcome| {
            if write_error.is_some() {
                return;
            }
            let file = if o.ok { &mut output } else { &mut errors };
            if let Err(e) = file.append(&o.json) {
                write_error = Some(e);
                return;
            }
            progress.done += 1;
            progress.failed += usize::from(!o.ok);
            progress.completion_tokens += o.completion_tokens;
            progress.secs = t0.elapsed().as_secs_f64();
            on_progress(&progress);
        },
    ));
    if let Some(e) = write_error {
        return Err(e);
    }
    Ok((progress, end))
}

/// The endpoint of the first line naming a known one.
fn first_endpoint(input: BufReader<File>, limits: &Limits) -> Option<BatchEndpoint> {
    input::lines(input, limits.max_line_bytes).find_map(|(_, l)| {
        let v: serde_json::Value = serde_json::from_str(&l.ok()?).ok()?;
        BatchEndpoint::from_url(v.get("url")?.as_str()?)
    })
}
