//! `quire convert`: a Hugging Face Qwen3/Qwen2 checkpoint to a GGUF file in one step.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use quire_convert::{convert, ConvertOptions, OutType};
use quire_engine::memory::human_bytes;

/// Convert a Hugging Face checkpoint (safetensors + config + tokenizer) to GGUF.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The Hugging Face model directory (config.json, tokenizer.json, *.safetensors).
    pub input: PathBuf,
    /// Output GGUF file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Tensor type: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k_m, q4_k_m, q6_k, iq4_nl, iq4_xs, f16, bf16 or f32
    /// (llama.cpp's mixtures and rules).
    #[arg(long = "type", default_value = "q4_k_m")]
    pub out_type: String,
    /// Worker threads for quantization (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// general.name to record (default: from the directory name).
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Runs the conversion on a private thread pool of `--threads` workers and prints a one-line summary.
pub fn run(args: ConvertArgs) -> Result<()> {
    let out_type = OutType::parse(&args.out_type)?;
    let opts = ConvertOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        out_type,
        progress: !args.quiet,
        name: args.name.clone(),
    };
    let summary = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        // A private pool: the global one may already be sized by another command in this process.
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("cannot start the thread pool")?
            .install(|| convert(&opts))?,
        None => convert(&opts)?,
    };
    eprintln!(
        "wrote {} ({}, {} tensors, {}) from {} of {} weights in {:.1} s",
        summary.output.display(),
        out_type.name(),
        summary.n_tensors,
        human_bytes(summary.bytes_out as usize),
        human_bytes(summary.bytes_in as usize),
        args.input.display(),
        summary.secs
    );
    Ok(())
}
