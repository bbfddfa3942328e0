//! A small GGUF v3 writer that streams tensor data: the header (metadata in insertion order, tensor infos with
//! precomputed offsets) is serialised once, then each tensor's bytes are appended in order, padded to the
//! 32-byte alignment that readers assume when a file has no `general.alignment` key.
//!
//! Why not gguf-rs's `GGUFWriter`: its `write()` reserves the data section by writing zeros one byte at a time
//! before any tensor arrives, so every byte of a 2.3 GB model is written twice (the zero pass alone costs
//! seconds), and tensors are then written by seeking back; it keeps metadata in a `BTreeMap`, so keys come
//! out alphabetically rather than in llama.cpp's order (`general.architecture` first); and it types an empty
//! array's elements as `u8`. Everything the converter needs is a sequential file and bounded memory, which
//! this module gives in ~200 lines.

use std::io::Write;

use anyhow::{bail, ensure, Result};
use quire_kernels::DType;

/// Tensor data alignment in bytes (GGUF's default; we never write `general.alignment`).
pub const ALIGNMENT: u64 = 32;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const GGUF_VERSION: u32 = 3;

/// A metadata value, with the GGUF type it is written as.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    F32Array(Vec<f32>),
}

/// GGUF value type ids.
mod type_id {
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const F64: u32 = 12;
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U32(_) => type_id::U32,
            MetaValue::I32(_) => type_id::I32,
            MetaValue::U64(_) => type_id::U64,
            MetaValue::F32(_) => type_id::F32,
            MetaValue::F64(_) => type_id::F64,
            MetaValue::Bool(_) => type_id::BOOL,
            MetaValue::Str(_) => type_id::STRING,
            MetaValue::StrArray(_) | MetaValue::I32Array(_) | MetaValue::F32Array(_) => type_id::ARRAY,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.type_id().to_le_bytes());
        match self {
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::Str(s) => put_str(out, s),
            MetaValue::StrArray(items) => {
                put_array_header(out, type_id::STRING, items.len());
                for s in items {
                    put_str(out, s);
                }
            }
            MetaValue::I32Array(items) => {
                put_array_header(out, type_id::I32, items.len());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            MetaValue::F32Array(items) => {
                put_array_header(out, type_id::F32, items.len());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array_header(out: &mut Vec<u8>, elem_type: u32, len: usize) {
    out.extend_from_slice(&elem_type.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

/// Bytes of padding that bring `n` up to a multiple of [`ALIGNMENT`].
pub fn padding(n: u64) -> u64 {
    (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    /// Dimensions, ne0 (the contiguous, input dimension) first, as GGUF stores them.
    pub shape: Vec<u64>,
    pub dtype: DType,
    /// Offset of the tensor's data from the start of the data section (a multiple of [`ALIGNMENT`]).
    pub offset: u64,
    /// Bytes of tensor data (without padding).
    pub n_bytes: u64,
}

/// Metadata and tensor descriptions collected before anything is written.
#[derive(Default)]
pub struct GgufBuilder {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorEntry>,
    data_len: u64,
}

impl GgufBuilder {
    pub fn new() -> GgufBuilder {
        GgufBuilder::default()
    }

    /// Appends a key; keys keep the order they were added in. A duplicate key is a bug in the caller.
    pub fn add(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        assert!(!self.metadata.iter().any(|(k, _)| *k == key), "metadata key {key} added twice");
        self.metadata.push((key, value));
    }

    /// The metadata added so far, in order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// Appends a tensor description (`shape` ne0 first); its data must later be written in this order.
    /// Fails when a row is not a whole number of blocks of `dtype`.
    pub fn add_tensor(&mut self, name: &str, shape: &[u64], dtype: DType) -> Result<()> {
        ensure!(!shape.is_empty() && shape.len() <= 4, "tensor {name}: GGUF holds 1 to 4 dimensions");
        let ne0 = shape[0] as usize;
        let Some(row_bytes) = dtype.row_bytes(ne0) else {
            bail!(
                "tensor {name}: row length {ne0} is not a multiple of the {dtype} block length {}",
                dtype.block_len()
            );
        };
        let n_rows: u64 = shape[1..].iter().product();
        let n_bytes = row_bytes as u64 * n_rows;
        let offset = self.data_len;
        self.data_len = offset + n_bytes + padding(n_bytes);
        self.tensors.push(TensorEntry {
            name: name.to_owned(),
            shape: shape.to_vec(),
            dtype,
            offset,
            n_bytes,
        });
        Ok(())
    }

    /// Serialises the header. The returned layout says exactly how many bytes the file will have.
    pub fn finish(self) -> GgufLayout {
        let mut header = Vec::with_capacity(1 << 16);
        header.extend_from_slice(GGUF_MAGIC);
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            value.encode(&mut header);
        }
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            header.extend_from_slice(&t.offset.to_le_bytes());
        }
        let pad = padding(header.len() as u64) as usize;
        header.resize(header.len() + pad, 0);
        GgufLayout { header, tensors: self.tensors, data_len: self.data_len }
    }
}

/// A fully planned file: the serialised, padded header and where every tensor goes.
pub struct GgufLayout {
    pub header: Vec<u8>,
    pub tensors: Vec<TensorEntry>,
    /// Bytes of the data section, padding included.
    pub data_len: u64,
}

impl GgufLayout {
    /// Size of the finished file in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }
}

/// Writes a planned file front to back: the header, then each tensor's bytes in order. Checks that every
/// tensor receives exactly its planned byte count, so a bug cannot produce a file whose offsets lie.
pub struct GgufStreamWriter<W: Write> {
    out: W,
    tensors: Vec<TensorEntry>,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
}

impl<W: Write> GgufStreamWriter<W> {
    /// Writes the header and gets ready for the first tensor's data.
    pub fn new(mut out: W, layout: GgufLayout) -> std::io::Result<GgufStreamWriter<W>> {
        out.write_all(&layout.header)?;
        Ok(GgufStreamWriter { out, tensors: layout.tensors, current: 0, written: 0 })
    }

    /// Appends bytes of the current tensor; moves on to the next tensor (writing the padding) once the
    /// current one is complete.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(t) = self.tensors.get(self.current) else {
                bail!("internal error: {} bytes of tensor data beyond the last tensor", bytes.len());
            };
            let room = (t.n_bytes - self.written) as usize;
            let take = room.min(bytes.len());
            self.out.write_all(&bytes[..take])?;
            self.written += take as u64;
            bytes = &bytes[take..];
            if self.written == t.n_bytes {
                let pad = padding(t.n_bytes) as usize;
                self.out.write_all(&[0u8; ALIGNMENT as usize][..pad])?;
                self.current += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Checks that every tensor was written completely and returns the output.
    pub fn finish(self) -> Result<W> {
        ensure!(
            self.current == self.tensors.len() && self.written == 0,
            "internal error: only {} of {} tensors were written",
            self.current,
            self.tensors.len()
        );
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_offsets_are_aligned_and_read_back() {
        let mut b = GgufBuilder::new();
        b.add("general.architecture", MetaValue::Str("qwen3".into()));
        b.add("x.u32", MetaValue::U32(7));
        b.add("x.arr", MetaValue::StrArray(vec!["a".into(), "bc".into()]));
        b.add("x.i32s", MetaValue::I32Array(vec![1, -2]));
        b.add_tensor("a.weight", &[3], DType::F32).unwrap();
        b.add_tensor("b.weight", &[32, 2], DType::Q8_0).unwrap();
        assert!(b.add_tensor("c.weight", &[31, 2], DType::Q8_0).is_err());
        let layout = b.finish();
        assert_eq!(layout.header.len() % 32, 0);
        assert_eq!(layout.tensors[1].offset, 32);
        assert_eq!(layout.data_len, 32 + 68 + padding(68));
        let len = layout.file_len();
        let mut w = GgufStreamWriter::new(Vec::new(), layout).unwrap();
        w.write(&[0u8; 12]).unwrap();
        w.write(&[1u8; 60]).unwrap();
        w.write(&[1u8; 8]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, len);

        let path = std::env::temp_dir().join(format!("quire-gguf-writer-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = quire_engine::gguf::GgufFile::open(&path).unwrap();
        assert_eq!(file.architecture(), Some("qwen3"));
        assert_eq!(file.get_u64("x.u32"), Some(7));
        assert_eq!(file.tensors().len(), 2);
        assert_eq!(file.tensor_info("b.weight").unwrap().shape, vec![32, 2]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn short_tensor_data_is_an_error() {
        let mut b = GgufBuilder::new();
        b.add_tensor("a", &[4], DType::F32).unwrap();
        let mut w = GgufStreamWriter::new(Vec::new(), b.finish()).unwrap();
        w.write(&[0u8; 8]).unwrap();
        assert!(w.finish().is_err());
    }
}
