//! Broken files get clear errors, never panics: empty, random bytes, truncated, corrupted offsets, unknown
//! tensor types, missing tensors, wrong shapes, unsupported architectures.

mod common;

use std::path::PathBuf;

use common::fixture;
use quire_engine::generate::Engine;
use quire_engine::gguf::GgufFile;
use quire_engine::model::Model;

fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quire-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tiny() -> Vec<u8> {
    std::fs::read(fixture("tiny-qwen3-f32.gguf")).unwrap()
}

/// Loading must fail with an error whose text contains `needle`.
fn load_err(name: &str, bytes: &[u8], needle: &str) {
    let path = tmp_file(name, bytes);
    let err = match Model::open(&path) {
        Ok(_) => panic!("{name}: loaded a broken file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(needle), "{name}: error {err:?} does not mention {needle:?}");
}

/// Byte positions of each tensor-info record's fields in a GGUF header (a minimal walker for tests).
struct TensorField {
    name: String,
    name_at: usize,
    dims_at: usize,
    type_at: usize,
    offset_at: usize,
}

fn walk_header(b: &[u8]) -> Vec<TensorField> {
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let n_tensors = u64_at(8);
    let n_kv = u64_at(16);
    let mut p = 24;
    fn skip_value(b: &[u8], p: &mut usize, ty: u32) {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => *p += 4,
            10..=12 => *p += 8,
            8 => *p += 8 + u64_at(*p),
            9 => {
                let item = u32::from_le_bytes(b[*p..*p + 4].try_into().unwrap());
                let n = u64_at(*p + 4);
                *p += 12;
                for _ in 0..n {
                    skip_value(b, p, item);
                }
            }
            _ => panic!("bad type {ty}"),
        }
    }
    for _ in 0..n_kv {
        p += 8 + u64_at(p);
        let ty = u32_at(p);
        p += 4;
        skip_value(b, &mut p, ty);
    }
    let mut out = Vec::new();
    for _ in 0..n_tensors {
        let len = u64_at(p);
        let name = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
        let name_at = p + 8;
        p += 8 + len;
        let n_dims = u32_at(p) as usize;
        let dims_at = p + 4;
        p += 4 + 8 * n_dims;
        out.push(TensorField { name, name_at, dims_at, type_at: p, offset_at: p + 4 });
        p += 12;
    }
    out
}

fn field<'a>(fields: &'a [TensorField], name: &str) -> &'a TensorField {
    fields.iter().find(|f| f.name == name).unwrap()
}

#[test]
fn empty_file() {
    load_err("empty.gguf", &[], "empty file");
}

#[test]
fn random_bytes() {
    // xorshift noise: deterministic, not GGUF
    let mut x = 0x9E3779B97F4A7C15u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    load_err("random.gguf", &noise, "not a GGUF file");
    // random bytes behind a valid magic and version: the header parser must fail cleanly too
    let mut framed = b"GGUF\x03\x00\x00\x00".to_vec();
    framed.extend_from_slice(&noise);
    load_err("random-framed.gguf", &framed, "GGUF header");
}

#[test]
fn truncated_copies() {
    let b = tiny();
    // cut in the tensor data
    load_err("truncated-data.gguf", &b[..b.len() - 1000], "truncated");
    // cut in the header (inside the vocabulary)
    load_err("truncated-header.gguf", &b[..5000], "truncated");
    load_err("truncated-magic.gguf", &b[..3], "not a GGUF file");
}

#[test]
fn corrupted_tensor_offset() {
    let mut b = tiny();
    let f = walk_header(&b);
    let at = field(&f, "blk.1.ffn_down.weight").offset_at;
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    load_err("bad-offset.gguf", &b, "truncated");
    // an offset that overflows when added to the data start
    b[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    load_err("overflow-offset.gguf", &b, "truncated");
    // a misaligned one
    b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    load_err("misaligned-offset.gguf", &b, "aligned");
}

#[test]
fn unknown_tensor_type() {
    let b = tiny();
    let f = walk_header(&b);
    let at = field(&f, "blk.0.attn_q.weight").type_at;
    for (ty, needle) in [
        (16u32, "unsupported type id 16 (supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, BF16)"),
        (39, "type id 39"),
        // 40 is GGML_TYPE_COUNT (gguf-rs panics on it), 1000 no type at all: the same clear error
        (40, "type id 40"),
        (1000, "type id 1000"),
    ] {
        let mut c = b.clone();
        c[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        load_err(&format!("type-{ty}.gguf"), &c, needle);
    }
}

#[test]
fn missing_tensor_wrong_shape_and_architecture() {
    let b = tiny();
    let f = walk_header(&b);
    let mut c = b.clone();
    let at = field(&f, "blk.1.ffn_up.weight").name_at;
    c[at..at + 5].copy_from_slice(b"blk.7");
    load_err("missing.gguf", &c, "missing tensor 'blk.1.ffn_up.weight'");

    let mut c = b.clone();
    let at = field(&f, "blk.0.attn_q_norm.weight").dims_at;
    c[at..at + 8].copy_from_slice(&64u64.to_le_bytes());
    load_err("shape.gguf", &c, "blk.0.attn_q_norm.weight' has shape [64]");

    let mut c = b.clone();
    let pos = c.windows(5).position(|w| w == b"qwen3").unwrap();
    c[pos..pos + 5].copy_from_slice(b"gemma");
    load_err("arch.gguf", &c, "unsupported architecture 'gemma'");
}

#[test]
fn engine_load_reports_the_same_errors() {
    let path = tmp_file("engine-empty.gguf", &[]);
    let err = Engine::load(&path).err().expect("empty file must not load");
    assert!(format!("{err:#}").contains("empty file"));
    assert!(GgufFile::open("/nonexistent/model.gguf").is_err());
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let engine = Engine::load(fixture("tiny-qwen3-f32.gguf")).unwrap();
    let mut session = engine.session(16).unwrap();
    let prompt: Vec<u32> = (0..17).collect();
    let err =
        session.generate(&prompt, &Default::default(), |_| std::ops::ControlFlow::Continue(())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("17 tokens") && msg.contains("16"), "{msg}");
}
