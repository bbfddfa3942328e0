//! The `quire serve` command line, kept next to the server so its flags and defaults live with the code
//! they configure; the `quire` binary only mounts it as a subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{self, ServerConfig};
use quire_engine::kv_cache::KvType;

/// `quire serve`: flags and their defaults.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Path to a GGUF model file.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Address to listen on (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port.
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Requests generating at once (slots), batched together on every decode step.
    #[arg(long, default_value_t = config::DEFAULT_SLOTS)]
    pub parallel: usize,
    /// Requests that may wait for a free slot; beyond this, 429 Too Many Requests.
    #[arg(long, default_value_t = config::DEFAULT_QUEUE)]
    pub queue: usize,
    /// Context per slot in tokens (default: 4096, or the model's trained context if smaller).
    #[arg(short = 'c', long = "ctx")]
    pub ctx: Option<usize>,
    /// Compute threads (default: one per physical core, or per listed core).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Pin the workers to these CPUs, e.g. `0,2-3` (default: one per physical core).
    #[arg(long = "cpu-list")]
    pub cpu_list: Option<String>,
    /// KV cache element type: f16 (default), q8_0 (half the memory of f16) or f32.
    #[arg(long = "kv-type", default_value = "f16")]
    pub kv_type: KvType,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (or set QUIRE_API_KEY).
    #[arg(long, env = config::API_KEY_ENV, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow cross-origin browser requests from this origin (`*` for any); CORS is off without it.
    #[arg(long)]
    pub cors: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body: usize,
    /// Per-request time limit in seconds, queue wait included (0 = none).
    #[arg(long, default_value_t = config::DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Model name reported by /v1/models (default: the file name without extension).
    #[arg(long)]
    pub model_name: Option<String>,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn to_config(&self) -> ServerConfig {
        let mut cfg = ServerConfig::new(&self.model);
        cfg.host = self.host.clone();
        cfg.port = self.port;
        cfg.n_slots = self.parallel;
        cfg.queue_capacity = self.queue;
        cfg.ctx = self.ctx;
        cfg.threads = self.threads;
        cfg.cpu_list = self.cpu_list.clone();
        cfg.kv_type = self.kv_type;
        // clap already read QUIRE_API_KEY into `api_key`; an empty value means "no key".
        cfg.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        cfg.cors = self.cors.clone();
        cfg.max_body_bytes = self.max_body;
        cfg.timeout = (self.timeout > 0).then(|| Duration::from_secs(self.timeout));
        if let Some(name) = &self.model_name {
            cfg.model_name = name.clone();
        }
        cfg
    }
}

/// Run `quire serve` to completion: logging to stderr, a tokio runtime, serve until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    crate::init_logging();
    crate::run(args.to_config())
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
        ]);
        let c = cli.serve.to_config();
        assert_eq!((c.host.as_str(), c.port, c.n_slots, c.queue_capacity), ("127.0.0.1", 9000, 4, 8));
        assert_eq!((c.ctx, c.api_key.as_deref(), c.cors.as_deref()), (Some(2048), Some("k"), Some("*")));
        assert_eq!((c.max_body_bytes, c.timeout), (2048, None));
        assert_eq!(c.model_name, "Qwen3-4B-Q4_0");
        let d = Cli::parse_from(["quire", "-m", "m.gguf"]).serve.to_config();
        assert_eq!((d.port, d.n_slots, d.queue_capacity, d.max_body_bytes), (8080, 2, 16, 1 << 20));
        assert_eq!(d.timeout, Some(Duration::from_secs(600)));
    }
}
