//! Structured output on the real Qwen2.5-Coder-1.5B model: twelve content-production JSON Schemas
//! (`tests/data/content-schemas.json`: length limits, a slug `pattern`, `$ref`, a recursive `$ref`, enums,
//! nullable fields, non-ASCII property names, formats), sampled at temperature 0.7 four at a time: every
//! reply finishes and validates. Skipped without the model unless QUIRE_REQUIRE_REAL=1.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{Engine, FinishReason, GenerateParams};
use quire_engine::grammar::GrammarSpec;
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{Scheduler, SchedulerConfig};
use serde_json::Value;

#[test]
fn content_schemas_give_valid_json() {
    let Some(path) = real_model() else { return };
    let engine = Arc::new(Engine::load(&path).unwrap());
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("data/content-schemas.json")).expect("the schema list is JSON");
    assert!(cases.len() >= 10);
    let sched = Scheduler::new(
        engine.clone(),
        SchedulerConfig { n_slots: 4, n_ctx: 1024, queue_capacity: cases.len(), n_batch: 256 },
    )
    .unwrap();
    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
    let rxs: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let messages = [
                Message::system("You write content for an online shop. Reply with JSON only."),
                Message::user(case["prompt"].as_str().unwrap()),
            ];
            let prompt = engine.chat_tokens(&messages, &opts).unwrap();
            let spec = GrammarSpec::JsonSchema(case["schema"].clone());
            let params = GenerateParams {
                max_tokens: 600,
                sampler: SamplerConfig { seed: Some(i as u64), ..SamplerConfig::default() }, // 0.7, top-k 20, top-p 0.8
                constraint: Some(engine.grammars().unwrap().compile(&spec).unwrap()),
                ..Default::default()
            };
            let (req, rx) = channel_request(prompt, params, None, Default::default());
            sched.submit(req).unwrap();
            rx
        })
        .collect();
    for (case, rx) in cases.iter().zip(rxs) {
        let name = case["name"].as_str().unwrap();
        let (text, usage) = collect_events(rx, Duration::from_secs(600), name);
        eprintln!("{name} ({} tokens): {text}", usage.completion_tokens);
        assert_eq!(usage.finish, FinishReason::Stop, "{name}: did not finish: {text}");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {text}"));
        let validator = jsonschema::options().should_validate_formats(true).build(&case["schema"]).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {text} is invalid: {errors:?}");
    }
}
