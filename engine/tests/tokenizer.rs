//! The tokenizer against Hugging Face `tokenizers`' own output on the real Qwen3 vocabulary
//! (fixtures/qwen3-tokenizer): built from the GGUF metadata and from `tokenizer.json`, plus streaming
//! detokenization, end-of-generation ids, added tokens, padding ids and bad metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use quire_engine::tokenizer::{StreamDecoder, Tokenizer, VocabSpec, QWEN2_PRE_TOKENIZER_REGEX};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

fn fixtures() -> PathBuf {
    match std::env::var_os("QUIRE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")),
    }
}

fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let path = fixture("qwen3-tokenizer/cases.jsonl");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Case {
                    text: v["text"].as_str().unwrap().to_owned(),
                    ids: v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
                }
            })
            .collect()
    })
}

/// The GGUF header metadata with full tokenizer arrays (the default gguf-rs reader truncates them to 3).
fn metadata() -> &'static BTreeMap<String, Value> {
    static META: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    META.get_or_init(|| {
        let path = fixture("qwen3-tokenizer/qwen3-vocab.gguf");
        let mut c = gguf_rs::get_gguf_container_array_size(path.to_str().unwrap(), u64::MAX).unwrap();
        c.decode().unwrap().metadata().clone()
    })
}

fn gguf_tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_vocab(&VocabSpec::from_metadata(metadata()).unwrap()).unwrap())
}

fn json_tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_file(&fixture("qwen3-tokenizer/tokenizer.json")).unwrap())
}

/// Encodes every case and reports the failures; all 167 must match.
fn check_cases(name: &str, tok: &Tokenizer) {
    let cases = cases();
    assert_eq!(cases.len(), 167, "fixture should hold 167 cases");
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let got = tok.encode(&c.text).unwrap();
        if got != c.ids {
            failures.push(format!("case {i} {:?}:\n  want {:?}\n  got  {:?}", c.text, c.ids, got));
        }
    }
    eprintln!("{name}: {}/{} cases match", cases.len() - failures.len(), cases.len());
    assert!(failures.is_empty(), "{name}: {} cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn cases_from_gguf_vocab() {
    check_cases("GGUF vocab", gguf_tok());
}

#[test]
fn cases_from_tokenizer_json() {
    check_cases("tokenizer.json", json_tok());
}

#[test]
fn decode_of_encode_is_nfc() {
    for (name, tok) in [("gguf", gguf_tok()), ("json", json_tok())] {
        for c in cases() {
            let ids = tok.encode(&c.text).unwrap();
            let nfc: String = c.text.nfc().collect();
            assert_eq!(tok.decode(&ids, false).unwrap(), nfc, "{name}: round trip of {:?}", c.text);
        }
    }
    // The fixture really exercises NFC: some case is not already NFC.
    assert!(cases().iter().any(|c| c.text.nfc().collect::<String>() != c.text));
}

#[test]
fn pre_tokenizer_regex_matches_reference_json() {
    let path = fixture("qwen3-tokenizer/tokenizer.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pre = &json["pre_tokenizer"]["pretokenizers"];
    assert_eq!(pre[0]["type"], "Split");
    assert_eq!(pre[0]["behavior"], "Isolated");
    assert_eq!(pre[0]["pattern"]["Regex"].as_str().unwrap(), QWEN2_PRE_TOKENIZER_REGEX);
    assert_eq!(pre[1]["type"], "ByteLevel");
    assert_eq!(pre[1]["add_prefix_space"], false);
    assert_eq!(pre[1]["use_regex"], false);
    assert_eq!(json["normalizer"]["type"], "NFC");
    assert_eq!(json["decoder"]["type"], "ByteLevel");
}

#[test]
fn gguf_and_json_vocabularies_agree() {
    let (g, j) = (gguf_tok(), json_tok());
    assert_eq!(g.vocab_size(), 151936, "GGUF vocabulary includes the padding ids");
    assert_eq!(j.vocab_size(), 151669);
    for id in 0..j.vocab_size() as u32 {
        assert_eq!(g.id_to_token(id), j.id_to_token(id), "id {id}");
        assert_eq!(g.token_bytes(id), j.token_bytes(id), "bytes of id {id}");
    }
    assert_eq!(g.token_to_id("Ġworld"), Some(1879));
    assert_eq!(g.id_to_token(1879).as_deref(), Some("Ġworld"));
    assert_eq!(g.token_to_id("no such token ☃☃"), None);
    assert_eq!(g.id_to_token(10_000_000), None);
}

#[test]
fn special_ids_and_added_tokens() {
    for tok in [gguf_tok(), json_tok()] {
        let mut eog = tok.eog_ids().to_vec();
        eog.sort();
        assert_eq!(eog, vec![151643, 151645]);
        assert!(tok.is_eog(151645) && tok.is_eog(151643) && !tok.is_eog(151644) && !tok.is_eog(13));
        assert!(!tok.add_bos());
        assert_eq!(tok.token_to_id("<think>"), Some(151667));
        assert_eq!(tok.token_to_id("</think>"), Some(151668));
        // Added tokens are matched whole inside text, even glued to other text.
        let ids = tok.encode("a<think>b</think>\n\n<|im_end|>x").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == 151667).count(), 1, "{ids:?}");
        assert_eq!(ids.iter().filter(|&&i| i == 151668).count(), 1, "{ids:?}");
        assert!(ids.contains(&151645), "{ids:?}");
        // Control tokens are special; user-defined ones (<think>, <tool_call>) are not.
        assert!(tok.is_control(151644) && tok.is_control(151645) && tok.is_control(151643));
        assert!(!tok.is_control(151667) && !tok.is_control(151657) && !tok.is_control(9707));
        assert_eq!(tok.decode(&ids, true).unwrap(), "a<think>b</think>\n\nx");
        assert_eq!(tok.decode(&ids, false).unwrap(), "a<think>b</think>\n\n<|im_end|>x");
        assert_eq!(tok.token_bytes(151645), b"<|im_end|>");
    }
    let g = gguf_tok();
    assert_eq!(g.bos_id(), VocabSpec::from_metadata(metadata()).unwrap().bos_id);
    // The GGUF marks the FIM/repo tokens control (type 3), unlike tokenizer.json.
    assert!(g.is_control(151659));
}

#[test]
fn padding_tokens_are_inert() {
    let g = gguf_tok();
    assert_eq!(g.token_to_id("[PAD151700]"), Some(151700));
    assert_eq!(g.id_to_token(151700).as_deref(), Some("[PAD151700]"));
    assert!(!g.is_control(151700) && !g.is_eog(151700));
    // Not matched inside text (llama.cpp does not either): encodes like the JSON tokenizer, which lacks it.
    let ids = g.encode("x [PAD151700] y").unwrap();
    assert!(!ids.contains(&151700));
    assert_eq!(ids, json_tok().encode("x [PAD151700] y").unwrap());
    // Decodes to nothing, everywhere.
    assert_eq!(g.decode(&[9707, 151700, 151935, 1879], false).unwrap(), "Hello world");
    assert!(g.token_bytes(151700).is_empty());
    let mut s = StreamDecoder::new(g, false);
    assert_eq!(s.push(151700), "");
    assert_eq!(s.finish(), "");
    // Beyond the vocabulary: decode refuses, the byte and stream paths give nothing.
    let err = g.decode(&[151936], false).unwrap_err().to_string();
    assert!(err.contains("151936") && err.contains("out of range"), "{err}");
    assert!(g.token_bytes(151936).is_empty());
    assert_eq!(StreamDecoder::new(g, false).push(u32::MAX), "");
}

#[test]
fn token_bytes_are_raw_bytes() {
    let g = gguf_tok();
    assert_eq!(g.token_bytes(220), b" ");
    assert_eq!(g.token_bytes(198), b"\n");
    assert_eq!(g.token_bytes(9707), b"Hello");
    // " 🦙" (20 F0 9F A6 99) is split over three tokens, none of them whole UTF-8 but the first's space.
    let ids = g.encode(" 🦙").unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(g.token_bytes(ids[0]), b" \xF0\x9F");
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| g.token_bytes(i)).collect();
    assert_eq!(bytes, " 🦙".as_bytes());
}

/// Streams ids one at a time and checks each chunk is whole text and the chunks add up to `decode`.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let full = tok.decode(ids, skip_special).unwrap();
    let mut s = StreamDecoder::new(tok, skip_special);
    let mut chunks: Vec<String> = ids.iter().map(|&id| s.push(id)).collect();
    chunks.push(s.finish());
    if !full.contains(char::REPLACEMENT_CHARACTER) {
        for c in &chunks {
            assert!(!c.contains(char::REPLACEMENT_CHARACTER), "chunk {c:?} has a broken character");
        }
    }
    assert_eq!(chunks.concat(), full, "stream of {ids:?}");
    chunks
}

#[test]
fn stream_decoder_matches_decode_on_multibyte_cases() {
    let tok = gguf_tok();
    let mut n = 0;
    let mut split_chars = 0;
    for c in cases().iter().filter(|c| !c.text.is_ascii()) {
        for skip in [false, true] {
            let chunks = check_stream(tok, &c.ids, skip);
            // Empty chunks mid-stream mean a character was held back across tokens.
            split_chars += chunks[..chunks.len() - 1].iter().filter(|s| s.is_empty()).count();
        }
        n += 1;
    }
    assert!(n > 40, "expected many Chinese/emoji/mixed cases, found {n}");
    assert!(split_chars > 0, "no case split a character across tokens");
    // Whole fixture, both tokenizers, with control tokens present.
    for tok in [gguf_tok(), json_tok()] {
        for c in cases() {
            check_stream(tok, &c.ids, false);
            check_stream(tok, &c.ids, true);
        }
    }
}

#[test]
fn stream_decoder_holds_split_emoji_until_complete() {
    let tok = gguf_tok();
    // As in the fixture case " this is 🦙.cpp": " 🦙" (20 F0 9F A6 99) is " ðŁ" (20 F0 9F) + A6 + 99.
    let ids = tok.encode(" 🦙").unwrap();
    assert_eq!(ids, vec![11162, 99, 247]);
    assert_eq!(tok.token_bytes(11162), b" \xF0\x9F");
    let mut s = StreamDecoder::new(tok, true);
    let chunks: Vec<String> = ids.iter().map(|&id| s.push(id)).collect();
    assert_eq!(chunks, vec![" ", "", "🦙"], "the space at once, nothing mid-character, then the llama whole");
    assert_eq!(s.finish(), "");

    // Text before the fragment is emitted at once; a control token skipped in between does not flush.
    let mut s = StreamDecoder::new(tok, true);
    let hello = tok.encode("Hi").unwrap();
    let mut out = String::new();
    for &id in &hello {
        out.push_str(&s.push(id));
    }
    assert_eq!(out, "Hi");
    assert_eq!(s.push(ids[0]), " ");
    assert_eq!(s.push(151644), "");
    let rest: String = ids[1..].iter().map(|&id| s.push(id)).collect();
    assert_eq!(rest, "🦙");

    // Cut short: finish() flushes lossily, exactly like decode of the same ids.
    let mut s = StreamDecoder::new(tok, false);
    assert_eq!(s.push(ids[0]), " ");
    let tail = s.finish();
    assert_eq!(tail, "\u{FFFD}");
    assert_eq!(tok.decode(&ids[..1], false).unwrap(), " \u{FFFD}");
    assert_eq!(s.finish(), "", "finish empties the buffer");

    // A fragment followed by something that can never complete it: U+FFFD then the text, no waiting.
    let mut s = StreamDecoder::new(tok, false);
    assert_eq!(s.push(ids[0]), " ");
    let hello_id = tok.token_to_id("Hello").unwrap();
    assert_eq!(s.push(hello_id), "\u{FFFD}Hello");
    assert_eq!(tok.decode(&[ids[0], hello_id], false).unwrap(), " \u{FFFD}Hello");
}

#[test]
fn build_time_from_gguf_vocab() {
    let meta = metadata();
    let t0 = Instant::now();
    let spec = VocabSpec::from_metadata(meta).unwrap();
    let t1 = Instant::now();
    let tok = Tokenizer::from_vocab(&spec).unwrap();
    let t2 = Instant::now();
    eprintln!(
        "VocabSpec::from_metadata {:.1} ms, Tokenizer::from_vocab {:.1} ms ({} tokens, {} merges)",
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        spec.tokens.len(),
        spec.merges.len()
    );
    assert_eq!(spec.tokens.len(), 151936);
    assert_eq!(spec.merges.len(), 151387);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![9707, 1879]);
}

fn err_of(meta: &BTreeMap<String, Value>) -> String {
    match VocabSpec::from_metadata(meta) {
        Ok(_) => panic!("bad metadata accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_metadata_gives_clear_errors() {
    let good = metadata();

    let mut m = good.clone();
    m.remove("tokenizer.ggml.tokens");
    let e = err_of(&m);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("no"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.tokens".into(), Value::from(42));
    let e = err_of(&m);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("array"), "{e}");

    let mut m = good.clone();
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::from(vec![Value::from("a"), Value::from(1), Value::from("b"), Value::from("c")]),
    );
    let e = err_of(&m);
    assert!(e.contains("tokenizer.ggml.tokens`[1]") && e.contains("string"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.model".into(), Value::from("llama"));
    let e = err_of(&m);
    assert!(e.contains("llama") && e.contains("gpt2"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.model".into(), Value::from(3));
    let e = err_of(&m);
    assert!(e.contains("tokenizer.ggml.model") && e.contains("string"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.pre".into(), Value::from("llama-bpe"));
    let e = err_of(&m);
    assert!(e.contains("llama-bpe") && e.contains("qwen2"), "{e}");

    // What gguf-rs's default reader produces: 3-element tokenizer arrays.
    let mut m = good.clone();
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"] {
        let v = m[key].as_array().unwrap()[..3].to_vec();
        m.insert(key.into(), Value::from(v));
    }
    let e = err_of(&m);
    assert!(e.contains("only 3 entries") && e.contains("truncated"), "{e}");

    let mut m = good.clone();
    m.get_mut("tokenizer.ggml.token_type").unwrap().as_array_mut().unwrap().pop();
    let e = err_of(&m);
    assert!(e.contains("token_type") && e.contains("151935") && e.contains("151936"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::from(-1));
    let e = err_of(&m);
    assert!(e.contains("eos_token_id"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::from(999_999));
    let e = err_of(&m);
    assert!(e.contains("eos") && e.contains("999999") && e.contains("out of range"), "{e}");

    let mut m = good.clone();
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::from("yes"));
    let e = err_of(&m);
    assert!(e.contains("add_bos_token") && e.contains("bool"), "{e}");

    // Nearly empty metadata (e.g. not a model file at all).
    let mut m = BTreeMap::new();
    m.insert("general.architecture".to_string(), Value::from("qwen3"));
    let e = err_of(&m);
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
}

#[test]
fn bad_vocab_spec_gives_clear_errors() {
    let good = VocabSpec::from_metadata(metadata()).unwrap();

    let mut s = good.clone();
    s.merges[5] = "nospace".into();
    let e = format!("{:#}", Tokenizer::from_vocab(&s).unwrap_err());
    assert!(e.contains("merges`[5]") && e.contains("nospace"), "{e}");

    let mut s = good.clone();
    s.merges[0] = "Ġ ☃☃☃".into();
    let e = format!("{:#}", Tokenizer::from_vocab(&s).unwrap_err());
    assert!(e.contains("BPE") && e.contains("☃☃☃"), "{e}");

    let mut s = good.clone();
    s.token_types[10] = 42;
    let e = format!("{:#}", Tokenizer::from_vocab(&s).unwrap_err());
    assert!(e.contains("token type 42") && e.contains("token 10"), "{e}");

    let mut s = good.clone();
    s.model = "llama".into();
    let e = format!("{:#}", Tokenizer::from_vocab(&s).unwrap_err());
    assert!(e.contains("llama"), "{e}");

    let e = format!("{:#}", Tokenizer::from_file(&fixture("no-such-dir/tokenizer.json")).unwrap_err());
    assert!(e.contains("no-such-dir/tokenizer.json"), "{e}");
}

#[test]
fn add_bos_prepends_bos() {
    let mut s = VocabSpec::from_metadata(metadata()).unwrap();
    s.add_bos = true;
    s.bos_id = Some(151643);
    let tok = Tokenizer::from_vocab(&s).unwrap();
    assert!(tok.add_bos());
    assert_eq!(tok.encode("Hello world").unwrap(), vec![151643, 9707, 1879]);
    assert_eq!(tok.encode("").unwrap(), vec![151643]);
}

/// The tiny model's own GGUF (a 512-token BPE padded to 576 ids, like Qwen's real padding): the prompt the
/// reference was computed on tokenizes to the reference ids, and its random-weight greedy outputs, which
/// do land on padding ids, decode and stream without error.
#[test]
fn tiny_model_gguf_vocab() {
    let path = fixture("tiny-qwen3-f32.gguf");
    let mut c = gguf_rs::get_gguf_container_array_size(path.to_str().unwrap(), u64::MAX).unwrap();
    let model = c.decode().unwrap();
    let tok = Tokenizer::from_vocab(&VocabSpec::from_metadata(model.metadata()).unwrap()).unwrap();
    let json = Tokenizer::from_file(&fixture("tiny-qwen3/tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 576);
    let mut eog = tok.eog_ids().to_vec();
    eog.sort();
    assert_eq!(eog, vec![512, 514]);

    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-qwen3/reference.json")).unwrap())
            .unwrap();
    let ids =
        |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let chat = reference["chat_text"].as_str().unwrap();
    let want = ids(&reference["prompts"]["chatml"]["ids"]);
    assert_eq!(tok.encode(chat).unwrap(), want);
    assert_eq!(json.encode(chat).unwrap(), want);
    assert_eq!(tok.decode(&want, false).unwrap(), chat);

    let mut saw_padding = false;
    for (_, p) in reference["prompts"].as_object().unwrap() {
        let greedy = ids(&p["greedy_24"]);
        saw_padding |= greedy.iter().any(|&id| id >= 538);
        check_stream(&tok, &greedy, false);
        check_stream(&tok, &greedy, true);
        // Padding ids decode to nothing, so the text equals that of the real tokens alone.
        let real: Vec<u32> = greedy.iter().copied().filter(|&id| id < 538).collect();
        assert_eq!(tok.decode(&greedy, false).unwrap(), json.decode(&real, false).unwrap());
    }
    assert!(saw_padding, "the reference no longer samples padding ids; this check lost its point");
}
