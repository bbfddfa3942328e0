//! `quire bench`: prompt-processing and generation speed, like llama.cpp's `llama-bench`.
//!
//! `ppN`: one forward pass over N prompt tokens from an empty cache (logits for the last one only);
//! `tgN`: N single-token steps from an empty cache. Tokens are fixed pseudo-random ids, so runs are
//! reproducible. One short warm-up of each precedes the timed repetitions (as llama-bench does). Also reports
//! the load time (file in page cache or not, as it is), the time to the first token of an 8-token prompt right
//! after load (while the weights are still being prepacked in the background) and when prepacking finished
//! (the timed tests wait for it), both in seconds from the start of the load, and the peak resident memory of
//! the whole run.

use std::time::Instant;

use anyhow::{bail, Result};
use quire_engine::generate::Engine;
use quire_engine::kv_cache::KvCache;
use quire_engine::memory::{human_bytes, peak_rss_bytes};
use quire_engine::model::{LoadOptions, Logits, Model, RunState, SeqBatch};

use crate::args::ModelArgs;

/// Benchmark prompt processing and generation on a model file.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The model, threads and KV cache type (`--ctx`: the caches' size, default prompt + generated tokens).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one batch (0 = skip the pp test).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens generated one at a time (0 = skip the tg test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Timed repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: usize,
    /// Sequences decoded together in the tg test (continuous batching, as `quire serve --parallel N`
    /// does): each step runs one token of every sequence in one pass. Reports the aggregate tokens/s.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Reproducible token ids below `vocab` (a simple LCG; the content does not matter for speed).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Seconds for one forward pass over `n` prompt tokens from an empty cache.
fn time_prompt(model: &Model, state: &mut RunState, kv: &mut KvCache, n: usize, seed: u64) -> Result<f64> {
    let ids = tokens(n, model.config.vocab_size, seed);
    kv.clear();
    let t = Instant::now();
    model.forward(state, kv, &ids, 0, Logits::Last)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds for `n` decode steps from empty caches, each step one token of every sequence (one cache each)
/// in one forward pass.
fn time_gen(model: &Model, state: &mut RunState, kvs: &mut [KvCache], n: usize, seed: u64) -> Result<f64> {
    let ids: Vec<Vec<u32>> =
        (0..kvs.len()).map(|s| tokens(n, model.config.vocab_size, seed + 1000 * s as u64)).collect();
    kvs.iter_mut().for_each(KvCache::clear);
    let t = Instant::now();
    for step in 0..n {
        let mut batch: Vec<SeqBatch> = kvs
            .iter_mut()
            .zip(&ids)
            .map(|(kv, ids)| SeqBatch { kv, tokens: &ids[step..step + 1], want: Logits::Last })
            .collect();
        model.forward_multi(state, &mut batch)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(args: BenchArgs, opts: &LoadOptions) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.streams == 0 {
        bail!("--streams must be at least 1");
    }
    let threads = args.model.threads.init()?;
    let kv_type = args.model.cache.kv_type();
    let t0 = Instant::now();
    let engine = Engine::load_with(&args.model.model, opts)?;
    let load_secs = t0.elapsed().as_secs_f64();
    let model = &engine.model;
    let c = &model.config;

    let n_ctx = args.model.cache.ctx.unwrap_or((args.n_prompt + args.n_gen).max(1));
    if n_ctx < args.n_prompt + args.n_gen {
        bail!("--ctx {n_ctx} is smaller than the {} prompt and generated tokens", args.n_prompt + args.n_gen);
    }
    // one cache per stream; the pp test uses the first
    let mut kvs =
        (0..args.streams).map(|_| KvCache::with_type(c, n_ctx, kv_type)).collect::<Result<Vec<_>>>()?;
    let mut state = RunState::new();
    time_prompt(model, &mut state, &mut kvs[0], 8.min(n_ctx), 0)?;
    let first_token_secs = t0.elapsed().as_secs_f64();
    model.wait_prepacked();
    let prepacked_secs = t0.elapsed().as_secs_f64();
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    if args.n_prompt > 0 {
        time_prompt(model, &mut state, &mut kvs[0], args.n_prompt.min(32), 0)?; // warm-up
        for r in 0..args.repetitions {
            let secs = time_prompt(model, &mut state, &mut kvs[0], args.n_prompt, r as u64 + 1)?;
            pp.push(args.n_prompt as f64 / secs);
        }
    }
    if args.n_gen > 0 {
        time_gen(model, &mut state, &mut kvs, 1, 0)?; // warm-up
        for r in 0..args.repetitions {
            let secs = time_gen(model, &mut state, &mut kvs, args.n_gen, r as u64 + 100)?;
            tg.push((args.n_gen * args.streams) as f64 / secs);
        }
    }
    let peak_rss = peak_rss_bytes().unwrap_or(0);
    let file_bytes = model.file.file_len();
    let name = format!("{} {} {}", c.arch.name(), model.n_params(), model.main_type());

    if args.json {
        let (pp_mean, pp_sd) = if pp.is_empty() { (0.0, 0.0) } else { mean_sd(&pp) };
        let (tg_mean, tg_sd) = if tg.is_empty() { (0.0, 0.0) } else { mean_sd(&tg) };
        let out = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "model_name": name,
            "file_bytes": file_bytes,
            "threads": threads,
            "kv_type": kv_type.name(),
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "streams": args.streams,
            "repetitions": args.repetitions,
            "pp_tps": pp_mean,
            "pp_tps_sd": pp_sd,
            "pp_samples": pp,
            "tg_tps": tg_mean,
            "tg_tps_sd": tg_sd,
            "tg_samples": tg,
            "load_secs": load_secs,
            "first_token_secs": first_token_secs,
            "prepacked_secs": prepacked_secs,
            "decode_rows": model.decodes_with_rows(),
            "peak_rss_bytes": peak_rss,
        });
        println!("{out}");
        return Ok(());
    }
    println!("| model | size | threads | kv | test | t/s |");
    println!("|---|---:|---:|---|---|---:|");
    let size = human_bytes(file_bytes);
    let tg_name = match args.streams {
        1 => format!("tg{}", args.n_gen),
        s => format!("tg{} x{s} streams", args.n_gen),
    };
    for (test, samples) in [(format!("pp{}", args.n_prompt), &pp), (tg_name, &tg)] {
        if samples.is_empty() {
            continue;
        }
        let (mean, sd) = mean_sd(samples);
        println!("| {name} | {size} | {threads} | {kv_type} | {test} | {mean:.2} ± {sd:.2} |");
    }
    println!();
    println!(
        "load {:.2} s, first token {:.2} s, {} | peak RSS {} (file {} + KV cache {}) | {} repetitions",
        load_secs,
        first_token_secs,
        if model.decodes_with_rows() {
            "decode: row kernels on the file's layout (measured faster here)".to_string()
        } else {
            format!("prepacked {prepacked_secs:.2} s")
        },
        human_bytes(peak_rss),
        size,
        human_bytes(kvs.iter().map(KvCache::bytes).sum()),
        args.repetitions
    );
    Ok(())
}
