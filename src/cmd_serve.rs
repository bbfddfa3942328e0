//! `quire serve`: the HTTP server's flags, mapped onto [`ServerConfig`].

use std::time::Duration;

use clap::Args;
use quire_server::config::{self, ServerConfig};

use crate::args::{ModelArgs, SpecArgs};

/// `quire serve`: flags and their defaults.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// The model, threads, context per slot and KV cache type.
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Address to listen on (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port.
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Requests generating at once (slots), batched together on every decode step (default: 2, fewer when
    /// memory is short).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Requests that may wait for a free slot; beyond this, 429 Too Many Requests.
    #[arg(long, default_value_t = config::DEFAULT_QUEUE)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (or set QUIRE_API_KEY).
    #[arg(long, env = "QUIRE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow cross-origin browser requests from this origin (`*` for any); CORS is off without it.
    #[arg(long)]
    pub cors: Option<String>,
    /// Host names to answer besides localhost while listening on a loopback address, comma-separated
    /// (`*`: any). Other `Host` headers get 403: a web page cannot reach the server through DNS rebinding.
    #[arg(long, value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body: usize,
    /// Per-request time limit in seconds, queue wait included (0 = none).
    #[arg(long, default_value_t = config::DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Model name reported by /v1/models (default: the file name without extension).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Where batch jobs, uploaded files and outputs live (default: $XDG_DATA_HOME/quire, or
    /// ~/.local/share/quire; one server per dir).
    #[arg(long, env = "QUIRE_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Largest file upload to /v1/files, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload: u64,
    /// A folder of prompt templates (`*.md`, see examples/templates/) offered beside the built-in ones,
    /// to the web page and to POST /v1/batches.
    #[arg(long, env = "QUIRE_TEMPLATES")]
    pub templates: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// The server configuration these flags describe (`prepack`: the global `--prepack`).
    pub fn to_config(&self, prepack: bool) -> ServerConfig {
        let mut cfg = ServerConfig::new(&self.model.model);
        cfg.host = self.host.clone();
        cfg.port = self.port;
        cfg.n_slots = self.parallel.unwrap_or(config::DEFAULT_SLOTS);
        cfg.n_slots_set = self.parallel.is_some();
        cfg.queue_capacity = self.queue;
        cfg.ctx = self.model.cache.ctx;
        cfg.kv_type = self.model.cache.kv_type();
        cfg.kv_type_set = self.model.cache.kv_type.is_some();
        cfg.max_ram = self.model.cache.max_ram;
        cfg.spec = self.spec.config();
        cfg.draft_model = self.spec.draft.clone();
        cfg.prepack = prepack;
        // clap read QUIRE_API_KEY into `api_key` when the flag is absent; an empty value means "no key".
        cfg.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        cfg.cors = self.cors.clone();
        cfg.allowed_hosts = self.allowed_hosts.clone();
        cfg.max_body_bytes = self.max_body;
        cfg.timeout = (self.timeout > 0).then(|| Duration::from_secs(self.timeout));
        if let Some(name) = &self.model_name {
            cfg.model_name = name.clone();
        }
        cfg.data_dir = self.data_dir.clone().or_else(ServerConfig::default_data_dir);
        cfg.data_dir_optional = self.data_dir.is_none();
        cfg.max_upload_bytes = self.max_upload;
        cfg.templates_dir = self.templates.clone();
        cfg
    }
}

/// Run `quire serve` to completion: the worker pool, logging to stderr, serve until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs, prepack: bool) -> anyhow::Result<()> {
    let cfg = args.to_config(prepack);
    cfg.validate()?;
    args.model.threads.init()?;
    let log_filter = std::env::var("QUIRE_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    quire_server::init_logging(log_filter.as_deref());
    quire_server::run(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_map_to_config() {
        let cli = Cli::parse_from([
            "quire",
            "-m",
            "models/Qwen3-4B-Q4_0.gguf",
            "--port",
            "9000",
            "--parallel",
            "4",
            "--queue",
            "8",
            "--ctx",
            "2048",
            "--api-key",
            "k",
            "--cors",
            "*",
            "--max-body",
            "2048",
            "--timeout",
            "0",
            "--kv-type",
            "q8_0",
            "--spec",
            "off",
        ]);
        let c = cli.serve.to_config(false);
        assert_eq!((c.host.as_str(), c.port, c.n_slots, c.queue_capacity), ("127.0.0.1", 9000, 4, 8));
        assert_eq!((c.ctx, c.api_key.as_deref(), c.cors.as_deref()), (Some(2048), Some("k"), Some("*")));
        assert_eq!((c.max_body_bytes, c.timeout, c.prepack), (2048, None, false));
        assert_eq!(c.kv_type, quire_engine::kv_cache::KvType::Q8_0);
        assert_eq!(c.spec.limit(), 0, "--spec off drafts nothing");
        assert_eq!(c.model_name, "Qwen3-4B-Q4_0");
        let d = Cli::parse_from(["quire", "-m", "m.gguf"]).serve.to_config(true);
        assert_eq!((d.port, d.n_slots, d.queue_capacity, d.max_body_bytes), (8080, 2, 16, 1 << 20));
        assert_eq!(d.timeout, Some(Duration::from_secs(600)));
        assert_eq!(d.spec, quire_engine::speculate::SpecConfig::default(), "prompt lookup is on by default");
        let m = Cli::parse_from(["quire", "-m", "m.gguf", "--spec-max", "16"]).serve.to_config(true);
        assert_eq!(m.spec.limit(), 16);
        assert!(Cli::try_parse_from(["quire", "-m", "m.gguf", "--spec-max", "17"]).is_err());
        assert!(Cli::try_parse_from(["quire", "-m", "m.gguf", "--spec", "maybe"]).is_err());
        assert!(d.prepack);
    }
}
