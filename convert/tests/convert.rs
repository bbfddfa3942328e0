//! `quire convert` against llama.cpp's own conversions of the tiny Qwen3 fixture: same logits, same metadata
//! and tensor infos, byte-identical quantized tensors; the embedded Qwen3 tokenizer on the 167 reference
//! cases; and bad checkpoints giving clear errors without leaving a file behind.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use quire_convert::safetensors::{encode_header, Checkpoint};
use quire_convert::synth::{synthesize, Preset, SynthOptions};
use quire_convert::{convert, ConvertOptions, OutType};
use quire_engine::gguf::GgufFile;
use quire_engine::kv_cache::{KvCache, KvType};
use quire_engine::model::{Logits, Model, RunState};
use quire_engine::ops::argmax;
use quire_engine::tokenizer::{Tokenizer, VocabSpec};

const PROMPTS: [&str; 5] = ["single_token", "english", "chinese", "chatml", "long_random"];

/// A scratch directory unique to this test process and name, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("quire-convert-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn convert_to(input: &Path, output: &Path, out_type: OutType) -> anyhow::Result<()> {
    convert_named(input, output, out_type, None)
}

fn convert_named(input: &Path, output: &Path, out_type: OutType, name: Option<&str>) -> anyhow::Result<()> {
    let opts = ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        out_type,
        progress: false,
        name: name.map(str::to_owned),
    };
    convert(&opts).map(|_| ())
}

/// Converts the tiny fixture checkpoint to `ty` in `dir`.
fn convert_tiny(dir: &Scratch, ty: &str) -> PathBuf {
    let out = dir.path(&format!("tiny-{ty}.gguf"));
    convert_to(&fixture("tiny-qwen3"), &out, OutType::parse(ty).unwrap()).unwrap();
    out
}

/// Last-position logits for every prompt of reference.json, whole prompt in one batch.
fn last_logits(model: &Model) -> Vec<Vec<f32>> {
    let reference = read_json("tiny-qwen3/reference.json");
    PROMPTS
        .iter()
        .map(|name| {
            let ids = ids(&reference["prompts"][name]["ids"]);
            let mut kv = KvCache::with_type(&model.config, 512, KvType::F32).unwrap();
            let mut st = RunState::new();
            model.forward(&mut st, &mut kv, &ids, 0, Logits::Last).unwrap().to_vec()
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------------
// A typed GGUF header reader (gguf-rs turns values into JSON and loses u32 vs i32 vs f32).
// -------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum V {
    Int(u32, i128),
    F32(u32),
    F64(u64),
    Bool(bool),
    Str(String),
    Arr(u32, Vec<V>),
}

struct Header {
    kv: BTreeMap<String, V>,
    /// name -> (shape, type id, absolute data range)
    tensors: Vec<(String, Vec<u64>, u32, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

fn read_header(path: &Path) -> Header {
    let bytes = std::fs::read(path).unwrap();
    let mut p = 4usize;
    let mut take = |n: usize| {
        let s = p;
        p += n;
        s..p
    };
    fn u32_at(b: &[u8], r: std::ops::Range<usize>) -> u32 {
        u32::from_le_bytes(b[r].try_into().unwrap())
    }
    fn u64_at(b: &[u8], r: std::ops::Range<usize>) -> u64 {
        u64::from_le_bytes(b[r].try_into().unwrap())
    }
    let _version = u32_at(&bytes, take(4));
    let n_tensors = u64_at(&bytes, take(8));
    let n_kv = u64_at(&bytes, take(8));
    fn read_str(b: &[u8], take: &mut dyn FnMut(usize) -> std::ops::Range<usize>) -> String {
        let n = u64::from_le_bytes(b[take(8)].try_into().unwrap()) as usize;
        String::from_utf8(b[take(n)].to_vec()).unwrap()
    }
    fn read_val(b: &[u8], t: u32, take: &mut dyn FnMut(usize) -> std::ops::Range<usize>) -> V {
        let int = |r: std::ops::Range<usize>, signed: bool| -> i128 {
            let raw = &b[r];
            let mut buf = [0u8; 16];
            buf[..raw.len()].copy_from_slice(raw);
            if signed && raw[raw.len() - 1] & 0x80 != 0 {
                buf[raw.len()..].fill(0xff);
            }
            i128::from_le_bytes(buf)
        };
        match t {
            0 | 1 => V::Int(t, int(take(1), t == 1)),
            2 | 3 => V::Int(t, int(take(2), t == 3)),
            4 | 5 => V::Int(t, int(take(4), t == 5)),
            10 | 11 => V::Int(t, int(take(8), t == 11)),
            6 => V::F32(u32::from_le_bytes(b[take(4)].try_into().unwrap())),
            12 => V::F64(u64::from_le_bytes(b[take(8)].try_into().unwrap())),
            7 => V::Bool(b[take(1)][0] != 0),
            8 => V::Str(read_str(b, take)),
            9 => {
                let it = u32::from_le_bytes(b[take(4)].try_into().unwrap());
                let n = u64::from_le_bytes(b[take(8)].try_into().unwrap());
                V::Arr(it, (0..n).map(|_| read_val(b, it, take)).collect())
            }
            other => panic!("bad GGUF value type {other}"),
        }
    }
    let mut kv = BTreeMap::new();
    for _ in 0..n_kv {
        let k = read_str(&bytes, &mut take);
        let t = u32_at(&bytes, take(4));
        let v = read_val(&bytes, t, &mut take);
        kv.insert(k, v);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = read_str(&bytes, &mut take);
        let nd = u32_at(&bytes, take(4));
        let shape: Vec<u64> = (0..nd).map(|_| u64_at(&bytes, take(8))).collect();
        let ty = u32_at(&bytes, take(4));
        let off = u64_at(&bytes, take(8)) as usize;
        infos.push((name, shape, ty, off));
    }
    let data_start = p.div_ceil(32) * 32;
    let tensors = infos
        .into_iter()
        .map(|(name, shape, ty, off)| {
            let dtype = quire_kernels::DType::from_ggml(ty).unwrap();
            let n = dtype.row_bytes(shape[0] as usize).unwrap() * shape[1..].iter().product::<u64>() as usize;
            (name, shape, ty, data_start + off..data_start + off + n)
        })
        .collect();
    Header { kv, tensors, bytes }
}

/// Descriptive keys llama.cpp derives from the model card or directory name; not part of the model.
fn descriptive(key: &str) -> bool {
    const KEYS: [&str; 14] = [
        "general.name",
        "general.basename",
        "general.finetune",
        "general.version",
        "general.size_label",
        "general.author",
        "general.organization",
        "general.description",
        "general.license",
        "general.url",
        "general.repo_url",
        "general.tags",
        "general.languages",
        "general.quantized_by",
    ];
    KEYS.contains(&key) || key.starts_with("general.base_model") || key.starts_with("general.source")
}

// -------------------------------------------------------------------------------------------------------
// The tests
// -------------------------------------------------------------------------------------------------------

/// F32 conversion: the same logits as llama.cpp's F32 file (within 1e-5), and the transformers reference as
/// closely as the spine test demands of that file (last logits within 1e-3, argmax where not a near-tie,
/// 24 greedy tokens).
#[test]
fn f32_conversion_matches_llamacpp_logits_and_reference() {
    let dir = Scratch::new("f32");
    let ours = Model::open(convert_tiny(&dir, "f32")).unwrap();
    let theirs = Model::open(fixture("tiny-qwen3-f32.gguf")).unwrap();
    for (a, b) in last_logits(&ours).iter().zip(last_logits(&theirs)) {
        let diff = max_abs_diff(a, &b);
        assert!(diff <= 1e-5, "ours vs llama.cpp's f32 file: logits differ by {diff}");
    }

    let reference = read_json("tiny-qwen3/reference.json");
    let vocab = ours.config.vocab_size;
    for name in PROMPTS {
        let p = &reference["prompts"][name];
        let ids = ids(&p["ids"]);
        let mut kv = KvCache::with_type(&ours.config, 512, KvType::F32).unwrap();
        let mut st = RunState::new();
        let logits = ours.forward(&mut st, &mut kv, &ids, 0, Logits::All).unwrap().to_vec();
        let last = &logits[(ids.len() - 1) * vocab..];
        let diff = max_abs_diff(last, &floats(&p["last_logits"]));
        assert!(diff <= 1e-3, "{name}: last logits differ from transformers by {diff}");
        let want = common::ids(&p["argmax_per_position"]);
        for (pos, row) in logits.chunks(vocab).enumerate() {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            if sorted[0] - sorted[1] > 1.2e-2 {
                assert_eq!(argmax(row) as u32, want[pos], "{name}: argmax differs at position {pos}");
            }
        }
        let mut out = Vec::new();
        let mut logits = last.to_vec();
        for _ in 0..24 {
            let t = argmax(&logits) as u32;
            out.push(t);
            let pos = kv.len();
            logits = ours.forward(&mut st, &mut kv, &[t], pos, Logits::Last).unwrap().to_vec();
        }
        assert_eq!(out, common::ids(&p["greedy_24"]), "{name}: greedy continuation differs");
    }
}

/// Quantized conversions are no further from the transformers reference than llama.cpp's own files
/// (tiny-qwen3-llamacpp-error.json, +10%).
#[test]
fn quantized_conversions_are_within_llamacpp_error_bounds() {
    let dir = Scratch::new("bounds");
    let reference = read_json("tiny-qwen3/reference.json");
    let bounds = read_json("tiny-qwen3-llamacpp-error.json");
    for ty in ["q8_0", "q4_0", "q4_k_m", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q3_k_m", "q2_k"] {
        let model = Model::open(convert_tiny(&dir, ty)).unwrap();
        let worst = last_logits(&model)
            .iter()
            .zip(PROMPTS)
            .map(|(l, name)| max_abs_diff(l, &floats(&reference["prompts"][name]["last_logits"])))
            .fold(0.0f32, f32::max);
        let bound = bounds[ty]["max_abs_diff_vs_ref"].as_f64().unwrap() as f32 * 1.1;
        eprintln!("{ty}: max |logit - reference| = {worst:.5} (llama.cpp + 10%: {bound:.5})");
        if worst > bound {
            // Tell a converter fault from an engine one: llama.cpp's own file through the same engine.
            let theirs = Model::open(fixture(&format!("tiny-qwen3-{ty}.gguf"))).unwrap();
            let theirs_worst = last_logits(&theirs)
                .iter()
                .zip(PROMPTS)
                .map(|(l, name)| max_abs_diff(l, &floats(&reference["prompts"][name]["last_logits"])))
                .fold(0.0f32, f32::max);
            panic!(
                "{ty}: {worst} exceeds llama.cpp's bound {bound} (llama.cpp's own {ty} file gives {theirs_worst} \
                 with this engine)"
            );
        }
    }
}

/// Every tensor of our quantized and half-precision files holds exactly the bytes of llama.cpp's file
/// (llama-quantize from the same weights; the kernels' quantizers are llama.cpp's reference ones).
#[test]
fn tensors_are_byte_identical_to_llamacpp() {
    let dir = Scratch::new("bytes");
    let types = ["q8_0", "q4_0", "q4_k_m", "q6_k", "f16", "bf16", "f32"];
    let later = ["q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q3_k_m", "q2_k"];
    for ty in types.into_iter().chain(later) {
        let ours = read_header(&convert_tiny(&dir, ty));
        let theirs = read_header(&fixture(&format!("tiny-qwen3-{ty}.gguf")));
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{ty}: tensor count");
        for (name, _, _, range) in &ours.tensors {
            let (_, _, _, their_range) = theirs.tensors.iter().find(|t| &t.0 == name).unwrap();
            assert!(
                ours.bytes[range.clone()] == theirs.bytes[their_range.clone()],
                "{ty}: tensor {name} differs from llama.cpp's"
            );
        }
    }
}

/// Every metadata key (type and value) and every tensor's name, type and shape equal llama.cpp's files,
/// apart from descriptive general.* keys.
#[test]
fn metadata_and_tensor_infos_equal_llamacpp() {
    let dir = Scratch::new("meta");
    for ty in ["f32", "q8_0", "q4_0", "q4_k_m", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q3_k_m", "q2_k"]
    {
        let ours = read_header(&convert_tiny(&dir, ty));
        let theirs = read_header(&fixture(&format!("tiny-qwen3-{ty}.gguf")));
        let keys = |h: &Header| -> Vec<String> { h.kv.keys().filter(|k| !descriptive(k)).cloned().collect() };
        assert_eq!(keys(&ours), keys(&theirs), "{ty}: metadata keys");
        for k in keys(&ours) {
            assert_eq!(ours.kv[&k], theirs.kv[&k], "{ty}: metadata {k}");
        }
        let infos = |h: &Header| -> BTreeMap<String, (Vec<u64>, u32)> {
            h.tensors.iter().map(|(n, s, t, _)| (n.clone(), (s.clone(), *t))).collect()
        };
        assert_eq!(infos(&ours), infos(&theirs), "{ty}: tensor names, shapes, types");
    }
}

/// The tiny synthetic preset carries the real Qwen3 tokenizer: the GGUF vocabulary our converter embeds
/// encodes all 167 reference cases exactly, and equals llama.cpp's `--vocab-only` conversion of the same
/// tokenizer key for key (plus the sampling defaults from generation_config.json).
#[test]
fn embedded_qwen3_tokenizer_reproduces_reference_cases() {
    let dir = Scratch::new("tokenizer");
    let ckpt = dir.path("synth-tiny");
    synthesize(&SynthOptions {
        preset: Preset::Tiny,
        out_dir: ckpt.clone(),
        seed: 1,
        fixtures: fixtures(),
        progress: false,
    })
    .unwrap();
    assert!(Checkpoint::open(&ckpt).unwrap().files().count() >= 2, "the tiny preset should be sharded");
    let out = dir.path("synth-tiny-q8_0.gguf");
    convert_to(&ckpt, &out, OutType::Q8_0).unwrap();

    let file = GgufFile::open(&out).unwrap();
    let tok = Tokenizer::from_vocab(&VocabSpec::from_metadata(file.metadata()).unwrap()).unwrap();
    let cases = std::fs::read_to_string(fixture("qwen3-tokenizer/cases.jsonl")).unwrap();
    let mut n = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&case["ids"]), "case {n}: {text:?}");
        n += 1;
    }
    assert_eq!(n, 167);

    let ours = read_header(&out);
    let theirs = read_header(&fixture("qwen3-tokenizer/qwen3-vocab.gguf"));
    for (k, v) in &theirs.kv {
        // llama.cpp's vocab-only run also wrote add_eos_token = false, a key its converter takes from
        // tokenizer_config.json when present; Qwen's file has none, and absent means false.
        if (k.starts_with("tokenizer.") || k.starts_with("general.sampling."))
            && k != "tokenizer.ggml.add_eos_token"
        {
            assert_eq!(ours.kv.get(k), Some(v), "metadata {k}");
        }
    }

    // And the converted model runs.
    let model = Model::load(file).unwrap();
    let mut kv = KvCache::new(&model.config, 16).unwrap();
    let mut st = RunState::new();
    let logits = model.forward(&mut st, &mut kv, &tok.encode("Hello").unwrap(), 0, Logits::Last).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

/// A copy of the tiny checkpoint split into two shards with an index, as published checkpoints are.
fn sharded_copy(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let src = fixture("tiny-qwen3");
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let ckpt = Checkpoint::open(&src).unwrap();
    let tensors: Vec<_> = ckpt.tensors().cloned().collect();
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let name = format!("model-{:05}-of-00002.safetensors", i + 1);
        let entries: Vec<_> = part.iter().map(|t| (t.name.clone(), t.dtype, t.shape.clone())).collect();
        let (mut bytes, _) = encode_header(&entries);
        for t in part {
            bytes.extend_from_slice(ckpt.bytes(t, 0..t.range.len()));
            weight_map.insert(t.name.clone(), serde_json::Value::String(name.clone()));
        }
        std::fs::write(dst.join(&name), bytes).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A single-file copy of the tiny checkpoint whose files can be damaged.
fn plain_copy(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen3")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Runs a conversion that must fail; returns the message after checking the output directory holds neither
/// the output nor a temporary file.
fn expect_failure(input: &Path, out_dir: &Path) -> String {
    std::fs::create_dir_all(out_dir).unwrap();
    let out = out_dir.join("out.gguf");
    let err = convert_to(input, &out, OutType::Q8_0).expect_err("conversion should fail");
    let left: Vec<_> = std::fs::read_dir(out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind after a failed conversion: {left:?}");
    format!("{err:#}")
}

#[test]
fn bad_checkpoints_give_clear_errors_and_leave_no_file() {
    let dir = Scratch::new("bad");

    // A sharded checkpoint converts to the same bytes as the single file ...
    let sharded = dir.path("sharded");
    sharded_copy(&sharded);
    let (from_shards, from_single) = (dir.path("from-shards.gguf"), dir.path("from-single.gguf"));
    convert_named(&sharded, &from_shards, OutType::Q8_0, Some("Tiny Qwen3")).unwrap();
    convert_named(&fixture("tiny-qwen3"), &from_single, OutType::Q8_0, Some("Tiny Qwen3")).unwrap();
    assert!(std::fs::read(&from_shards).unwrap() == std::fs::read(&from_single).unwrap());
    // ... and one with a shard missing is refused, naming the shard.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = expect_failure(&sharded, &dir.path("out-missing"));
    assert!(err.contains("missing shard") && err.contains("model-00002-of-00002.safetensors"), "{err}");

    // Truncated download.
    let truncated = dir.path("truncated");
    plain_copy(&truncated);
    let st = truncated.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(len - 1000).unwrap();
    let err = expect_failure(&truncated, &dir.path("out-truncated"));
    assert!(err.contains("truncated safetensors file") && err.contains("model.safetensors"), "{err}");

    // A config that does not match the weights.
    let mismatch = dir.path("mismatch");
    plain_copy(&mismatch);
    edit_config(&mismatch, |c| c["intermediate_size"] = 512.into());
    let err = expect_failure(&mismatch, &dir.path("out-mismatch"));
    assert!(
        err.contains("mlp.down_proj.weight")
            && err.contains("has shape [256, 768], but config.json implies [256, 512]"),
        "{err}"
    );

    // An architecture the converter does not know.
    let llama = dir.path("llama");
    plain_copy(&llama);
    edit_config(&llama, |c| c["model_type"] = "llama".into());
    let err = expect_failure(&llama, &dir.path("out-llama"));
    assert!(err.contains("unsupported model_type 'llama'"), "{err}");
}
