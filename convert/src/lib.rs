//! Hugging Face checkpoint → GGUF in one step: `quire convert HF_DIR -o OUT.gguf --type q4_k_m`.
//!
//! The output is the file llama.cpp's two-step path (`convert_hf_to_gguf.py`, then `llama-quantize`) makes:
//! the same tensor names, types and shapes, the same metadata keys and values (apart from descriptive
//! `general.*` keys), and — because the kernels' quantizers are llama.cpp's reference quantizers — the same
//! quantized bytes. It differs in how it gets there:
//! - one pass, no F16 intermediate file: each tensor is read from the memory-mapped safetensors, widened to
//!   `f32` row by row and quantized straight into the output;
//! - bounded memory: tensors are processed in chunks of rows (a few MB), converted pages of the input are
//!   dropped from the resident set as soon as they are used, and a writer thread streams finished chunks to
//!   disk while the next ones are quantized, so peak RSS stays far below the model size;
//! - everything is checked before the output is created (config, every shard, every tensor's presence,
//!   dtype and shape, the tokenizer, free disk space), the file is written under a temporary name, synced,
//!   and renamed into place only when complete, so a failure never leaves a half-written model behind.
//!
//! Modules: [`hf_config`] (config.json), [`safetensors`] (the checkpoint), [`tokenizer_meta`] (tokenizer
//! metadata), [`quant_plan`] (which type each tensor gets), [`gguf_writer`] (the output format), and
//! [`synth`] (random-weight checkpoints of real shapes, for benchmarks and tests).

pub mod gguf_writer;
pub mod hf_config;
pub mod quant_plan;
pub mod safetensors;
pub mod synth;
pub mod tokenizer_meta;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use quire_kernels::{quantize_row, DType};
use rayon::prelude::*;
use serde_json::Value;

use gguf_writer::{GgufBuilder, GgufStreamWriter, MetaValue};
use hf_config::{HfArch, HfConfig};
pub use quant_plan::OutType;
use quant_plan::Role;
use safetensors::{Checkpoint, SourceTensor, SrcDType};

/// What to convert, and how.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The Hugging Face model directory (`config.json`, `tokenizer.json`, safetensors).
    pub input: PathBuf,
    /// The GGUF file to create (replaced atomically if it exists).
    pub output: PathBuf,
    pub out_type: OutType,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// `general.name`; default: from the directory name (`qwen3-4b` → "Qwen3 4b").
    pub name: Option<String>,
}

/// What a finished conversion did.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub output: PathBuf,
    pub n_tensors: usize,
    /// Bytes of tensor data read from the checkpoint.
    pub bytes_in: u64,
    /// Size of the GGUF file.
    pub bytes_out: u64,
    pub secs: f64,
}

/// One tensor of the output: where its data comes from and what it becomes.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub source: SourceTensor,
    pub gguf_name: String,
    /// GGUF dimensions, ne0 (the row length) first.
    pub gguf_shape: Vec<u64>,
    pub dtype: DType,
}

impl PlannedTensor {
    fn ncols(&self) -> usize {
        self.gguf_shape[0] as usize
    }
    fn n_rows(&self) -> usize {
        self.gguf_shape[1..].iter().product::<u64>() as usize
    }
}

/// Converts a checkpoint. See the module docs for what is checked and guaranteed.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    let t0 = Instant::now();
    let dir = &opts.input;
    ensure!(dir.is_dir(), "{} is not a directory (expected a Hugging Face model directory)", dir.display());
    let config = HfConfig::load(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    let plan = plan_tensors(&config, &ckpt, opts.out_type)?;

    let mut builder = GgufBuilder::new();
    let name = opts.name.clone().unwrap_or_else(|| default_name(dir));
    add_general_and_hparams(&mut builder, dir, &config, &plan, &name, opts.out_type);
    for (key, value) in tokenizer_meta::tokenizer_metadata(dir, &config)? {
        builder.add(key, value);
    }
    for t in &plan {
        builder.add_tensor(&t.gguf_name, &t.gguf_shape, t.dtype)?;
    }
    let layout = builder.finish();
    let file_len = layout.file_len();

    let output = &opts.output;
    let out_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure!(out_dir.is_dir(), "output directory {} does not exist", out_dir.display());
    check_free_space(&out_dir, file_len)?;

    let file_name = output.file_name().ok_or_else(|| anyhow!("{} is not a file name", output.display()))?;
    let temp_name = format!(".{}.{}.partial", file_name.to_string_lossy(), std::process::id());
    let temp = TempFile::new(out_dir.join(temp_name));
    let file = File::create(&temp.path).with_context(|| format!("cannot create {}", temp.path.display()))?;
    reserve_space(&file, file_len, &temp.path)?;

    let bytes_in: u64 = plan.iter().map(|t| t.source.range.len() as u64).sum();
    let progress = progress_bar(opts.progress, bytes_in, plan.len());
    let writer = GgufStreamWriter::new(file, layout)
        .with_context(|| format!("cannot write {}", temp.path.display()))?;
    let file = write_tensors(&ckpt, &plan, writer, &progress)
        .with_context(|| format!("cannot write {}", temp.path.display()))?;
    progress.finish_and_clear();
    file.sync_all().with_context(|| format!("cannot flush {} to disk", temp.path.display()))?;
    drop(file);
    std::fs::rename(&temp.path, output)
        .with_context(|| format!("cannot rename {} to {}", temp.path.display(), output.display()))?;
    temp.keep();

    Ok(ConvertSummary {
        output: output.clone(),
        n_tensors: plan.len(),
        bytes_in,
        bytes_out: file_len,
        secs: t0.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// The tensor plan: names, expected shapes, types
// ---------------------------------------------------------------------------------------------------------

/// One tensor a model of this config must have: HF name, GGUF name, PyTorch shape, role, layer.
pub(crate) struct Expected {
    pub(crate) hf: String,
    pub(crate) gguf: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) role: Role,
    pub(crate) layer: Option<usize>,
}

/// The tensors of a Qwen3/Qwen2 model in output order: `token_embd`, the blocks in layer order (inside a
/// block, the alphabetical order of the HF names, which is the order `convert_hf_to_gguf.py` writes them
/// in), `output_norm`, then `output` when the head is not tied.
pub(crate) fn expected_tensors(c: &HfConfig) -> Vec<Expected> {
    let e = |hf: &str, gguf: &str, shape: Vec<usize>, role, layer| Expected {
        hf: hf.to_owned(),
        gguf: gguf.to_owned(),
        shape,
        role,
        layer,
    };
    let (h, q, kv, ff, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate, c.head_dim);
    let mut out = vec![e(
        "model.embed_tokens.weight",
        "token_embd.weight",
        vec![c.vocab_size, h],
        Role::TokenEmbd,
        None,
    )];
    for l in 0..c.n_layers {
        let mut block = vec![
            ("input_layernorm.weight", "attn_norm.weight", vec![h], Role::Vector),
            ("mlp.down_proj.weight", "ffn_down.weight", vec![h, ff], Role::FfnDown),
            ("mlp.gate_proj.weight", "ffn_gate.weight", vec![ff, h], Role::FfnGate),
            ("mlp.up_proj.weight", "ffn_up.weight", vec![ff, h], Role::FfnUp),
            ("post_attention_layernorm.weight", "ffn_norm.weight", vec![h], Role::Vector),
            ("self_attn.k_proj.weight", "attn_k.weight", vec![kv, h], Role::AttnK),
            ("self_attn.o_proj.weight", "attn_output.weight", vec![h, q], Role::AttnOutput),
            ("self_attn.q_proj.weight", "attn_q.weight", vec![q, h], Role::AttnQ),
            ("self_attn.v_proj.weight", "attn_v.weight", vec![kv, h], Role::AttnV),
        ];
        match c.arch {
            HfArch::Qwen3 => {
                block.push(("self_attn.q_norm.weight", "attn_q_norm.weight", vec![hd], Role::Vector));
                block.push(("self_attn.k_norm.weight", "attn_k_norm.weight", vec![hd], Role::Vector));
            }
            HfArch::Qwen2 => {
                block.push(("self_attn.q_proj.bias", "attn_q.bias", vec![q], Role::Vector));
                block.push(("self_attn.k_proj.bias", "attn_k.bias", vec![kv], Role::Vector));
                block.push(("self_attn.v_proj.bias", "attn_v.bias", vec![kv], Role::Vector));
            }
        }
        block.sort_by(|a, b| a.0.cmp(b.0));
        for (hf, gguf, shape, role) in block {
            out.push(e(&format!("model.layers.{l}.{hf}"), &format!("blk.{l}.{gguf}"), shape, role, Some(l)));
        }
    }
    out.push(e("model.norm.weight", "output_norm.weight", vec![h], Role::Vector, None));
    if !c.tie_word_embeddings {
        out.push(e("lm_head.weight", "output.weight", vec![c.vocab_size, h], Role::Output, None));
    }
    out
}

/// Matches the checkpoint against what the config implies and picks each tensor's type. Fails on a missing
/// tensor, a wrong shape, or a tensor the model does not have (a sign of a different architecture).
pub fn plan_tensors(config: &HfConfig, ckpt: &Checkpoint, out: OutType) -> Result<Vec<PlannedTensor>> {
    let expected = expected_tensors(config);
    let mut plan = Vec::with_capacity(expected.len());
    for e in &expected {
        let src = ckpt.get(&e.hf).ok_or_else(|| {
            anyhow!(
                "the checkpoint has no tensor {} (a {} model with this config.json needs it){}",
                e.hf,
                config.arch.name(),
                if e.hf == "lm_head.weight" {
                    "; is tie_word_embeddings missing from config.json?"
                } else {
                    ""
                }
            )
        })?;
        if src.shape != e.shape {
            bail!(
                "tensor {} in {} has shape {:?}, but config.json implies {:?}",
                e.hf,
                ckpt.file_of(src).display(),
                src.shape,
                e.shape
            );
        }
        // PyTorch [out, in] is GGUF [in, out]: ne0 is the contiguous dimension. Same bytes either way.
        let gguf_shape: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        let ncols = gguf_shape[0] as usize;
        let n_gqa = config.n_heads / config.n_kv_heads.max(1);
        let dtype = quant_plan::tensor_type(
            out,
            e.role,
            e.layer,
            config.n_layers,
            n_gqa,
            ncols,
            config.tie_word_embeddings,
        )
        .with_context(|| format!("tensor {}", e.gguf))?;
        plan.push(PlannedTensor { source: src.clone(), gguf_name: e.gguf.clone(), gguf_shape, dtype });
    }
    for t in ckpt.tensors() {
        let known = expected.iter().any(|e| e.hf == t.name);
        // Tied checkpoints sometimes still carry lm_head (a copy of the embedding); RoPE caches are derived.
        let ignorable = (t.name == "lm_head.weight" && config.tie_word_embeddings)
            || t.name.ends_with("rotary_emb.inv_freq");
        if !known && !ignorable {
            bail!(
                "the checkpoint has a tensor {} ({}) that a {} model with this config.json does not have",
                t.name,
                ckpt.file_of(t).display(),
                config.arch.name()
            );
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------------------

/// `general.*` and the architecture's hyperparameters, in `convert_hf_to_gguf.py`'s order.
fn add_general_and_hparams(
    b: &mut GgufBuilder,
    dir: &Path,
    c: &HfConfig,
    plan: &[PlannedTensor],
    name: &str,
    out: OutType,
) {
    let arch = c.arch.name();
    b.add("general.architecture", MetaValue::Str(arch.into()));
    b.add("general.type", MetaValue::Str("model".into()));
    for (key, value) in sampling_metadata(dir) {
        b.add(key, value);
    }
    b.add("general.name", MetaValue::Str(name.into()));
    let n_params: u64 = plan.iter().map(|t| t.gguf_shape.iter().product::<u64>()).sum();
    b.add("general.size_label", MetaValue::Str(size_label(n_params)));
    let u32_of = |v: usize| MetaValue::U32(v as u32);
    b.add(format!("{arch}.block_count"), u32_of(c.n_layers));
    b.add(format!("{arch}.context_length"), u32_of(c.max_position_embeddings));
    b.add(format!("{arch}.embedding_length"), u32_of(c.hidden));
    b.add(format!("{arch}.feed_forward_length"), u32_of(c.intermediate));
    b.add(format!("{arch}.attention.head_count"), u32_of(c.n_heads));
    b.add(format!("{arch}.attention.head_count_kv"), u32_of(c.n_kv_heads));
    b.add(format!("{arch}.rope.freq_base"), MetaValue::F32(c.rope_theta as f32));
    b.add(format!("{arch}.attention.layer_norm_rms_epsilon"), MetaValue::F32(c.rms_norm_eps as f32));
    if c.head_dim_explicit {
        b.add(format!("{arch}.attention.key_length"), u32_of(c.head_dim));
        b.add(format!("{arch}.attention.value_length"), u32_of(c.head_dim));
    }
    if let Some(rs) = &c.rope_scaling {
        b.add(format!("{arch}.rope.scaling.type"), MetaValue::Str(rs.kind.clone()));
        b.add(format!("{arch}.rope.scaling.factor"), MetaValue::F32(rs.factor as f32));
        if let Some(orig) = rs.original_context {
            b.add(format!("{arch}.rope.scaling.original_context_length"), MetaValue::U32(orig as u32));
        }
    }
    b.add("general.file_type", MetaValue::U32(out.file_type()));
    b.add("general.quantization_version", MetaValue::U32(2));
}

/// `general.sampling.*` from `generation_config.json`, for the keys llama.cpp's converter maps (it ignores
/// `do_sample` and `repetition_penalty`). An absent or invalid file gives none, as in llama.cpp.
fn sampling_metadata(dir: &Path) -> Vec<(String, MetaValue)> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return Vec::new();
    };
    let Ok(gen) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    enum Kind {
        Str,
        Int,
        Float,
    }
    let keys = [
        ("sequence", "sequence", Kind::Str),
        ("top_k", "top_k", Kind::Int),
        ("top_p", "top_p", Kind::Float),
        ("min_p", "min_p", Kind::Float),
        ("xtc_probability", "xtc_probability", Kind::Float),
        ("xtc_threshold", "xtc_threshold", Kind::Float),
        ("temperature", "temp", Kind::Float),
        ("penalty_last_n", "penalty_last_n", Kind::Int),
        ("penalty_repeat", "penalty_repeat", Kind::Float),
        ("mirostat", "mirostat", Kind::Int),
        ("mirostat_tau", "mirostat_tau", Kind::Float),
        ("mirostat_eta", "mirostat_eta", Kind::Float),
    ];
    let mut out = Vec::new();
    for (json_key, gguf_key, kind) in keys {
        let Some(v) = gen.get(json_key) else { continue };
        let value = match kind {
            Kind::Str => v.as_str().map(|s| MetaValue::Str(s.to_owned())),
            Kind::Int => v.as_i64().map(|i| MetaValue::I32(i as i32)),
            Kind::Float => v.as_f64().map(|f| MetaValue::F32(f as f32)),
        };
        if let Some(value) = value {
            out.push((format!("general.sampling.{gguf_key}"), value));
        }
    }
    out
}

/// llama.cpp's `model_weight_count_rounded_notation`: "2.1M", "4.0B", at least two significant digits.
pub fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let decimals = 2usize.saturating_sub(int_digits);
    format!("{scaled:.decimals$}{suffix}")
}

/// A title from the directory name, as llama.cpp's heuristics make one: `tiny-qwen3` → "Tiny Qwen3",
/// `Qwen3-4B-Instruct-2507` → "Qwen3 4B Instruct 2507".
fn default_name(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    base.replace(['-', '_'], " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().all(|c| !c.is_uppercase());
            let starts_digit = w.chars().next().is_some_and(|c| c.is_ascii_digit());
            if lower && !starts_digit {
                let mut prev_alpha = false;
                w.chars()
                    .map(|c| {
                        let out = if prev_alpha { c } else { c.to_ascii_uppercase() };
                        prev_alpha = c.is_alphabetic();
                        out
                    })
                    .collect()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------------------
// Streaming the tensor data
// ---------------------------------------------------------------------------------------------------------

/// Output bytes per chunk handed to the writer thread (and input bytes at most 4× that).
const CHUNK_OUT_BYTES: usize = 8 << 20;
const CHUNK_IN_BYTES: usize = 32 << 20;
/// Chunks queued for the writer: compute runs ahead of the disk by at most this many.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Quantizes every tensor in plan order and streams the bytes through `writer` on a separate thread.
/// Returns the file once every byte has been written.
fn write_tensors(
    ckpt: &Checkpoint,
    plan: &[PlannedTensor],
    writer: GgufStreamWriter<File>,
    progress: &indicatif::ProgressBar,
) -> Result<File> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let writer_thread = s.spawn(move || -> Result<File> {
            let mut writer = writer;
            for buf in full_rx {
                writer.write(&buf)?;
                let _ = empty_tx.send(buf); // recycle; the producer may already be gone
            }
            writer.finish()
        });

        let produced = (|| -> Result<()> {
            for (i, t) in plan.iter().enumerate() {
                progress.set_message(format!("{}/{} tensors: {}", i + 1, plan.len(), t.gguf_name));
                let (ncols, n_rows) = (t.ncols(), t.n_rows());
                let src = &t.source;
                let in_row = ncols * src.dtype.size();
                let out_row = t.dtype.row_bytes(ncols).expect("planned types divide the row");
                let rows_per_chunk = (CHUNK_OUT_BYTES / out_row).min(CHUNK_IN_BYTES / in_row).max(1);
                let mut row = 0;
                while row < n_rows {
                    let rows = rows_per_chunk.min(n_rows - row);
                    let in_range = row * in_row..(row + rows) * in_row;
                    let mut buf = empty_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    buf.resize(rows * out_row, 0);
                    convert_rows(src.dtype, ckpt.bytes(src, in_range.clone()), ncols, t.dtype, &mut buf);
                    ckpt.release(src, in_range.clone());
                    if full_tx.send(buf).is_err() {
                        return Ok(()); // the writer failed; its error is reported below
                    }
                    progress.inc(in_range.len() as u64);
                    row += rows;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let written = writer_thread.join().map_err(|_| anyhow!("the writer thread panicked"))?;
        produced?;
        written
    })
}

/// Converts `src` (rows of `ncols` values of `src_dtype`) into `dst` (the same rows in `dtype`), rows in
/// parallel. A float-to-same-float conversion is a copy.
pub fn convert_rows(src_dtype: SrcDType, src: &[u8], ncols: usize, dtype: DType, dst: &mut [u8]) {
    let same = matches!(
        (src_dtype, dtype),
        (SrcDType::F32, DType::F32) | (SrcDType::F16, DType::F16) | (SrcDType::BF16, DType::BF16)
    );
    if same {
        dst.copy_from_slice(src);
        return;
    }
    let in_row = ncols * src_dtype.size();
    let out_row = dst.len() / (src.len() / in_row);
    // Each task gets at least ~64K values so scheduling stays negligible next to the quantizer.
    let min_rows = (65536 / ncols).max(1);
    dst.par_chunks_mut(out_row).zip(src.par_chunks(in_row)).with_min_len(min_rows).for_each_init(
        || vec![0f32; ncols],
        |row, (d, s)| {
            src_dtype.to_f32(s, row);
            quantize_row(dtype, row, d);
        },
    );
}

// ---------------------------------------------------------------------------------------------------------
// Files: free space, reservation, the temporary output
// ---------------------------------------------------------------------------------------------------------

/// The output file under its temporary name; removed on drop unless [`TempFile::keep`] was called.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile { path, keep: false }
    }
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Fails early, with both figures, when the file system cannot hold the output.
pub(crate) fn check_free_space(dir: &Path, needed: u64) -> Result<()> {
    if let Some(available) = free_space(dir) {
        if available < needed {
            bail!(
                "not enough disk space in {}: the output needs {}, only {} is available",
                dir.display(),
                quire_engine::memory::human_bytes(needed as usize),
                quire_engine::memory::human_bytes(available as usize)
            );
        }
    }
    Ok(())
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we pass, and reads the NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Reserves the whole file up front so running out of space shows at once, not after minutes of work. File
/// systems that cannot reserve are simply written to.
fn reserve_space(file: &File, len: u64, path: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`; posix_fallocate does not touch memory.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => bail!(
            "not enough disk space for {} ({} needed)",
            path.display(),
            quire_engine::memory::human_bytes(len as usize)
        ),
        _ => Ok(()),
    }
}

fn progress_bar(show: bool, total_bytes: u64, n_tensors: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed:>4} [{bar:30}] {bytes}/{total_bytes} read, {binary_bytes_per_sec}, eta {eta} | {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(format!("0/{n_tensors} tensors"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_like_llamacpp() {
        assert_eq!(size_label(2_115_328), "2.1M");
        assert_eq!(size_label(4_022_468_096), "4.0B");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(14_770_000_000), "15B");
    }

    #[test]
    fn names_from_directories() {
        let tmp = std::env::temp_dir().join(format!("quire-name-{}", std::process::id()));
        for (dir, want) in
            [("tiny-qwen3", "Tiny Qwen3"), ("Qwen3-4B-Instruct-2507", "Qwen3 4B Instruct 2507")]
        {
            let p = tmp.join(dir);
            std::fs::create_dir_all(&p).unwrap();
            assert_eq!(default_name(&p), want);
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
