//! `quire synth`: a random-weight Hugging Face checkpoint of a real model's shape (a developer tool for
//! benchmarks and tests that must not download anything).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use quire_convert::synth::{find_fixtures, synthesize, Preset, SynthOptions};
use quire_engine::memory::human_bytes;

/// Make a random-weight checkpoint (sharded bf16 safetensors, config, real Qwen3 tokenizer).
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Shape: qwen3-4b (Qwen3-4B-Instruct-2507, 8 GB), tiny (2-layer Qwen3, full vocabulary, 80 MB) or
    /// tiny-qwen2.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Output directory (created; must be new or empty).
    pub out_dir: PathBuf,
    /// Seed of the random weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The shared fixtures directory with qwen3-tokenizer/ and the Qwen3-4B config (default:
    /// $QUIRE_FIXTURES, else ../shared/fixtures found from here).
    #[arg(long, env = "QUIRE_FIXTURES")]
    pub fixtures: Option<PathBuf>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let preset = Preset::parse(&args.preset)?;
    let fixtures = args.fixtures.clone().or_else(find_fixtures).ok_or_else(|| {
        anyhow!(
            "cannot find the shared fixtures (qwen3-tokenizer/); pass --fixtures DIR or set QUIRE_FIXTURES"
        )
    })?;
    let summary = synthesize(&SynthOptions {
        preset,
        out_dir: args.out_dir.clone(),
        seed: args.seed,
        fixtures,
        progress: !args.quiet,
    })?;
    eprintln!(
        "wrote {} ({} tensors, {} bf16 in {} shard(s), seed {}) in {:.1} s",
        args.out_dir.display(),
        summary.n_tensors,
        human_bytes(summary.bytes as usize),
        summary.n_shards,
        args.seed,
        summary.secs
    );
    Ok(())
}
