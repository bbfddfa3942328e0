//! `quire batch`: run a batch file (OpenAI's JSONL batch format) on the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use quire_server::batch::offline::{self, OfflineJob, Progress};
use quire_server::batch::runner::RunEnd;
use quire_server::routes::BatchEndpoint;
use quire_server::ServerConfig;

use crate::args::ModelArgs;

#[derive(Args, Clone, Debug)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The requests: one JSON object per line, `{"custom_id", "method": "POST", "url", "body"}`.
    pub input: PathBuf,
    /// Where the answered requests go (appended to: a rerun continues where the last run stopped).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Where the failed requests go (default: OUTPUT with `.errors.jsonl` for its extension).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Requests generating at once, batched together on every decode step.
    #[arg(long, default_value_t = 4, value_parser = crate::args::positive)]
    pub parallel: usize,
}

impl BatchArgs {
    fn errors_path(&self) -> PathBuf {
        self.errors.clone().unwrap_or_else(|| {
            let stem = self.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            self.output.with_file_name(format!("{stem}.errors.jsonl"))
        })
    }
}

pub fn run(args: &BatchArgs, prepack: bool) -> Result<()> {
    args.model.threads.init()?;
    let log_filter = std::env::var("QUIRE_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    quire_server::init_logging(Some(log_filter.as_deref().unwrap_or("warn")));
    let mut cfg = ServerConfig::new(&args.model.model);
    cfg.n_slots = args.parallel;
    cfg.ctx = args.model.cache.ctx;
    cfg.kv_type = args.model.cache.kv_type;
    cfg.prepack = prepack;
    cfg.timeout = None;
    cfg.queue_capacity = args.parallel;
    let job = OfflineJob {
        input: args.input.clone(),
        output: args.output.clone(),
        errors: args.errors_path(),
        cfg,
        endpoint: None::<BatchEndpoint>,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Mutex::new(Some(tx));
    ctrlc_once(move || {
        if let Some(tx) = stop_tx.lock().unwrap().take() {
            eprintln!("\nstopping: the requests in flight run again next time");
            let _ = tx.send(true);
        }
    });
    let mut bar = Bar::new();
    let (p, end) = offline::run(&job, rx, |p| bar.update(p))?;
    bar.finish(&p);
    let errors = job.errors.display();
    match end {
        RunEnd::Finished => {
            let failed =
                if p.failed > 0 { format!("; {} failed, in {errors}", p.failed) } else { String::new() };
            eprintln!(
                "batch: {} of {} done ({} in this run{failed}); results in {}",
                p.skipped + p.done,
                p.total,
                p.done,
                job.output.display()
            );
            Ok(())
        }
        RunEnd::Stopped => {
            eprintln!(
                "batch: stopped at {} of {}; run the same command again to continue",
                p.skipped + p.done,
                p.total
            );
            std::process::exit(130)
        }
    }
}

/// Calls `f` on the first SIGINT (a second one ends the process as usual).
fn ctrlc_once(f: impl Fn() + Send + Sync + 'static) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    f();
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
        }
    });
}

/// A progress bar on a terminal; a line every ten seconds otherwise (logs, CI).
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
}

impl Bar {
    fn new() -> Bar {
        Bar { bar: None, last_line: Instant::now() }
    }

    fn text(p: &Progress) -> String {
        let tps = if p.secs > 0.0 { p.completion_tokens as f64 / p.secs } else { 0.0 };
        let eta = p
            .eta_secs()
            .map_or("-".to_string(), |s| format!("{}", indicatif::HumanDuration(Duration::from_secs_f64(s))));
        format!("{} failed, {tps:.1} tok/s, ETA {eta}", p.failed)
    }

    fn update(&mut self, p: &Progress) {
        let at = (p.skipped + p.done) as u64;
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(p.total as u64);
                let style = indicatif::ProgressStyle::with_template("batch [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                b.set_style(style.progress_chars("=> "));
                b
            });
            bar.set_position(at);
            bar.set_message(Self::text(p));
        } else if p.done == 0 || self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            eprintln!("batch: {at}/{} done, {}", p.total, Self::text(p));
        }
    }

    fn finish(&mut self, p: &Progress) {
        if let Some(b) = self.bar.take() {
            b.set_position((p.skipped + p.done) as u64);
            b.finish();
        }
    }
}
