//! `quire batch`: run a batch file (OpenAI's JSONL batch format) on the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use quire_server::batch::data::{read_rows, write_requests, Format};
use quire_server::batch::input::FileError;
use quire_server::batch::offline::{self, OfflineJob, Progress};
use quire_server::batch::runner::RunEnd;
use quire_server::routes::BatchEndpoint;
use quire_server::templates::Library;
use quire_server::ServerConfig;

use crate::args::{ModelArgs, SpecArgs};

#[derive(Args, Clone, Debug)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The requests: one JSON object per line, `{"custom_id", "method": "POST", "url", "body"}`.
    #[arg(required_unless_present = "template", conflicts_with_all = ["template", "data"])]
    pub input: Option<PathBuf>,
    /// Make the requests from a template instead: a built-in one (`product-description`,
    /// `product-description.zh`, … see `quire templates`) or a template file; one request per row of --data.
    #[arg(long, requires = "data")]
    pub template: Option<String>,
    /// The rows for --template: a CSV file with a header line, or JSONL (one object per line); a
    /// `custom_id` column names each request (else `row-N`).
    #[arg(long, requires = "template")]
    pub data: Option<PathBuf>,
    /// Where the requests made from --template go (default: OUTPUT with `.requests.jsonl`).
    #[arg(long, requires = "template")]
    pub requests: Option<PathBuf>,
    /// Where the answered requests go (appended to: a rerun continues where the last run stopped).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Where the failed requests go (default: OUTPUT with `.errors.jsonl` for its extension).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Requests generating at once, batched together on every decode step (default: 4, fewer when memory
    /// is short).
    #[arg(long, value_parser = crate::args::positive)]
    pub parallel: Option<usize>,
}

impl BatchArgs {
    fn beside_output(&self, ext: &str) -> PathBuf {
        let stem = self.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        self.output.with_file_name(format!("{stem}.{ext}.jsonl"))
    }

    /// The batch file to run: INPUT, or the requests rendered from --template and --data (written anew
    /// each run: the same rows give the same requests, so a rerun continues).
    fn input_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.input {
            return Ok(p.clone());
        }
        let (Some(name), Some(data)) = (&self.template, &self.data) else {
            anyhow::bail!("give a batch file, or --template and --data")
        };
        let template = Library::builtin().resolve(name).map_err(anyhow::Error::msg)?;
        let text = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
        let format = Format::of(&data.to_string_lossy(), &text[..text.len().min(64)]);
        let rows = read_rows(&text[..], format, usize::MAX)
            .and_then(|rows| {
                let path = self.requests.clone().unwrap_or_else(|| self.beside_output("requests"));
                let tmp = path.with_extension("jsonl.tmp");
                let f = std::fs::File::create(&tmp)
                    .map_err(|e| FileError(format!("cannot write {}: {e}", tmp.display())))?;
                let n = write_requests(&template, &rows, std::io::BufWriter::new(f))?;
                std::fs::rename(&tmp, &path)
                    .map_err(|e| FileError(format!("cannot write {}: {e}", path.display())))?;
                Ok((n, path))
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
        eprintln!(
            "batch: {} requests from template '{}' and {}, in {}",
            rows.0,
            template.id,
            data.display(),
            rows.1.display()
        );
        Ok(rows.1)
    }
}

pub fn run(args: &BatchArgs, prepack: bool) -> Result<()> {
    args.model.threads.init()?;
    let log_filter = std::env::var("QUIRE_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    quire_server::init_logging(Some(log_filter.as_deref().unwrap_or("warn")));
    let mut cfg = ServerConfig::new(&args.model.model);
    cfg.n_slots = args.parallel.unwrap_or(4);
    cfg.n_slots_set = args.parallel.is_some();
    cfg.ctx = args.model.cache.ctx;
    cfg.kv_type = args.model.cache.kv_type();
    cfg.kv_type_set = args.model.cache.kv_type.is_some();
    cfg.max_ram = args.model.cache.max_ram;
    cfg.spec = args.spec.config();
    cfg.draft_model = args.spec.draft.clone();
    cfg.prepack = prepack;
    cfg.timeout = None;
    cfg.queue_capacity = cfg.n_slots;
    let job = OfflineJob {
        input: args.input_path()?,
        output: args.output.clone(),
        errors: args.errors.clone().unwrap_or_else(|| args.beside_output("errors")),
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
