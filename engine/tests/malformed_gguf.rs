//! A generated suite of malformed GGUF files (after llama.cpp's tests/test-gguf.cpp, and the bug classes of
//! the GGUF loaders' CVEs): each must be refused at load with a clear error, within bounded time and memory,
//! never a panic, an abort or a signal. The files are the tiny fixture model with one part broken, written
//! back by an independent writer here; and our header parser must agree with gguf-rs on every fixture.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fixture;
use quire_engine::generate::Engine;
use quire_engine::gguf::GgufFile;

const U8: u32 = 0;
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U64: u32 = 10;

/// A key/value pair: its key bytes, value type and the value's encoded bytes.
#[derive(Clone, Debug)]
struct Kv {
    key: Vec<u8>,
    ty: u32,
    value: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Tensor {
    name: Vec<u8>,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

/// A GGUF file in parts, to write back with one of them broken.
#[derive(Clone, Debug)]
struct Gguf {
    magic: [u8; 4],
    version: u32,
    /// Counts written instead of the real ones.
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Kv>,
    tensors: Vec<Tensor>,
    /// Where the data section starts is the header's end rounded up to this.
    pad_to: usize,
    data: Vec<u8>,
}

fn le_u32(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
}

/// Bytes of a value of `ty` at `p` (a valid file: the fixture).
fn value_len(b: &[u8], p: usize, ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        STRING => 8 + le_u64(b, p) as usize,
        ARRAY => {
            let (item, n) = (le_u32(b, p), le_u64(b, p + 4) as usize);
            let mut q = p + 12;
            for _ in 0..n {
                q += value_len(b, q, item);
            }
            q - p
        }
        _ => panic!("fixture has value type {ty}"),
    }
}

impl Gguf {
    fn read(b: &[u8]) -> Gguf {
        let (n_tensors, n_kv) = (le_u64(b, 8), le_u64(b, 16));
        let mut p = 24;
        let mut kvs = Vec::new();
        for _ in 0..n_kv {
            let len = le_u64(b, p) as usize;
            let key = b[p + 8..p + 8 + len].to_vec();
            p += 8 + len;
            let ty = le_u32(b, p);
            let n = value_len(b, p + 4, ty);
            kvs.push(Kv { key, ty, value: b[p + 4..p + 4 + n].to_vec() });
            p += 4 + n;
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let len = le_u64(b, p) as usize;
            let name = b[p + 8..p + 8 + len].to_vec();
            p += 8 + len;
            let n_dims = le_u32(b, p) as usize;
            let dims = (0..n_dims).map(|i| le_u64(b, p + 4 + 8 * i)).collect();
            p += 4 + 8 * n_dims;
            tensors.push(Tensor { name, dims, ty: le_u32(b, p), offset: le_u64(b, p + 4) });
            p += 12;
        }
        let start = p.next_multiple_of(32);
        Gguf {
            magic: b[..4].try_into().unwrap(),
            version: le_u32(b, 4),
            n_tensors: None,
            n_kv: None,
            kvs,
            tensors,
            pad_to: 32,
            data: b[start..].to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.magic);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            b.extend_from_slice(&(kv.key.len() as u64).to_le_bytes());
            b.extend_from_slice(&kv.key);
            b.extend_from_slice(&kv.ty.to_le_bytes());
            b.extend_from_slice(&kv.value);
        }
        for t in &self.tensors {
            b.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
            b.extend_from_slice(&t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(self.pad_to), 0);
        b.extend_from_slice(&self.data);
        b
    }

    fn kv(&mut self, key: &str) -> &mut Kv {
        self.kvs.iter_mut().find(|kv| kv.key == key.as_bytes()).unwrap_or_else(|| panic!("no key {key}"))
    }

    /// Sets `key` (added at the end if absent).
    fn set(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Self {
        match self.kvs.iter_mut().find(|kv| kv.key == key.as_bytes()) {
            Some(kv) => (kv.ty, kv.value) = (ty, value),
            None => self.kvs.push(Kv { key: key.as_bytes().to_vec(), ty, value }),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|kv| kv.key != key.as_bytes());
        self
    }

    fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name.as_bytes())
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// The string array `key` as its elements.
    fn strings(&mut self, key: &str) -> Vec<Vec<u8>> {
        let v = &self.kv(key).value;
        assert_eq!(le_u32(v, 0), STRING);
        let mut p = 12;
        let mut out = Vec::new();
        for _ in 0..le_u64(v, 4) {
            let len = le_u64(v, p) as usize;
            out.push(v[p + 8..p + 8 + len].to_vec());
            p += 8 + len;
        }
        out
    }
}

fn u32v(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
fn strv(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}
/// An array of `n` elements of `item` whose encoded elements are `payload`.
fn arrv(item: u32, n: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = item.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn base() -> Gguf {
    let g = Gguf::read(&std::fs::read(fixture("tiny-qwen3-q4_0.gguf")).unwrap());
    assert_eq!(g.bytes(), std::fs::read(fixture("tiny-qwen3-q4_0.gguf")).unwrap(), "the writer round-trips");
    g
}

fn tmp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quire-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> usize {
    quire_engine::memory::peak_rss_bytes().expect("VmHWM in /proc/self/status")
}

/// The tests of this file one at a time: the memory bound is measured on the process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cases, written into `dir`: (name, file, text the error must contain).
fn cases(dir: &std::path::Path) -> Vec<(String, PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut case = |name: &str, bytes: Vec<u8>, needle: &'static str| {
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        out.push((name.to_string(), path, needle));
    };
    let b = base();
    let good = b.bytes();

    // sizes and framing
    case("0-bytes", Vec::new(), "empty file");
    case("3-bytes", good[..3].to_vec(), "not a GGUF file");
    case("4-bytes", good[..4].to_vec(), "not a GGUF file");
    case("23-bytes", good[..23].to_vec(), "truncated");
    case("bad-magic", [b"GGML".as_slice(), &good[4..]].concat(), "not a GGUF file");
    for v in [0u32, 1, 99] {
        let mut g = b.clone();
        g.version = v;
        case(&format!("version-{v}"), g.bytes(), "unsupported GGUF version");
    }
    for (name, n) in [("2^64-1", u64::MAX), ("2^63", 1 << 63)] {
        let mut g = b.clone();
        g.n_tensors = Some(n);
        case(&format!("n_tensors-{name}"), g.bytes(), "cannot fit");
        let mut g = b.clone();
        g.n_kv = Some(n);
        case(&format!("n_kv-{name}"), g.bytes(), "cannot fit");
    }
    // keys and strings
    let mut g = b.clone();
    g.kvs[0].key.clear();
    case("empty-key", g.bytes(), "empty key");
    let mut g = b.clone();
    let first = g.kvs[0].clone();
    g.kvs.push(first);
    case("duplicate-key", g.bytes(), "appears twice");
    let mut g = b.clone();
    g.kvs[0].key = vec![0xff, 0xfe];
    case("key-not-utf8", g.bytes(), "not valid UTF-8");
    for (name, len, string_needle) in [
        ("2^63", 1u64 << 63, "more than the 64 MiB"),
        ("past-end", good.len() as u64, "truncated or corrupt"),
    ] {
        let mut bytes = good.clone();
        bytes[24..32].copy_from_slice(&len.to_le_bytes()); // the first key's length
        case(&format!("key-length-{name}"), bytes, "truncated or corrupt");
        let mut g = b.clone();
        let name_key = "general.architecture";
        let mut v = g.kv(name_key).value.clone();
        v[..8].copy_from_slice(&len.to_le_bytes());
        g.kv(name_key).value = v;
        case(&format!("string-length-{name}"), g.bytes(), string_needle);
    }
    let mut g = b.clone();
    g.kvs[1].ty = 13;
    case("value-type-13", g.bytes(), "unknown value type 13");
    let mut g = b.clone();
    g.kvs[1].ty = u32::MAX;
    case("value-type-2^32-1", g.bytes(), "unknown value type");
    // arrays
    let mut g = b.clone();
    let mut nested = arrv(ARRAY, 1, &arrv(U8, 1, &[0]));
    for _ in 0..10_000 {
        nested = arrv(ARRAY, 1, &nested);
    }
    g.set("x.nested", ARRAY, nested);
    case("array-nested-deep", g.bytes(), "arrays of arrays");
    let mut g = b.clone();
    g.set("x.long", ARRAY, arrv(U8, 1 << 62, &[0; 64]));
    case("array-length-2^62", g.bytes(), "elements");
    let mut g = b.clone();
    g.set("x.long", ARRAY, arrv(U32, 1 << 20, &[0; 64]));
    case("array-past-end", g.bytes(), "cannot fit");
    let mut g = b.clone();
    let n = g.strings("tokenizer.ggml.tokens").len();
    g.set("tokenizer.ggml.token_type", ARRAY, arrv(U8, n as u64, &vec![1; n]));
    case("token_type-as-u8", g.bytes(), "tokenizer.ggml.token_type");
    let mut g = b.clone();
    g.set("tokenizer.ggml.token_type", ARRAY, arrv(I32, n as u64 - 1, &vec![0; 4 * (n - 1)]));
    case("token_type-short", g.bytes(), "entries");
    let mut g = b.clone();
    g.set("tokenizer.ggml.tokens", ARRAY, arrv(STRING, 0, &[]));
    case("vocab-empty", g.bytes(), "tokenizer.ggml.tokens");
    // a token the merges build on, renamed: the vocabulary and the merges disagree
    let mut g = b.clone();
    let mut tokens = g.strings("tokenizer.ggml.tokens");
    tokens[n / 2] = b"<0x-1>".to_vec();
    let payload: Vec<u8> = tokens.iter().flat_map(|t| strv(t)).collect();
    g.set("tokenizer.ggml.tokens", ARRAY, arrv(STRING, n as u64, &payload));
    case("vocab-merges-disagree", g.bytes(), "out of vocabulary");
    // alignment
    for (name, ty, v) in [("0", U32, 0u32), ("13", U32, 13), ("as-i32", I32, 32)] {
        let mut g = b.clone();
        g.set("general.alignment", ty, u32v(v));
        case(&format!("alignment-{name}"), g.bytes(), "general.alignment");
    }
    let mut g = b.clone();
    g.set("general.alignment", U32, u32v(1 << 30));
    case("alignment-2^30", g.bytes(), "truncated");
    // tensor records
    for n_dims in [0usize, 5] {
        let mut g = b.clone();
        g.tensors[0].dims = vec![32; n_dims];
        case(&format!("n_dims-{n_dims}"), g.bytes(), "dimensions");
    }
    let mut bytes = b.bytes();
    let at = bytes.windows(17).position(|w| w == b"token_embd.weight").unwrap() + 17;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    case("n_dims-2^32-1", bytes, "dimensions");
    for (name, d) in [("0", 0u64), ("-1", u64::MAX)] {
        let mut g = b.clone();
        g.tensor("token_embd.weight").dims[1] = d;
        case(&format!("dimension-{name}"), g.bytes(), "invalid shape");
    }
    let mut g = b.clone();
    g.tensor("token_embd.weight").dims = vec![1 << 40, 1 << 40, 1 << 40];
    case("dimensions-overflow", g.bytes(), "overflows");
    for ty in [40u32, 41, 1000, u32::MAX] {
        let mut g = b.clone();
        g.tensors[0].ty = ty;
        case(&format!("tensor-type-{ty}"), g.bytes(), "unknown or unsupported type");
    }
    let mut g = b.clone();
    g.tensor("token_embd.weight").dims[0] += 1;
    case("ne0-not-whole-blocks", g.bytes(), "block length");
    let mut g = b.clone();
    g.tensors[1].offset += 1;
    case("offset-misaligned", g.bytes(), "aligned");
    let mut g = b.clone();
    g.tensors[1].offset = (-32i64) as u64;
    case("offset-negative", g.bytes(), "truncated");
    let mut g = b.clone();
    g.tensors[1].offset = g.data.len() as u64;
    case("offset-past-end", g.bytes(), "truncated");
    let mut g = b.clone();
    g.tensors[1].offset = g.tensors[0].offset;
    case("tensors-overlap", g.bytes(), "overlap");
    let mut g = b.clone();
    g.tensors[1].name = g.tensors[0].name.clone();
    case("tensor-name-duplicate", g.bytes(), "appears twice");
    let mut g = b.clone();
    g.tensors[1].name = vec![b'x'; 200];
    case("tensor-name-long", g.bytes(), "tensor name");
    case("data-one-byte-short", good[..good.len() - 1].to_vec(), "truncated");
    // the vocabulary and the model's hyperparameters
    let mut g = b.clone();
    g.set("tokenizer.ggml.eos_token_id", U32, u32v(n as u32));
    case("eos-past-vocab", g.bytes(), "out of range");
    let mut g = b.clone();
    g.set("tokenizer.ggml.bos_token_id", U32, u32v(u32::MAX));
    case("bos-past-vocab", g.bytes(), "out of range");
    let mut g = b.clone();
    g.set("qwen3.attention.head_count", U32, u32v(0));
    case("head-count-0", g.bytes(), "head counts");
    let mut g = b.clone();
    g.set("qwen3.attention.key_length", U32, u32v(u32::MAX));
    case("key-length-huge", g.bytes(), "head_dim");
    let mut g = b.clone();
    g.set("qwen3.context_length", U32, u32v(0));
    case("context-0", g.bytes(), "context_length");
    let mut g = b.clone();
    g.set("qwen3.context_length", U64, (1u64 << 63).to_le_bytes().to_vec());
    case("context-2^63", g.bytes(), "context_length");
    let mut g = b.clone();
    g.set("qwen3.block_count", U32, u32v(1));
    case("layers-fewer-than-tensors", g.bytes(), "blk.1");
    let mut g = b.clone();
    g.set("qwen3.block_count", U32, u32v(3));
    case("layers-more-than-tensors", g.bytes(), "missing tensor");
    let mut g = b.clone();
    g.set("qwen3.block_count", F32, 2f32.to_le_bytes().to_vec());
    case("layers-as-f32", g.bytes(), "qwen3.block_count");
    let mut g = b.clone();
    g.remove("general.architecture");
    case("no-architecture", g.bytes(), "general.architecture");
    let mut g = b.clone();
    g.set("tokenizer.chat_template", STRING, strv(&vec![b'x'; 8 << 20]));
    case("chat-template-8-MiB", g.bytes(), "MiB");
    out
}

#[test]
fn every_malformed_file_is_refused_clearly_in_bounded_time_and_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir().join("suite");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = cases(&dir);
    assert!(cases.len() >= 61, "{} cases", cases.len());
    let before = peak_rss();
    let mut failures = Vec::new();
    for (name, path, needle) in &cases {
        let t = Instant::now();
        let result = Engine::load(path);
        let took = t.elapsed();
        match result {
            Ok(_) => failures.push(format!("{name}: loaded")),
            Err(e) => {
                let msg = format!("{e:#}");
                if !msg.contains(needle) {
                    failures.push(format!("{name}: error {msg:?} does not mention {needle:?}"));
                }
            }
        }
        if took > Duration::from_secs(2) {
            failures.push(format!("{name}: took {took:?}"));
        }
        std::fs::remove_file(path).unwrap();
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let grew = peak_rss().saturating_sub(before);
    eprintln!("peak before the loads {} MiB, grew {} MiB", before >> 20, grew >> 20);
    assert!(grew < 100 << 20, "peak memory grew by {} MiB", grew >> 20);
}

/// A file claiming a 1 GiB chat template (sparse on disk): refused before the string is read.
#[test]
fn a_gigabyte_string_is_refused_before_it_is_read() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = base();
    let len = 1u64 << 30;
    g.set("tokenizer.chat_template", STRING, len.to_le_bytes().to_vec());
    let path = tmp_dir().join("template-1-GiB.gguf");
    std::fs::write(&path, g.bytes()).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len + (8 << 20)).unwrap();
    let t = Instant::now();
    let before = peak_rss();
    let err = format!("{:#}", Engine::load(&path).err().expect("refused"));
    assert!(err.contains("tokenizer.chat_template") && err.contains("MiB"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(peak_rss().saturating_sub(before) < 100 << 20);
    std::fs::remove_file(&path).unwrap();
}

/// Our header parser reads every fixture as gguf-rs (an independent reader) does: the same metadata, arrays
/// complete, and the same tensor records.
#[test]
fn the_header_parser_agrees_with_gguf_rs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    for path in files {
        let ours = GgufFile::open(&path).unwrap();
        let mut c = gguf_rs::get_gguf_container_array_size(path.to_str().unwrap(), u64::MAX).unwrap();
        let theirs = c.decode().unwrap();
        assert_eq!(ours.metadata(), theirs.metadata(), "{}: metadata", path.display());
        assert_eq!(ours.tensors().len(), theirs.tensors().len());
        for (a, b) in ours.tensors().iter().zip(theirs.tensors()) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(), b.shape, "{}", a.name);
            assert_eq!(a.range.start as u64, theirs.data_offset() + b.offset, "{}", a.name);
            assert_eq!(a.dtype.ggml_id(), b.kind, "{}", a.name);
        }
    }
}

/// A template that calls itself forever loads (it compiles) and fails when rendered, with minijinja's
/// recursion limit, not by exhausting the stack.
#[test]
fn a_recursive_chat_template_fails_to_render_not_the_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use quire_engine::chat::{Message, RenderOptions};
    let mut g = base();
    let template = b"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    g.set("tokenizer.chat_template", STRING, strv(template));
    let path = tmp_dir().join("template-recursive.gguf");
    std::fs::write(&path, g.bytes()).unwrap();
    let e = Engine::load(&path).unwrap();
    let err = e.template.render(&[Message::user("hi")], &RenderOptions::default()).expect_err("renders");
    assert!(format!("{err:#}").contains("recursion"), "{err:#}");
    std::fs::remove_file(&path).unwrap();
}

/// A byte-fallback-looking token that is no byte (`<0x-1>`, llama.cpp CVE-2025-49847 parsed such names into
/// a byte): Qwen's byte-level BPE has no byte tokens, so it is an ordinary string; it loads, and encoding and
/// decoding it round-trip without touching anything out of range.
#[test]
fn a_fake_byte_token_is_just_text() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = base();
    let mut tokens = g.strings("tokenizer.ggml.tokens");
    // a token no merge uses (renaming one that merges build on is a clear load error instead)
    let id = tokens.iter().position(|t| t == b"<|im_start|>").expect("the ChatML token");
    tokens[id] = b"<0x-1>".to_vec();
    let payload: Vec<u8> = tokens.iter().flat_map(|t| strv(t)).collect();
    g.set("tokenizer.ggml.tokens", ARRAY, arrv(STRING, tokens.len() as u64, &payload));
    let path = tmp_dir().join("token-0x-1.gguf");
    std::fs::write(&path, g.bytes()).unwrap();
    let e = Engine::load(&path).unwrap();
    let text = e.tokenizer.decode(&[id as u32], false).unwrap();
    assert_eq!(text, "<0x-1>");
    let ids = e.tokenizer.encode("a <0x-1> b").unwrap();
    assert_eq!(e.tokenizer.decode(&ids, false).unwrap(), "a <0x-1> b");
    std::fs::remove_file(&path).unwrap();
}
