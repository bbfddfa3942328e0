//! The real Qwen2.5-Coder-1.5B-Instruct Q4_K_M model (and the 0.5B, mostly Q5_0) against llama.cpp's
//! goldens: tokenization, top-1 at the end of each prompt, greedy continuations and perplexity. Skipped when the model is absent, unless
//! QUIRE_REQUIRE_REAL=1 (scripts/test.sh fetches it and sets that).

mod common;

use std::ops::ControlFlow;

use common::*;
use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{Engine, GenerateParams};
use quire_engine::kv_cache::KvType;
use quire_engine::ops::argmax;
use quire_engine::sampler::SamplerConfig;

#[test]
fn goldens_match_llamacpp() {
    let Some(path) = real_model() else { return };
    let engine = Engine::load(&path).unwrap();
    let greedy_agree = check_goldens(&engine, "real/qwen25-coder-goldens.json");
    assert!(greedy_agree >= 4, "only {greedy_agree}/5 prompts reproduce llama.cpp's first 32 greedy tokens");
}

/// llama.cpp's perplexity of the 0.5B model with its own q8_0 KV cache on the same text: the fixtures'
/// llama.cpp (0c1e57098, the llama-cpp-python 0.3.36 vendor, AVX-512 build, built by
/// `scripts/bench-vs-llamacpp.sh`), `llama-perplexity -c 512 -t 2 -ctk q8_0 -ctv q8_0 -fa on`, 2026-12-04:
/// 5.1516 ± 0.27364 (its f16 cache: 5.1275, the fixture's figure). The 8-bit rounding of keys and values
/// itself costs +0.47 % there.
const LLAMACPP_0_5B_Q8_0_KV_PPL: f64 = 5.1516;

/// The real 0.5B model, whose matrices are mostly Q5_0 (with Q8_0, Q4_K and Q6_K): llama.cpp's goldens and
/// its perplexity (5.1275 on the same text), with the f16 and the q8_0 KV cache.
#[test]
fn q5_0_model_matches_llamacpp() {
    let Some(path) = real_draft_model() else { return };
    let mut engine = Engine::load(&path).unwrap();
    let f16_ppl =
        read_json("real/qwen25-coder-0.5b-perplexity.json")["perplexity.txt"]["ppl"].as_f64().unwrap();
    // llama.cpp's goldens come from its f16 cache. A q8_0 cache rounds every key and value to 8 bits, and
    // this small model's greedy paths then part from llama.cpp's in three of the five prompts (at tokens 8,
    // 9 and 20; with the 1.5B model in one), so with q8_0 the prompt ends (top-1 and its logit) are held to
    // llama.cpp's f16 goldens, the greedy agreement to what was measured, and the perplexity to llama.cpp's
    // with the same cache type.
    for (kv_type, min_agree, want) in
        [(KvType::F16, 4, f16_ppl), (KvType::Q8_0, 2, LLAMACPP_0_5B_Q8_0_KV_PPL)]
    {
        engine.kv_type = kv_type;
        let greedy_agree = check_goldens(&engine, "real/qwen25-coder-0.5b-goldens.json");
        assert!(
            greedy_agree >= min_agree,
            "{kv_type} KV: only {greedy_agree}/5 prompts reproduce llama.cpp's first 32 greedy tokens"
        );
        let ppl = perplexity(&engine);
        let rel = (ppl - want).abs() / want;
        eprintln!(
            "0.5B, {kv_type} KV: PPL = {ppl:.4} (llama.cpp with {kv_type} KV {want}, {:.3}% off; f16 {f16_ppl})",
            rel * 100.0
        );
        assert!(rel <= 0.005, "{kv_type} KV: perplexity {ppl} is more than 0.5% from llama.cpp's {want}");
    }
}

/// Tokenization, top-1 and its logit at the end of each golden prompt must match; returns how many of the
/// prompts reproduce llama.cpp's first 32 greedy tokens. The top logit is held to 0.5 of llama.cpp's with
/// the f16 cache it used (same file, same quantized activations) and to 1.0 with a q8_0 cache, which rounds
/// keys and values to 8 bits (measured: 0.87 on the 0.5B model's raw completion prompt).
fn check_goldens(engine: &Engine, goldens: &str) -> usize {
    let logit_tolerance = if engine.kv_type == KvType::Q8_0 { 1.0 } else { 0.5 };
    let goldens = read_json(goldens);
    let prompts = goldens["prompts"].as_object().unwrap();
    let mut greedy_agree = 0;
    for (name, p) in prompts {
        let want_ids = ids(&p["ids"]);
        let text = p["text"].as_str().unwrap();
        assert_eq!(engine.tokenizer.encode(text).unwrap(), want_ids, "{name}: tokenization differs");

        let mut session = engine.session(512).unwrap();
        let (logits, _) = session.prefill(&want_ids).unwrap();
        let top1 = p["top10_last"][0][0].as_u64().unwrap() as usize;
        assert_eq!(argmax(&logits), top1, "{name}: top-1 at the last prompt position differs from llama.cpp");
        // our logit for llama.cpp's top token is close to theirs
        let their = p["top10_last"][0][1].as_f64().unwrap() as f32;
        assert!(
            (logits[top1] - their).abs() < logit_tolerance,
            "{name}: top logit {} vs llama.cpp {their}",
            logits[top1]
        );

        session.reset();
        let params = GenerateParams {
            max_tokens: 32,
            sampler: SamplerConfig::greedy(),
            stop: vec![],
            ignore_eos: true,
            ..Default::default()
        };
        let stats = session.generate(&want_ids, &params, |_| ControlFlow::Continue(())).unwrap();
        let want = &ids(&p["greedy_64"])[..32];
        let agree = stats.tokens.iter().zip(want).take_while(|(a, b)| a == b).count();
        eprintln!("{name}: first {agree}/32 greedy tokens equal llama.cpp's");
        if agree == 32 {
            greedy_agree += 1;
        }
    }
    greedy_agree
}

/// The q8_0 KV cache (half of f16's memory) on the real model: same tokens, same top-1 and top logit as
/// llama.cpp (which used an f16 cache), 4 of 5 greedy continuations unchanged as with f16 (measured: 4/5,
/// the fifth parts at token 29), perplexity within 1% (measured +0.29%).
#[test]
fn q8_0_kv_cache_stays_close_to_llamacpp() {
    let Some(path) = real_model() else { return };
    let mut engine = Engine::load(&path).unwrap();
    engine.kv_type = KvType::Q8_0;
    let greedy_agree = check_goldens(&engine, "real/qwen25-coder-goldens.json");
    assert!(greedy_agree >= 4, "only {greedy_agree}/5 prompts reproduce llama.cpp's first 32 greedy tokens");
    let ppl = perplexity(&engine);
    let want = read_json("real/qwen25-coder-perplexity.json")["ppl"].as_f64().unwrap();
    let rel = (ppl - want).abs() / want;
    eprintln!("q8_0 KV: PPL = {ppl:.4} (llama.cpp with f16 KV {want}, {:.3}% off)", rel * 100.0);
    assert!(rel <= 0.01, "perplexity {ppl} with a q8_0 KV cache is more than 1% from llama.cpp's {want}");
}

fn perplexity(engine: &Engine) -> f64 {
    let text = std::fs::read_to_string(fixture("real/perplexity.txt")).unwrap();
    let tokens = engine.tokenizer.encode(&text).unwrap();
    quire_engine::perplexity::perplexity(engine, &tokens, 512, 128, |_| {}).unwrap()
}

#[test]
fn chat_template_renders_the_golden_prompt() {
    let Some(path) = real_model() else { return };
    let engine = Engine::load(&path).unwrap();
    let goldens = read_json("real/qwen25-coder-goldens.json");
    let p = &goldens["prompts"]["fib_code"];
    let messages =
        [Message::user("Write a Python function that returns the n-th Fibonacci number, with a docstring.")];
    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
    let tokens = engine.chat_tokens(&messages, &opts).unwrap();
    assert_eq!(tokens, ids(&p["ids"]));
}

#[test]
fn perplexity_matches_llamacpp() {
    let Some(path) = real_model() else { return };
    let engine = Engine::load(&path).unwrap();
    let reference = read_json("real/qwen25-coder-perplexity.json");
    let text = std::fs::read_to_string(fixture("real/perplexity.txt")).unwrap();
    let tokens = engine.tokenizer.encode(&text).unwrap();
    let mut running = Vec::new();
    let ppl = quire_engine::perplexity::perplexity(&engine, &tokens, 512, 128, |c| {
        eprintln!("[{}/{}] {:.4}", c.index + 1, c.n_chunks, c.ppl);
        running.push(c.ppl);
    })
    .unwrap();
    let want = reference["ppl"].as_f64().unwrap();
    assert_eq!(running.len(), reference["chunks"].as_u64().unwrap() as usize);
    let rel = (ppl - want).abs() / want;
    eprintln!("PPL = {ppl:.4} (llama.cpp {want}, {:.3}% off)", rel * 100.0);
    assert!(rel <= 0.005, "perplexity {ppl} is more than 0.5% from llama.cpp's {want}");
}
