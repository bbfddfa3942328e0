//! Quire's HTTP server: an OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`), the seed's simple `/generate` and `/stream`, `/health`, `/metrics` and a static page at
//! `/`, on hyper 1.x and tokio with no web framework.
//!
//! The server listens before the model is loaded (loading runs on a blocking thread; `/health` says 503
//! `loading` until it is done), so orchestrators can tell "starting" from "dead". Generation runs on the
//! engine's scheduler thread; its events reach the async side through unbounded channels (see [`sse`]).

pub mod batch;
pub mod config;
pub mod errors;
pub mod metrics;
pub mod openai;
pub mod request_log;
pub mod routes;
pub mod sse;
pub mod state;
pub mod templates;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use quire_engine::scheduler::SchedulerStats;
use state::{AppState, LoadState};

/// A bound server whose model is loading (or loaded). Start it with [`Server::run_until`].
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
}

/// A view of a running server for tests and embedding: readiness and scheduler numbers.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<AppState>,
}

impl ServerHandle {
    /// The scheduler's counters, once the model is loaded.
    pub fn stats(&self) -> Option<SchedulerStats> {
        self.state.scheduler_stats()
    }

    /// True once the model is loaded and requests are served.
    pub fn is_ready(&self) -> bool {
        matches!(self.state.load_state(), LoadState::Ready(_))
    }

    /// Wait until the model is loaded; the loading error if it failed.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut rx = self.state.subscribe_load();
        let s =
            rx.wait_for(|s| !matches!(s, LoadState::Loading)).await.context("the server stopped")?.clone();
        match s {
            LoadState::Failed(m) => bail!("the model failed to load: {m}"),
            _ => Ok(()),
        }
    }
}

impl Server {
    /// Bind the listening socket and start loading the model in the background. Must be called inside a
    /// tokio runtime.
    pub async fn bind(cfg: ServerConfig) -> anyhow::Result<Server> {
        cfg.validate()?;
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let batches = match &cfg.data_dir {
            Some(dir) => match batch::service::Batches::open(dir, cfg.max_upload_bytes) {
                Ok(b) => {
                    tracing::info!("batch jobs and files in {}", dir.display());
                    Some(Arc::new(b))
                }
                Err(e) if cfg.data_dir_optional => {
                    tracing::warn!(
                        "{e:#}; the batch API (/v1/files, /v1/batches) is off (use --data-dir DIR)"
                    );
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let templates = match &cfg.templates_dir {
            Some(dir) => templates::Library::with_dir(dir).map_err(anyhow::Error::msg)?,
            None => templates::Library::builtin(),
        };
        let state = Arc::new(AppState::new(cfg, batches, templates));
        tokio::spawn(batch::service::worker(state.clone()));
        let loader = state.clone();
        tokio::task::spawn_blocking(move || {
            let s = match state::load_model(&loader.cfg) {
                Ok(ready) => {
                    let ready = Arc::new(ready);
                    // A signal may have arrived while loading: do not start serving then.
                    if loader.is_shutting_down() {
                        ready.scheduler.shutdown();
                    }
                    LoadState::Ready(ready)
                }
                Err(e) => {
                    tracing::error!("cannot load the model: {e:#}");
                    LoadState::Failed(format!("{e:#}"))
                }
            };
            loader.set_load_state(s);
        });
        Ok(Server { listener, state })
    }

    /// The bound address (to learn the port after binding port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle { state: self.state.clone() }
    }

    /// Serve until `shutdown` completes (or the model fails to load: then an error), then shut down
    /// gracefully: stop accepting, refuse new generations, and give open connections
    /// `cfg.shutdown_grace` to finish what they are doing.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server { listener, state } = self;
        let graceful = GracefulShutdown::new();
        let load_failed = {
            let mut rx = state.subscribe_load();
            async move {
                let failed = rx.wait_for(|s| matches!(s, LoadState::Failed(_))).await.map(|s| match &*s {
                    LoadState::Failed(m) => m.clone(),
                    _ => String::from("unknown error"),
                });
                match failed {
                    Ok(m) => m,
                    // The state outlives this loop, so this never happens; never resolving is the safe answer.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        tokio::pin!(load_failed);
        tokio::pin!(shutdown);
        let outcome = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    serve_connection(&state, &graceful, stream, peer);
                }
                _ = &mut shutdown => break Ok(()),
                m = &mut load_failed => break Err(anyhow::anyhow!("the model failed to load: {m}")),
            }
        };
        drop(listener);
        state.begin_shutdown();
        let open = graceful.count();
        if open > 0 {
            tracing::info!(
                "shutting down: waiting up to {:?} for {open} open connection(s)",
                state.cfg.shutdown_grace
            );
        }
        if tokio::time::timeout(state.cfg.shutdown_grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
        }
        outcome
    }
}

/// Counts a connection as open for as long as it lives.
struct ConnectionGuard(Arc<AppState>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn serve_connection(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let open = state.open_connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnectionGuard(state.clone());
    if open >= state.cfg.max_connections {
        tracing::warn!("refusing a connection from {peer}: {open} already open");
        return;
    }
    // Tokens are small writes: send each at once rather than waiting for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let st = state.clone();
    let service = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(routes::handle(st, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.cfg.read_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = conn.await {
            tracing::debug!("connection from {peer}: {e}");
        }
    });
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, docker stop).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Bind, log the address, and serve until SIGINT/SIGTERM.
pub async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let server = Server::bind(cfg).await?;
    let addr = server.local_addr()?;
    let st = &server.state;
    tracing::info!(
        "listening on http://{addr} (model {} loading; {} slots, queue {}{}{})",
        st.cfg.model_name,
        st.cfg.n_slots,
        st.cfg.queue_capacity,
        if st.cfg.api_key.is_some() { ", API key required" } else { "" },
        st.cfg.cors.as_deref().map(|o| format!(", CORS for {o}")).unwrap_or_default(),
    );
    server.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// [`serve`] on a tokio runtime of its own: the entry point for the CLI, which is not async. Two runtime
/// threads are plenty: they only move bytes; the model runs on the scheduler's threads.
pub fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quire-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cfg))
}

/// Log to stderr with `filter` (tracing's `EnvFilter` syntax, e.g. `debug` or `quire_server=debug`; `info`
/// when `None` or invalid). Safe to call more than once: the first call wins.
pub fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = filter.and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
