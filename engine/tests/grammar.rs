//! Constrained decoding on the tiny model: random JSON Schemas sampled hot always give valid JSON and never a
//! token the grammar forbids; json_object, regex and Lark grammars; bad grammars are errors; the cache; batch
//! invariance; `max_tokens` inside the structure; reasoning before a constrained answer.

mod common;

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{fixture, session_text};
use quire_engine::generate::{Engine, FinishReason, GenerateParams, Generation, Thinking};
use quire_engine::grammar::GrammarSpec;
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{Event, Request, Scheduler, SchedulerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn engine() -> Engine {
    Engine::load(fixture("tiny-qwen3-q4_0.gguf")).unwrap()
}

fn hot(seed: u64, max_tokens: usize) -> GenerateParams {
    let sampler =
        SamplerConfig { temperature: 1.5, top_k: 0, top_p: 1.0, seed: Some(seed), ..Default::default() };
    GenerateParams { max_tokens, sampler, ..Default::default() }
}

fn prompt(engine: &Engine, i: u64) -> Vec<u32> {
    engine.tokenizer.encode(&format!("Describe item {i} as JSON:")).unwrap()
}

/// Generate with `spec` from `prompt`; returns the text, the tokens and why it stopped.
fn run(
    engine: &Engine,
    spec: &GrammarSpec,
    p: GenerateParams,
    prompt: &[u32],
) -> (String, Vec<u32>, FinishReason) {
    let constraint = engine.grammars().unwrap().compile(spec).unwrap();
    let p = GenerateParams { constraint: Some(constraint), ..p };
    let (text, stats) = session_text(&mut engine.session(1024).unwrap(), prompt, &p);
    (text, stats.tokens, stats.finish)
}

/// Replays `tokens` through a fresh constraint: each must have been allowed where it was sampled.
fn assert_all_allowed(engine: &Engine, spec: &GrammarSpec, tokens: &[u32]) {
    let mut c = engine.grammars().unwrap().compile(spec).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        assert!(c.allows(t).unwrap(), "token {i} ({t}) was not allowed by the grammar");
        if !engine.tokenizer.is_eog(t) {
            c.commit(t).unwrap();
        }
    }
}

/// A small random JSON Schema: objects, arrays with item bounds, strings with length bounds and patterns,
/// bounded numbers, enums, consts, anyOf, nullable types and `$ref` into `$defs`. Every part is bounded so
/// a hot random model can always finish it.
fn random_schema(rng: &mut StdRng, depth: u32, defs: &mut serde_json::Map<String, Value>) -> Value {
    let leaf = depth >= 2;
    match rng.random_range(0..if leaf { 8 } else { 12 }) {
        0 => {
            let min = rng.random_range(0..3);
            json!({"type": "string", "minLength": min, "maxLength": min + rng.random_range(0..8)})
        }
        1 => {
            let patterns = [
                "^[a-z]{1,6}$",
                "^[0-9]{3}-[0-9]{2}$",
                "^(yes|no|maybe)$",
                "^[A-Z][a-z]{0,4}( [A-Z][a-z]{0,4})?$",
            ];
            json!({"type": "string", "pattern": patterns[rng.random_range(0..patterns.len())]})
        }
        2 => {
            let lo = rng.random_range(-50..50);
            json!({"type": "integer", "minimum": lo, "maximum": lo + rng.random_range(0..200)})
        }
        3 => json!({"type": "number", "minimum": 0, "maximum": 10}),
        4 => json!({"type": "boolean"}),
        5 => json!({"enum": ["red", "green", "blue", 7, null]}),
        6 => json!({"const": "fixed"}),
        7 => json!({"type": ["string", "null"], "maxLength": 5}),
        8 => {
            let min = rng.random_range(0..2);
            json!({
                "type": "array",
                "items": random_schema(rng, depth + 1, defs),
                "minItems": min,
                "maxItems": min + rng.random_range(0..3),
            })
        }
        9 => json!({"anyOf": [random_schema(rng, depth + 1, defs), random_schema(rng, depth + 1, defs)]}),
        10 => {
            let name = format!("d{}", defs.len());
            defs.insert(name.clone(), Value::Null); // reserved before the target adds its own
            let target = random_schema(rng, depth + 1, defs);
            defs.insert(name.clone(), target);
            json!({"$ref": format!("#/$defs/{name}")})
        }
        _ => {
            let n = rng.random_range(1..4);
            let mut props = serde_json::Map::new();
            let mut required = Vec::new();
            for k in 0..n {
                let key = ["name", "价格", "count", "tags"][k];
                props.insert(key.to_string(), random_schema(rng, depth + 1, defs));
                if rng.random_bool(0.7) {
                    required.push(key);
                }
            }
            json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
        }
    }
}

#[test]
fn random_schemas_sampled_hot_always_validate() {
    let engine = engine();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for case in 0..100u64 {
        let mut defs = serde_json::Map::new();
        let mut schema = random_schema(&mut rng, 0, &mut defs);
        if !defs.is_empty() {
            // `$defs` beside a `$ref` at the top level would be shadowed by it: wrap the root in an allOf.
            schema = json!({"allOf": [schema], "$defs": defs});
        }
        let spec = GrammarSpec::JsonSchema(schema.clone());
        let (text, tokens, finish) = run(&engine, &spec, hot(case, 400), &prompt(&engine, case));
        assert_eq!(finish, FinishReason::Stop, "case {case}: did not finish: {text:?}\nschema {schema}");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("case {case}: not JSON ({e}): {text:?}\nschema {schema}"));
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "case {case}: {text} is invalid: {errors:?}\nschema {schema}");
        assert_all_allowed(&engine, &spec, &tokens);
    }
}

#[test]
fn json_object_regex_and_lark() {
    let engine = engine();
    for seed in 0..4 {
        let (text, _, finish) =
            run(&engine, &GrammarSpec::JsonObject, hot(seed, 300), &prompt(&engine, seed));
        if finish == FinishReason::Stop {
            assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{text:?}");
        } else {
            // free-form objects can run long at temperature 1.5; what came out is still a JSON prefix
            assert!(text.starts_with('{'), "{text:?}");
        }

        let rx = GrammarSpec::Regex("[a-z]{3}-[0-9]{2,4}".into());
        let (text, tokens, finish) = run(&engine, &rx, hot(seed, 50), &prompt(&engine, seed));
        assert_eq!(finish, FinishReason::Stop);
        let re = regex_lite(&text);
        assert!(re, "{text:?} does not match");
        assert_all_allowed(&engine, &rx, &tokens);

        let lark = GrammarSpec::Lark(
            "start: answer \" because \" reason\nanswer: \"yes\" | \"no\"\nreason: /[a-z]{1,8}/\n".into(),
        );
        let (text, _, finish) = run(&engine, &lark, hot(seed, 50), &prompt(&engine, seed));
        assert_eq!(finish, FinishReason::Stop);
        let (answer, reason) = text.split_once(" because ").unwrap_or_else(|| panic!("{text:?}"));
        assert!(answer == "yes" || answer == "no", "{text:?}");
        assert!(
            (1..=8).contains(&reason.len()) && reason.bytes().all(|b| b.is_ascii_lowercase()),
            "{text:?}"
        );
    }
}

/// `[a-z]{3}-[0-9]{2,4}` checked by hand (the engine's tests carry no regex engine of their own).
fn regex_lite(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 6
        && b.len() <= 8
        && b[..3].iter().all(u8::is_ascii_lowercase)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_digit)
}

#[test]
fn bad_grammars_are_errors_that_say_why() {
    let engine = engine();
    let g = engine.grammars().unwrap();
    let cases = [
        (GrammarSpec::JsonSchema(json!({"type": "strang"})), "strang"),
        (GrammarSpec::JsonSchema(json!({"type": "string", "minLength": 5, "maxLength": 2})), ""),
        (GrammarSpec::JsonSchema(json!({"$ref": "#/$defs/missing"})), "missing"),
        (GrammarSpec::JsonSchema(json!([1, 2])), "array"),
        (GrammarSpec::JsonSchema(json!({"type": "array", "uniqueItems": true})), "uniqueItems"),
        (
            GrammarSpec::JsonSchema(json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})),
            "no text",
        ),
        (GrammarSpec::Lark("start: \"a\" (\n".into()), ""),
        (GrammarSpec::Lark("start: undefined_rule\n".into()), "undefined_rule"),
        (GrammarSpec::Lark("   ".into()), "empty"),
        (GrammarSpec::Regex("[a-".into()), ""),
    ];
    for (spec, needle) in cases {
        let err = match g.compile(&spec) {
            Ok(_) => panic!("{spec:?} compiled"),
            Err(e) => format!("{e:#}"),
        };
        assert!(!err.is_empty() && err.contains(needle), "{spec:?}: {err}");
    }
}

#[test]
fn compiled_grammars_are_cached() {
    let engine = engine();
    let g = engine.grammars().unwrap();
    let spec = GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"type": "integer"}}}));
    let before = g.cached();
    g.compile(&spec).unwrap();
    g.compile(&spec).unwrap();
    assert_eq!(g.cached(), before + 1);
    g.compile(&GrammarSpec::Regex("x+".into())).unwrap();
    assert_eq!(g.cached(), before + 2);
}

#[test]
fn a_constrained_sequence_gives_the_same_tokens_in_a_batch_as_alone() {
    let engine = Arc::new(engine());
    let spec = GrammarSpec::JsonSchema(json!({
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 12}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["title", "n"],
    }));
    let constrained = |seed| GenerateParams {
        constraint: Some(engine.grammars().unwrap().compile(&spec).unwrap()),
        ..hot(seed, 60)
    };
    let solo: Vec<String> = (0..2).map(|s| run(&engine, &spec, hot(s, 60), &prompt(&engine, s)).0).collect();

    let sched = Scheduler::new(
        engine.clone(),
        SchedulerConfig { n_slots: 4, n_ctx: 512, queue_capacity: 8, n_batch: 16 },
    )
    .unwrap();
    let submit = |p: Vec<u32>, params| {
        let (tx, rx) = mpsc::channel();
        let on_event =
            Box::new(
                move |e| if tx.send(e).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) },
            );
        sched
            .submit(Request { prompt: p, params, deadline: None, priority: Default::default(), on_event })
            .unwrap();
        rx
    };
    // the constrained ones share the batch with free ones of other lengths
    let rxs: Vec<_> = vec![
        submit(prompt(&engine, 0), constrained(0)),
        submit(prompt(&engine, 7), hot(7, 40)),
        submit(prompt(&engine, 1), constrained(1)),
        submit(prompt(&engine, 9), hot(9, 50)),
    ];
    let texts: Vec<String> = rxs
        .into_iter()
        .map(|rx| {
            let mut text = String::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
                    Event::Text(t) => text.push_str(&t),
                    Event::Logprob(_) => {}
                    Event::Done(_) => return text,
                    Event::Failed(e) => panic!("{e}"),
                }
            }
        })
        .collect();
    assert_eq!(texts[0], solo[0]);
    assert_eq!(texts[2], solo[1]);
}

#[test]
fn max_tokens_inside_the_structure_is_length_with_the_partial_text() {
    let engine = engine();
    let spec = GrammarSpec::JsonSchema(
        json!({"type": "object", "properties": {"long": {"type": "string", "minLength": 40}}, "required": ["long"]}),
    );
    let (text, tokens, finish) = run(&engine, &spec, hot(3, 5), &prompt(&engine, 3));
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(tokens.len(), 5);
    assert!(text.starts_with("{\"long\": \"") || "{\"long\": \"".starts_with(&text), "{text:?}");
}

/// Logits that make `token` the only likely choice.
fn peaked(vocab: usize, token: u32) -> Vec<f32> {
    let mut l = vec![0.0; vocab];
    l[token as usize] = 30.0;
    l
}

#[test]
fn reasoning_is_free_and_the_constraint_starts_after_it() {
    let engine = engine();
    let tok = &engine.tokenizer;
    let vocab = engine.model.config.vocab_size;
    let open = tok.token_to_id("<think>").unwrap();
    let close = tok.token_to_id("</think>").unwrap();
    let x = tok.encode("x").unwrap()[0];
    let brace = tok.encode("{").unwrap()[0];
    let spec = GrammarSpec::JsonSchema(json!({"type": "object"}));
    let params = |started| GenerateParams {
        sampler: SamplerConfig::greedy(),
        constraint: Some(engine.grammars().unwrap().compile(&spec).unwrap()),
        thinking: Some(Thinking { open, close, started }),
        max_tokens: 50,
        ..Default::default()
    };

    // The model opens a block: inside it anything goes (an `x` the grammar would forbid), except the end
    // of generation; after `</think>` the grammar applies (`x` is masked, `{` is taken).
    let p = params(false);
    let mut gen = Generation::new(tok, &p);
    let mut ctx = vec![];
    let step = |gen: &mut Generation, logits: Vec<f32>, ctx: &mut Vec<u32>| {
        let mut l = logits;
        let s = gen.accept(&mut l, ctx, 100).unwrap();
        ctx.push(s.token);
        s.token
    };
    assert_eq!(
        step(&mut gen, peaked(vocab, open), &mut ctx),
        open,
        "the grammar lets the model open a block"
    );
    assert_eq!(step(&mut gen, peaked(vocab, x), &mut ctx), x, "reasoning is free");
    let eos = tok.eog_ids()[0];
    assert_ne!(
        step(&mut gen, peaked(vocab, eos), &mut ctx),
        eos,
        "the reply cannot end inside its reasoning"
    );
    assert_eq!(step(&mut gen, peaked(vocab, close), &mut ctx), close);
    let mut l = peaked(vocab, x);
    l[brace as usize] = 10.0;
    assert_eq!(step(&mut gen, l, &mut ctx), brace, "after </think> the grammar applies");

    // Without a block the first token is already constrained; a prompt that opened the block starts free.
    let mut gen = Generation::new(tok, &p);
    let mut l = peaked(vocab, x);
    l[brace as usize] = 10.0;
    assert_eq!(step(&mut gen, l, &mut vec![]), brace);
    let mut gen = Generation::new(tok, &params(true));
    assert_eq!(step(&mut gen, peaked(vocab, x), &mut vec![]), x);
}

#[test]
fn a_lazy_constraint_applies_from_its_trigger_until_complete() {
    use quire_engine::generate::Trigger;
    use quire_engine::tools::{call_grammar, CallGrammar, Function};
    let engine = engine();
    let tok = &engine.tokenizer;
    let vocab = engine.model.config.vocab_size;
    let open = tok.token_to_id("<tool_call>").unwrap();
    let (think, unthink) = (tok.token_to_id("<think>").unwrap(), tok.token_to_id("</think>").unwrap());
    let x = tok.encode("x").unwrap()[0];
    let f = Function {
        name: "f".into(),
        parameters: json!({"type": "object", "properties": {"u": {"enum": ["a"]}}, "required": ["u"], "additionalProperties": false}),
    };
    let spec = call_grammar(&[f], CallGrammar::Body);
    let constraint = engine.grammars().unwrap().compile(&spec).unwrap();
    let params = |repeat: bool| GenerateParams {
        sampler: SamplerConfig::greedy(),
        constraint: Some(constraint.clone()),
        constraint_after: Some(Trigger { token: open, repeat }),
        thinking: Some(Thinking { open: think, close: unthink, started: false }),
        max_tokens: 200,
        ..Default::default()
    };
    for repeat in [true, false] {
        let p = params(repeat);
        let mut gen = Generation::new(tok, &p);
        let mut ctx = Vec::new();
        let mut step = |logits: Vec<f32>| {
            let mut l = logits;
            let s = gen.accept(&mut l, &ctx, 1000).unwrap();
            ctx.push(s.token);
            (s.token, s.text, s.done)
        };
        assert_eq!(step(peaked(vocab, x)).0, x, "free before the trigger");
        // a <tool_call> while reasoning is not a call
        assert_eq!(step(peaked(vocab, think)).0, think);
        assert_eq!(step(peaked(vocab, open)).0, open);
        assert_eq!(step(peaked(vocab, x)).0, x, "still free inside <think>");
        assert_eq!(step(peaked(vocab, unthink)).0, unthink);
        assert_eq!(step(peaked(vocab, open)).0, open);
        // inside the block only the grammar's tokens: even a peaked `x` is refused until `</tool_call>`
        let mut body = String::new();
        let mut done = false;
        for _ in 0..100 {
            let (_, text, d) = step(peaked(vocab, x));
            body += &text;
            done = d;
            if body.ends_with("</tool_call>") {
                break;
            }
        }
        assert_eq!(body, "\n{\"name\": \"f\", \"arguments\": {\"u\": \"a\"}}\n</tool_call>");
        if repeat {
            assert!(!done);
            assert_eq!(step(peaked(vocab, x)).0, x, "free again after the block");
        } else {
            assert!(done, "one call only: the reply ends with the block");
            assert_eq!(gen.finish, Some(FinishReason::Stop));
        }
    }
}

/// Tool parameters as pydantic writes them (`$defs` and `$ref`), two functions: every call the grammar lets
/// a hot model write parses, names one of them and matches that function's schema.
#[test]
fn tool_parameters_with_defs_and_refs_constrain_calls() {
    use quire_engine::tools::{call_grammar, CallGrammar, Function, ToolCallSplit};
    let engine = engine();
    let order = json!({
        "$defs": {
            "Item": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["sku", "qty"],
                "additionalProperties": false},
            "Speed": {"enum": ["standard", "express"]}
        },
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1, "maxItems": 2},
            "speed": {"$ref": "#/$defs/Speed"}},
        "required": ["items", "speed"], "additionalProperties": false
    });
    let lookup = json!({"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["id"], "additionalProperties": false});
    let functions = [
        Function { name: "place_order".into(), parameters: order.clone() },
        Function { name: "lookup".into(), parameters: lookup.clone() },
    ];
    let spec = call_grammar(&functions, CallGrammar::Reply { parallel: false });
    let validators = [
        ("place_order", jsonschema::validator_for(&order).unwrap()),
        ("lookup", jsonschema::validator_for(&lookup).unwrap()),
    ];
    let mut names = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let (text, tokens, finish) = run(&engine, &spec, hot(seed, 400), &prompt(&engine, seed));
        assert_eq!(finish, FinishReason::Stop, "seed {seed}: {text}");
        assert_all_allowed(&engine, &spec, &tokens);
        let (rest, calls) = ToolCallSplit::split(&text);
        assert!(rest.is_empty() && calls.len() == 1, "seed {seed}: {text}");
        for c in calls {
            let (_, v) = validators.iter().find(|(n, _)| *n == c.name).expect("a declared function");
            let args: Value = serde_json::from_str(&c.arguments).unwrap();
            assert!(v.is_valid(&args), "seed {seed}: {} {args}", c.name);
            names.insert(c.name);
        }
    }
    assert_eq!(names.len(), 2, "both functions were called over the seeds: {names:?}");
}
