//! Hugging Face safetensors checkpoints, single-file or sharded, memory-mapped and validated.
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor name to
//! `{dtype, shape, data_offsets}`, then the raw data. Parsing that by hand (rather than with the
//! `safetensors` crate) keeps the error messages ours: every offset is checked against the file length when
//! the checkpoint is opened, so a truncated download is reported by file and tensor name before the output
//! file is even created, and later code can slice the map without panicking.
//!
//! Memory: the files are mapped, never read into buffers. Pages that have been converted are dropped from
//! the process with `MADV_DONTNEED` ([`Checkpoint::release`]), so the resident set stays at the few chunks in
//! flight instead of growing to the size of the checkpoint (file-backed pages count towards RSS while mapped).

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::Mmap;
use serde_json::Value;

/// Element types a checkpoint may store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcDType {
    F32,
    F16,
    BF16,
}

impl SrcDType {
    fn parse(s: &str) -> Option<SrcDType> {
        match s {
            "F32" => Some(SrcDType::F32),
            "F16" => Some(SrcDType::F16),
            "BF16" => Some(SrcDType::BF16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SrcDType::F32 => 4,
            SrcDType::F16 | SrcDType::BF16 => 2,
        }
    }

    /// safetensors' spelling.
    pub fn name(self) -> &'static str {
        match self {
            SrcDType::F32 => "F32",
            SrcDType::F16 => "F16",
            SrcDType::BF16 => "BF16",
        }
    }

    /// Widens little-endian elements to `f32` (exact for all three types).
    pub fn to_f32(self, src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), dst.len() * self.size());
        match self {
            SrcDType::F32 => {
                for (b, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            SrcDType::BF16 => {
                for (b, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
                    *d = f32::from_bits((u32::from(u16::from_le_bytes([b[0], b[1]]))) << 16);
                }
            }
            SrcDType::F16 => {
                for (b, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
                    *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

/// One tensor of the checkpoint, validated against its file.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: SrcDType,
    /// PyTorch order: the last dimension is contiguous (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    /// Index into the checkpoint's files.
    pub file: usize,
    /// Absolute byte range inside that file.
    pub range: Range<usize>,
}

impl SourceTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// All tensors of a checkpoint directory, memory-mapped.
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, SourceTensor>,
}

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The file of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

impl Checkpoint {
    /// Opens `model.safetensors.index.json` and every shard it names, or else `model.safetensors`. Fails with
    /// a message naming the file on a missing shard, a truncated or malformed file, an unsupported dtype, or
    /// a tensor the index promises but its shard lacks.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let mut ckpt = Checkpoint { shards: Vec::new(), tensors: BTreeMap::new() };
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let index: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", index_path.display()))?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| anyhow!("{}: no \"weight_map\" object", index_path.display()))?;
            let mut files: Vec<&str> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    anyhow!("{}: weight_map entry for {tensor} is not a file name", index_path.display())
                })?;
                if !files.contains(&file) {
                    files.push(file);
                }
            }
            files.sort_unstable();
            for file in &files {
                ensure!(
                    !file.contains('/') && !file.contains('\\') && *file != ".." && !file.is_empty(),
                    "{}: shard name {file:?} is not a plain file name",
                    index_path.display()
                );
                let path = dir.join(file);
                if !path.is_file() {
                    bail!(
                        "missing shard {} (listed in {}); download the complete checkpoint",
                        path.display(),
                        index_path.display()
                    );
                }
            }
            for file in &files {
                ckpt.add_shard(&dir.join(file))?;
            }
            for (tensor, file) in map {
                let file = file.as_str().unwrap_or_default();
                let found = ckpt.tensors.get(tensor).map(|t| ckpt.shards[t.file].path.ends_with(file));
                ensure!(
                    found == Some(true),
                    "{} lists tensor {tensor} in {file}, but that shard does not contain it",
                    index_path.display()
                );
            }
        } else if single_path.is_file() {
            ckpt.add_shard(&single_path)?;
        } else {
            let hint = if dir.join("pytorch_model.bin").exists()
                || dir.join("pytorch_model.bin.index.json").exists()
            {
                " (PyTorch .bin checkpoints are not supported: convert them to safetensors first)"
            } else {
                ""
            };
            bail!("{}: no {SINGLE_FILE} or {INDEX_FILE} found{hint}", dir.display());
        }
        Ok(ckpt)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
        // SAFETY: the map is read-only and we never hand out mutable views. If another process truncates the
        // file while we convert, reads could fault; that is the contract of every mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        let index = self.shards.len();
        let tensors = parse_header(path, &map, file_len, index)?;
        for t in tensors {
            if let Some(prev) = self.tensors.get(&t.name) {
                bail!(
                    "tensor {} appears in both {} and {}",
                    t.name,
                    self.shards[prev.file].path.display(),
                    path.display()
                );
            }
            self.tensors.insert(t.name.clone(), t);
        }
        self.shards.push(Shard { path: path.to_path_buf(), map });
        Ok(())
    }

    /// The tensor named `name`, if the checkpoint has it.
    pub fn get(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.get(name)
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> impl Iterator<Item = &SourceTensor> {
        self.tensors.values()
    }

    /// The files of the checkpoint.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// The file holding `t`.
    pub fn file_of(&self, t: &SourceTensor) -> &Path {
        &self.shards[t.file].path
    }

    /// Bytes `range` (relative to the start of the tensor's data) of a tensor; zero-copy.
    pub fn bytes(&self, t: &SourceTensor, range: Range<usize>) -> &[u8] {
        let start = t.range.start + range.start;
        let end = t.range.start + range.end;
        assert!(end <= t.range.end, "byte range beyond tensor {}", t.name);
        &self.shards[t.file].map[start..end]
    }

    /// Drops the pages of `range` (relative to the tensor's data) from the process's resident set; the data
    /// stays in the page cache and a later read maps it back in.
    pub fn release(&self, t: &SourceTensor, range: Range<usize>) {
        let map = &self.shards[t.file].map;
        // Only whole pages inside the range: a neighbouring tensor may still be in use by another worker, and
        // although dropping its pages would be harmless (they fault back in), there is no reason to.
        const PAGE: usize = 4096;
        let start = (t.range.start + range.start).div_ceil(PAGE) * PAGE;
        let end = (t.range.start + range.end) / PAGE * PAGE;
        if end > start {
            // SAFETY: the map is a read-only shared mapping of a file we never write; MADV_DONTNEED only drops
            // the page-table entries, and any later access re-reads the same bytes from the file, so no
            // reference into the map can observe a change.
            let _ =
                unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

/// Parses and validates one file's header.
fn parse_header(path: &Path, map: &[u8], file_len: u64, file_index: usize) -> Result<Vec<SourceTensor>> {
    let truncated = |what: String| anyhow!("{}: truncated safetensors file: {what}", path.display());
    if map.len() < 8 {
        return Err(truncated(format!("{} bytes, too short for the 8-byte header length", map.len())));
    }
    let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    let data_start = header_len.checked_add(8).filter(|&e| e <= file_len).ok_or_else(|| {
        truncated(format!("the header claims {header_len} bytes but the file has {file_len}"))
    })? as usize;
    let header: Value = serde_json::from_slice(&map[8..data_start])
        .with_context(|| format!("{}: malformed safetensors header (not JSON)", path.display()))?;
    let entries = header
        .as_object()
        .ok_or_else(|| anyhow!("{}: malformed safetensors header (not an object)", path.display()))?;
    let data_len = map.len() - data_start;
    let mut out = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| anyhow!("{}: tensor {name}: {what}", path.display());
        let dtype_str = info.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no dtype"))?;
        let dtype = SrcDType::parse(dtype_str).ok_or_else(|| {
            bad(&format!("unsupported dtype {dtype_str} (quire convert reads BF16, F16 and F32 checkpoints)"))
        })?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets: Vec<usize> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>())
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let n_bytes = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("size overflows"))?;
        ensure!(
            end >= begin && end - begin == n_bytes,
            "{}: tensor {name}: data_offsets [{begin}, {end}] hold {} bytes but {dtype_str} {shape:?} needs {n_bytes}",
            path.display(),
            end.saturating_sub(begin)
        );
        if end > data_len {
            return Err(truncated(format!(
                "tensor {name} needs bytes {begin}..{end} of the data section, which has only {data_len} bytes"
            )));
        }
        out.push(SourceTensor {
            name: name.clone(),
            dtype,
            shape,
            file: file_index,
            range: data_start + begin..data_start + end,
        });
    }
    Ok(out)
}

/// Writes a safetensors header for `tensors` (name, dtype, shape) laid out back to back in the given order:
/// the JSON padded with spaces to a multiple of 8 bytes, as the reference implementation does. Returns the
/// header bytes (length prefix included) and each tensor's data size.
pub fn encode_header(tensors: &[(String, SrcDType, Vec<usize>)]) -> (Vec<u8>, Vec<usize>) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for (name, dtype, shape) in tensors {
        let n = shape.iter().product::<usize>() * dtype.size();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + n] }),
        );
        offset += n;
        sizes.push(n);
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).expect("serialisable");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    (out, sizes)
}
