//! What `quire serve` is told on its command line, with the defaults the issue asks for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quire_engine::kv_cache::KvType;
use quire_engine::speculate::SpecConfig;

/// Everything the server needs to start. Build it with [`ServerConfig::new`] and override fields.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind. Loopback by default: exposing a model to the network is a decision, not a default.
    pub host: String,
    /// TCP port; 0 picks a free one (tests read it back from [`crate::Server::local_addr`]).
    pub port: u16,
    /// The GGUF model file.
    pub model_path: PathBuf,
    /// Name reported by `/v1/models` and echoed in responses; defaults to the file stem.
    pub model_name: String,
    /// When set, every endpoint but `/health` (and the static page) requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// When set, CORS headers allow this origin (`*` or `https://host`); CORS is off otherwise.
    pub cors: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Per-request limit from submission to the last token; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Concurrent generations (slots) sharing the model (`--parallel`).
    pub n_slots: usize,
    /// Requests allowed to wait for a slot before new ones get 429.
    pub queue_capacity: usize,
    /// Context per slot in tokens; `None` = [`quire_engine::config::Config::default_ctx`].
    pub ctx: Option<usize>,
    /// Element type of the slots' KV caches (`--kv-type`).
    pub kv_type: KvType,
    /// `kv_type` and `n_slots` were set by the user: the RAM planner keeps them (else it may lower them to
    /// fit the memory).
    pub kv_type_set: bool,
    pub n_slots_set: bool,
    /// `--max-ram`: the memory the plan must fit (default: what the machine has available).
    pub max_ram: Option<usize>,
    /// Speculative decoding (`--spec`, `--spec-max`): prompt lookup and predicted outputs by default.
    pub spec: SpecConfig,
    /// A draft model of the same vocabulary for speculative decoding (`--draft`).
    pub draft_model: Option<PathBuf>,
    /// Prepack the weights in the background after load (`--prepack`).
    pub prepack: bool,
    /// How long in-flight requests may run after SIGINT/SIGTERM before the server exits anyway.
    pub shutdown_grace: Duration,
    /// Interval of `: keep-alive` SSE comments while a stream waits for tokens (queue, long prefill), so
    /// proxies and clients with idle timeouts keep the connection.
    pub keepalive_interval: Duration,
    /// Limit for receiving a request's headers and body, so a slow client cannot hold a connection forever.
    pub read_timeout: Duration,
    /// Open connections beyond this are closed right after accept: a flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Where uploaded files, batch outputs and the batch database live (`--data-dir`); `None`: no batch API.
    pub data_dir: Option<PathBuf>,
    /// `data_dir` is the default one, not asked for: if it cannot be used (in use by another server,
    /// not writable) the server runs without the batch API, with a warning, instead of refusing to start.
    pub data_dir_optional: bool,
    /// Largest upload to `/v1/files`, in bytes.
    pub max_upload_bytes: u64,
    /// More prompt templates (`*.md`), beside the built-in ones.
    pub templates_dir: Option<PathBuf>,
    /// Host names (the `Host` header without its port) accepted besides the loopback ones while the server
    /// listens on a loopback address; `*` accepts any (see [`host_allowed`]).
    pub allowed_hosts: Vec<String>,
}

/// Default port, as llama.cpp's server and most local OpenAI-compatible servers use.
pub const DEFAULT_PORT: u16 = 8080;
/// Default body limit: 1 MiB holds a prompt far longer than any context we serve.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default `--parallel`: two slots suit one 4B instance on a small box.
pub const DEFAULT_SLOTS: usize = 2;
/// Default `--queue`.
pub const DEFAULT_QUEUE: usize = 16;
/// Default `--max-upload`: OpenAI's limit for a batch input file.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 200 << 20;
/// Default `--timeout` in seconds: long enough for a few thousand tokens from a 4B model on a small CPU.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;

impl ServerConfig {
    /// Defaults for serving `model_path` (no API key; the CLI reads `QUIRE_API_KEY`).
    pub fn new(model_path: impl Into<PathBuf>) -> ServerConfig {
        let model_path = model_path.into();
        ServerConfig {
            host: "127.0.0.1".to_string(),
            port: DEFAULT_PORT,
            model_name: model_name_from_path(&model_path),
            model_path,
            api_key: None,
            cors: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout: Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
            n_slots: DEFAULT_SLOTS,
            queue_capacity: DEFAULT_QUEUE,
            ctx: None,
            kv_type: KvType::default(),
            kv_type_set: false,
            n_slots_set: false,
            max_ram: None,
            spec: SpecConfig::default(),
            draft_model: None,
            prepack: true,
            shutdown_grace: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_connections: 512,
            data_dir: None,
            data_dir_optional: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            templates_dir: None,
            allowed_hosts: Vec::new(),
        }
    }

    /// The data dir `quire serve` uses without `--data-dir`: `$XDG_DATA_HOME/quire`, else
    /// `~/.local/share/quire`.
    pub fn default_data_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
        Some(base.join("quire"))
    }

    /// Refuse settings that cannot work, before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.n_slots >= 1, "--parallel must be at least 1");
        anyhow::ensure!(self.ctx != Some(0), "--ctx must be at least 1");
        anyhow::ensure!(self.max_body_bytes >= 1024, "--max-body must be at least 1024 bytes");
        anyhow::ensure!(
            self.timeout != Some(Duration::ZERO),
            "--timeout must be positive (omit it for none)"
        );
        anyhow::ensure!(self.max_connections >= 1, "max_connections must be at least 1");
        anyhow::ensure!(!self.model_name.is_empty(), "the model name must not be empty");
        if let Some(k) = &self.api_key {
            anyhow::ensure!(!k.is_empty(), "--api-key must not be empty");
        }
        Ok(())
    }
}

/// Whether a request with this `Host` header may be served by a server listening on `bind_host` (the
/// `--host` value): the defence against DNS rebinding (ollama CVE-2024-28224), where a web page the user
/// visits resolves its own name to 127.0.0.1 and then reads the loopback-only server with the page's
/// `Host`. A server on a loopback address answers only `localhost`, `*.localhost`, loopback IP literals and
/// the names in `allowed` (`*`: any). One listening elsewhere is meant to be reached by any name: the API
/// key and the network are its guard. A request without `Host` (HTTP/1.0) is no browser's.
pub fn host_allowed(bind_host: &str, allowed: &[String], host_header: Option<&str>) -> bool {
    let loopback = |h: &str| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.to_ascii_lowercase().ends_with(".localhost")
            || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let Some(header) = host_header else { return true };
    if !loopback(bind_host) || allowed.iter().any(|a| a == "*") {
        return true;
    }
    // the name without the port: `[::1]:8080`, `localhost:8080`, `example.com`
    let name = match header.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => header.rsplit_once(':').map_or(header, |(n, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                header
            }
        }),
    };
    loopback(name) || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// `models/Qwen3-4B-Q4_0.gguf` → `Qwen3-4B-Q4_0`: what a user would type as the model name.
pub fn model_name_from_path(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "quire".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_the_file_stem() {
        assert_eq!(model_name_from_path(Path::new("models/Qwen3-4B-Q4_0.gguf")), "Qwen3-4B-Q4_0");
        assert_eq!(model_name_from_path(Path::new("")), "quire");
    }

    #[test]
    fn defaults_are_safe() {
        let c = ServerConfig::new("m.gguf");
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 8080);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!((c.n_slots, c.queue_capacity), (2, 16));
        assert!(c.cors.is_none());
        c.validate().unwrap();
        let bad = ServerConfig { n_slots: 0, ..c };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn loopback_servers_answer_loopback_names_only() {
        let none: Vec<String> = Vec::new();
        for ok in
            ["localhost", "localhost:8080", "127.0.0.1:8080", "127.3.4.5", "[::1]:8080", "app.localhost:1"]
        {
            assert!(host_allowed("127.0.0.1", &none, Some(ok)), "{ok}");
        }
        for bad in
            ["evil.example", "evil.example:8080", "192.168.1.5:8080", "localhost.evil.example", "[::2]:80"]
        {
            assert!(!host_allowed("127.0.0.1", &none, Some(bad)), "{bad}");
            assert!(!host_allowed("localhost", &none, Some(bad)), "{bad}");
            assert!(!host_allowed("::1", &none, Some(bad)), "{bad}");
        }
        assert!(host_allowed("127.0.0.1", &none, None), "no Host: not a browser");
        let extra = vec!["writer.corp".to_string()];
        assert!(host_allowed("127.0.0.1", &extra, Some("Writer.Corp:8080")));
        assert!(!host_allowed("127.0.0.1", &extra, Some("other.corp")));
        assert!(host_allowed("127.0.0.1", &["*".to_string()], Some("evil.example")));
        // listening on every interface: any name (the API key guards it)
        assert!(host_allowed("0.0.0.0", &none, Some("evil.example")));
        assert!(host_allowed("10.0.0.7", &none, Some("quire.corp")));
    }
}
