//! GGUF files: the header parsed by [`header`] from the mapped bytes, tensor data memory-mapped with memmap2.
//!
//! Tensors are zero-copy views into the map. Every count, length, offset, size, alignment and dimension is
//! checked against the file length when the file is opened, so later code can slice the map without
//! panicking, and a hostile file cannot make the loader allocate more than the file backs.

mod header;

pub use header::{RawTensor, MAX_ARRAY_LEN};

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use quire_kernels::DType;
use serde_json::Value;

/// Everything that can be wrong with a GGUF file, each naming the problem for the user.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot open")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: empty file (0 bytes), not a GGUF model")]
    Empty { path: PathBuf },
    #[error("{path}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: truncated or malformed GGUF header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error(
        "{path}: tensor '{tensor}' has unknown or unsupported type id {type_id} (supported: {supported})"
    )]
    UnknownTensorType { path: PathBuf, tensor: String, type_id: u32, supported: String },
    #[error("{path}: tensor '{tensor}' has an invalid shape {shape:?}: {reason}")]
    BadShape { path: PathBuf, tensor: String, shape: Vec<u64>, reason: String },
    #[error("{path}: file is truncated: tensor '{tensor}' needs bytes {start}..{end} but the file has {file_len} bytes")]
    Truncated { path: PathBuf, tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("{path}: tensor '{tensor}' data offset {offset} is not aligned to {alignment} bytes")]
    Misaligned { path: PathBuf, tensor: String, offset: u64, alignment: u64 },
}

/// The tensor types a model file may use, by name: every format the kernels have except Q8_K, which is
/// only an activation format.
fn supported_types() -> String {
    let names: Vec<&str> =
        quire_kernels::formats::ALL.iter().filter(|d| **d != DType::Q8_K).map(|d| d.name()).collect();
    names.join(", ")
}

/// One tensor's description, already validated against the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Dimensions with ne0 (the contiguous, input dimension) first, as GGUF stores them.
    pub shape: Vec<usize>,
    /// Absolute byte range of the data inside the file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of tensor data.
    pub fn n_bytes(&self) -> usize {
        self.range.len()
    }
}

/// An open, validated, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    version: u32,
}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

impl GgufFile {
    /// Open, parse and validate a GGUF file. Nothing is read from the tensor data (the map is lazy).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len == 0 {
            return Err(GgufError::Empty { path });
        }
        // SAFETY: the file is opened read-only and we never hand out mutable views. If another process
        // truncates the file while it is mapped, reads could fault; that is the documented contract of
        // every mmap-based model loader (llama.cpp included) and the user is told not to modify model files
        // in use.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if map.len() < 8 || &map[..4] != GGUF_MAGIC {
            return Err(GgufError::NotGguf { path, magic: map[..map.len().min(4)].to_vec() });
        }
        let version = u32::from_le_bytes(map[4..8].try_into().expect("4 bytes"));
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { path, version });
        }

        let header =
            header::parse(&map).map_err(|reason| GgufError::Header { path: path.clone(), reason })?;
        let (data_offset, alignment) = (header.data_offset, header.alignment);
        let mut tensors = Vec::with_capacity(header.tensors.len());
        let mut by_name = HashMap::new();
        for t in &header.tensors {
            let info = validate_tensor(&path, t, data_offset, alignment, file_len)?;
            if by_name.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Header {
                    path,
                    reason: format!("tensor '{}' appears twice", info.name),
                });
            }
            tensors.push(info);
        }
        // no two tensors share bytes: a weight written through one view would otherwise change another
        let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
        by_start.sort_by_key(|t| t.range.start);
        if let Some(w) = by_start.windows(2).find(|w| w[0].range.end > w[1].range.start) {
            return Err(GgufError::Header {
                path,
                reason: format!(
                    "tensors '{}' (bytes {:?}) and '{}' (bytes {:?}) overlap",
                    w[0].name, w[0].range, w[1].name, w[1].range
                ),
            });
        }
        let metadata = header.metadata;
        Ok(GgufFile { path, map, metadata, tensors, by_name, version })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.map.len()
    }
    /// All metadata key/value pairs (arrays complete, never truncated).
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }
    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// A tensor's description, if the file has it.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
    /// The bytes of a validated tensor range (zero-copy view into the map).
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.map[range]
    }
    /// Tell the kernel we are about to read the whole file (prefetch from disk into page cache).
    pub fn advise_willneed(&self) {
        let _ = self.map.advise(memmap2::Advice::WillNeed);
    }

    /// Drop this process's mapping of the whole pages inside `range` (a tensor copied elsewhere, e.g.
    /// prepacked), so they stop counting in its resident memory. The file's pages stay in the page cache
    /// for other readers, and the kernel may reclaim them. Reading the range again later is still
    /// correct (the pages fault back in from the file), only slower. Best effort: errors are ignored.
    pub fn release_pages(&self, range: Range<usize>) {
        let page = page_size();
        let start = range.start.next_multiple_of(page);
        let end = range.end.min(self.map.len()) / page * page;
        if start >= end {
            return;
        }
        // SAFETY: the map is a read-only shared mapping of a file (`Mmap::map`). MADV_DONTNEED on such a
        // mapping only drops the page-table entries: the next access faults the same bytes back in from the
        // file, so every `&[u8]` view stays valid and keeps its contents (the UB memmap2 warns about concerns
        // private and anonymous mappings, whose contents MADV_DONTNEED discards). `start` is page-aligned
        // relative to the map (which is page-aligned), so memmap2 releases no byte outside `range`.
        let _ = unsafe {
            self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }

    /// Metadata string, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
    /// Metadata unsigned integer, if present and a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(Value::as_u64)
    }
    /// Metadata float, if present and numeric.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(Value::as_f64)
    }
    /// Metadata boolean, if present and a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata.get(key).and_then(Value::as_bool)
    }
    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

/// What kind of JSON value `v` is, for error messages ("a string", "an array", ...): GGUF metadata comes
/// back from gguf-rs as JSON values, and so do request bodies.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The OS page size (4 KiB on most x86 Linux systems; ask rather than assume).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: `sysconf` only reads a system constant; `_SC_PAGESIZE` is a valid name.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n.is_power_of_two()).unwrap_or(4096)
    })
}

/// Check one tensor against the file: known type, sane shape whose rows are whole blocks, aligned offset,
/// and data entirely inside the file (all with overflow-checked arithmetic).
fn validate_tensor(
    path: &Path,
    t: &RawTensor,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<TensorInfo, GgufError> {
    let bad_shape = |reason: &str| GgufError::BadShape {
        path: path.into(),
        tensor: t.name.clone(),
        shape: t.shape.clone(),
        reason: reason.into(),
    };
    let dtype = DType::from_ggml(t.kind).ok_or_else(|| GgufError::UnknownTensorType {
        path: path.into(),
        tensor: t.name.clone(),
        type_id: t.kind,
        supported: supported_types(),
    })?;
    if t.shape.is_empty() || t.shape.len() > 4 {
        return Err(bad_shape("expected 1 to 4 dimensions"));
    }
    if t.shape.contains(&0) {
        return Err(bad_shape("a dimension is zero"));
    }
    let ne0 = t.shape[0];
    if !ne0.is_multiple_of(dtype.block_len() as u64) {
        return Err(bad_shape(&format!(
            "the row length {ne0} is not a multiple of the {} block length {}",
            dtype.name(),
            dtype.block_len()
        )));
    }
    let n_rows = t.shape[1..].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let n_bytes = n_rows
        .and_then(|rows| rows.checked_mul(ne0 / dtype.block_len() as u64))
        .and_then(|blocks| blocks.checked_mul(dtype.block_bytes() as u64))
        .ok_or_else(|| bad_shape("size overflows"))?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned {
            path: path.into(),
            tensor: t.name.clone(),
            offset: t.offset,
            alignment,
        });
    }
    let truncated =
        |start, end| GgufError::Truncated { path: path.into(), tensor: t.name.clone(), start, end, file_len };
    let start = data_offset.checked_add(t.offset).ok_or_else(|| truncated(u64::MAX, u64::MAX))?;
    let end = start.checked_add(n_bytes).ok_or_else(|| truncated(start, u64::MAX))?;
    if end > file_len {
        return Err(truncated(start, end));
    }
    let shape = t.shape.iter().map(|&d| d as usize).collect();
    Ok(TensorInfo { name: t.name.clone(), dtype, shape, range: start as usize..end as usize })
}
