//! Random-weight Hugging Face checkpoints of real shapes, for benchmarks and tests that must not download
//! anything: `quire synth --preset qwen3-4b DIR`.
//!
//! The output looks like a published Qwen checkpoint: `config.json`, `generation_config.json`, the real
//! Qwen3 tokenizer files, bf16 safetensors shards named `model-0000N-of-0000M.safetensors` and
//! `model.safetensors.index.json` (written last, so an interrupted run is recognisable as incomplete).
//! Weights are ~N(0, 0.02) (the `initializer_range` Qwen uses), norm weights 1 + N(0, 0.02), biases
//! N(0, 0.02). Values come from a seeded generator per 1M-value chunk, so the same seed gives the same
//! bytes whatever the thread count, and chunks are generated in parallel and streamed to disk: making the
//! 8 GB Qwen3-4B checkpoint needs a few tens of MB of memory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde_json::{json, Value};

use super::hf_config::HfConfig;
use super::safetensors::{encode_header, SrcDType, INDEX_FILE};
use super::{expected_tensors, Expected};

/// Checkpoint shapes `quire synth` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Qwen3-4B-Instruct-2507's published `config.json` (from the fixtures): 36 layers, hidden 2560, 8 GB.
    Qwen3_4B,
    /// A 2-layer Qwen3 (hidden 256, 4/2 heads of 128, ffn 768) with the full 151,936-token vocabulary, so
    /// the real tokenizer fits: 40M parameters, 80 MB in two shards.
    Tiny,
    /// The same small shape as a Qwen2 (QKV bias, no QK-norm, head_dim = hidden / heads = 64).
    TinyQwen2,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Qwen3_4B, Preset::Tiny, Preset::TinyQwen2];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Qwen3_4B => "qwen3-4b",
            Preset::Tiny => "tiny",
            Preset::TinyQwen2 => "tiny-qwen2",
        }
    }

    pub fn parse(s: &str) -> Result<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            anyhow!("unknown preset '{s}' (choose one of: {})", names.join(", "))
        })
    }

    /// Shard size limit: Qwen3-4B's published checkpoint has three shards of at most ~4 GB; the tiny ones
    /// are split too so tests exercise the index.
    fn max_shard_bytes(self) -> usize {
        match self {
            Preset::Qwen3_4B => 4_000_000_000,
            Preset::Tiny | Preset::TinyQwen2 => 64 << 20,
        }
    }

    fn config(self, fixtures: &Path) -> Result<Value> {
        let small = |model_type: &str, arch: &str| {
            let mut c = json!({
                "architectures": [arch],
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_act": "silu",
                "hidden_size": 256,
                "initializer_range": 0.02,
                "intermediate_size": 768,
                "max_position_embeddings": 4096,
                "max_window_layers": 2,
                "model_type": model_type,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-06,
                "rope_scaling": null,
                "rope_theta": 1000000.0,
                "sliding_window": null,
                "tie_word_embeddings": true,
                "torch_dtype": "bfloat16",
                "use_cache": true,
                "use_sliding_window": false,
                "vocab_size": 151936
            });
            if model_type == "qwen3" {
                c["head_dim"] = json!(128);
                c["attention_bias"] = json!(false);
            }
            c
        };
        Ok(match self {
            Preset::Qwen3_4B => {
                let path = fixtures.join("qwen3-4b-instruct-2507.config.json");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot read {} (set --fixtures or QUIRE_FIXTURES)", path.display())
                })?;
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?
            }
            Preset::Tiny => small("qwen3", "Qwen3ForCausalLM"),
            Preset::TinyQwen2 => small("qwen2", "Qwen2ForCausalLM"),
        })
    }
}

/// What to make.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub preset: Preset,
    pub out_dir: PathBuf,
    pub seed: u64,
    /// The shared fixtures directory (for the Qwen3 tokenizer and the Qwen3-4B config).
    pub fixtures: PathBuf,
    pub progress: bool,
}

/// What was made.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    pub n_tensors: usize,
    pub n_shards: usize,
    pub bytes: u64,
    pub secs: f64,
}

/// Finds the shared fixtures: `shared/fixtures` or `../shared/fixtures` above the current directory or the
/// executable.
pub fn find_fixtures() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            for cand in [dir.join("shared/fixtures"), dir.join("../shared/fixtures")] {
                if cand.join("qwen3-tokenizer/tokenizer.json").is_file() {
                    return Some(cand);
                }
            }
        }
    }
    None
}

/// Values per generator seed (and per parallel task).
const VALUES_PER_CHUNK: usize = 1 << 20;
/// Chunks generated per batch handed to the writer thread (32 MB of bf16).
const CHUNKS_PER_BATCH: usize = 16;

/// Makes the checkpoint. Fails before writing anything if the output directory is not empty or there is not
/// enough disk space.
pub fn synthesize(opts: &SynthOptions) -> Result<SynthSummary> {
    let t0 = Instant::now();
    let config_json = opts.preset.config(&opts.fixtures)?;
    let config = HfConfig::from_json(config_json.clone()).context("preset config")?;
    let tok_dir = opts.fixtures.join("qwen3-tokenizer");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        ensure!(
            tok_dir.join(f).is_file(),
            "{} not found (set --fixtures or QUIRE_FIXTURES to the shared fixtures directory)",
            tok_dir.join(f).display()
        );
    }

    let dir = &opts.out_dir;
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some();
        ensure!(!non_empty, "{} exists and is not empty; give a new or empty directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let tensors = expected_tensors(&config);
    let total: u64 = tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64 * 2).sum();
    super::check_free_space(dir, total + (16 << 20))?;

    // Shards: tensors in order, a new shard whenever the next tensor would cross the limit.
    let limit = opts.preset.max_shard_bytes();
    let mut shards: Vec<Vec<&Expected>> = vec![Vec::new()];
    let mut size = 0usize;
    for t in &tensors {
        let bytes = t.shape.iter().product::<usize>() * 2;
        if size > 0 && size + bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(t);
        size += bytes;
    }

    write_json(&dir.join("config.json"), &config_json)?;
    write_json(&dir.join("generation_config.json"), &generation_config())?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), dir.join(f)).with_context(|| format!("cannot copy {f}"))?;
        // The fixtures may be read-only; the copy should not be (so the directory can be removed normally).
        let mut perm = std::fs::metadata(dir.join(f))?.permissions();
        std::fs::Permissions::set_readonly(&mut perm, false);
        std::fs::set_permissions(dir.join(f), perm)?;
    }

    let progress =
        if opts.progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed:>4} [{bar:30}] {bytes}/{total_bytes}, {binary_bytes_per_sec} | {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let n_shards = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut tensor_index = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file_name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards);
        progress.set_message(file_name.clone());
        let entries: Vec<(String, SrcDType, Vec<usize>)> =
            shard.iter().map(|t| (t.hf.clone(), SrcDType::BF16, t.shape.clone())).collect();
        let path = dir.join(&file_name);
        write_shard(&path, &entries, opts.seed, &mut tensor_index, &progress)
            .with_context(|| format!("cannot write {}", path.display()))?;
        for t in shard {
            weight_map.insert(t.hf.clone(), Value::String(file_name.clone()));
        }
    }
    progress.finish_and_clear();
    let mut sorted: Vec<(String, Value)> = weight_map.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let index = json!({
        "metadata": { "total_size": total },
        "weight_map": Value::Object(sorted.into_iter().collect()),
    });
    write_json(&dir.join(INDEX_FILE), &index)?;
    Ok(SynthSummary { n_tensors: tensors.len(), n_shards, bytes: total, secs: t0.elapsed().as_secs_f64() })
}

/// Qwen3-4B-Instruct-2507's published `generation_config.json`.
fn generation_config() -> Value {
    json!({
        "bos_token_id": 151643,
        "do_sample": true,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "transformers_version": "4.51.0"
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialisable");
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Writes one shard: header, then each tensor's values generated in parallel batches and streamed to the file
/// by a writer thread.
fn write_shard(
    path: &Path,
    entries: &[(String, SrcDType, Vec<usize>)],
    seed: u64,
    tensor_index: &mut u64,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    let (header, _) = encode_header(entries);
    let mut file = File::create(path)?;
    file.write_all(&header)?;
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(move || -> std::io::Result<File> {
            for buf in full_rx {
                file.write_all(&buf)?;
                let _ = empty_tx.send(buf);
            }
            Ok(file)
        });
        let produced = (|| -> Result<()> {
            for (name, _, shape) in entries {
                let n: usize = shape.iter().product();
                let kind = ValueKind::of(name);
                let stream = tensor_stream_seed(seed, *tensor_index);
                *tensor_index += 1;
                let batch_values = VALUES_PER_CHUNK * CHUNKS_PER_BATCH;
                let mut start = 0usize;
                while start < n {
                    let len = batch_values.min(n - start);
                    let mut buf = empty_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    buf.resize(len * 2, 0);
                    let first_chunk = start / VALUES_PER_CHUNK;
                    buf.par_chunks_mut(VALUES_PER_CHUNK * 2).enumerate().for_each(|(j, out)| {
                        fill_bf16(out, kind, splitmix64(stream ^ (first_chunk + j) as u64));
                    });
                    if full_tx.send(buf).is_err() {
                        return Ok(());
                    }
                    progress.inc(len as u64 * 2);
                    start += len;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let file = writer.join().map_err(|_| anyhow!("the writer thread panicked"))??;
        produced?;
        file.sync_all()?;
        Ok(())
    })
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum ValueKind {
    /// N(0, 0.02): weight matrices and biases.
    Weight,
    /// 1 + N(0, 0.02): RMSNorm weights.
    Norm,
}

impl ValueKind {
    fn of(name: &str) -> ValueKind {
        if name.ends_with("norm.weight") {
            ValueKind::Norm
        } else {
            ValueKind::Weight
        }
    }
}

const STD: f32 = 0.02;

fn fill_bf16(out: &mut [u8], kind: ValueKind, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let offset = match kind {
        ValueKind::Weight => 0.0,
        ValueKind::Norm => 1.0,
    };
    for b in out.chunks_exact_mut(2) {
        let z: f32 = rng.sample(StandardNormal);
        b.copy_from_slice(&half::bf16::from_f32(offset + STD * z).to_le_bytes());
    }
}

/// A per-tensor stream id mixed from the user's seed and the tensor's position.
fn tensor_stream_seed(seed: u64, tensor_index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ tensor_index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// SplitMix64's finaliser: turns structured seeds (0, 1, 2, ...) into well-mixed ones.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
