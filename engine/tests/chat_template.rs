//! Chat-template rendering must match Hugging Face transformers byte for byte.
//!
//! Expected strings come from transformers itself (engine/tests/data/qwen3_chat_goldens.json, made by
//! scripts/dev/gen-chat-goldens.py), from the llama.cpp goldens of the real Qwen2.5-Coder model, and from
//! the tiny fixture's reference.json.

use std::path::{Path, PathBuf};

use quire_engine::chat::{ChatTemplate, Message, RenderOptions, CHATML_TEMPLATE};
use serde_json::Value as Json;

const GOLDENS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/qwen3_chat_goldens.json");
const QWEN25_DEFAULT_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

fn fixtures() -> PathBuf {
    std::env::var_os("QUIRE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures").into())
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tokenizer_config_template(dir: &str) -> String {
    let cfg = read_json(&fixtures().join(dir).join("tokenizer_config.json"));
    cfg["chat_template"].as_str().expect("chat_template").to_string()
}

fn gguf_chat_template(path: &Path) -> String {
    let mut container = gguf_rs::get_gguf_container(path.to_str().unwrap()).expect("open gguf");
    let model = container.decode().expect("decode gguf");
    model.metadata()["tokenizer.chat_template"]
        .as_str()
        .expect("tokenizer.chat_template is a string")
        .to_string()
}

fn real_model_path() -> PathBuf {
    std::env::var_os("QUIRE_REAL_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    })
}

/// Some(path) if the real model is there; None (after printing SKIP) if not and that is allowed.
fn real_model_or_skip(test: &str) -> Option<PathBuf> {
    let path = real_model_path();
    if path.exists() {
        return Some(path);
    }
    if std::env::var("QUIRE_REQUIRE_REAL").as_deref() == Ok("1") {
        panic!("{test}: real model {} not found and QUIRE_REQUIRE_REAL=1", path.display());
    }
    println!("SKIP {test}: real model {} not found", path.display());
    None
}

/// serde_json keeps object key order only with its `preserve_order` feature.
fn serde_json_preserves_order() -> bool {
    let v: Json = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
    v.as_object().unwrap().keys().next().map(String::as_str) == Some("b")
}

/// Show where two renderings first differ.
fn first_difference(got: &str, want: &str) -> String {
    let pos = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(got.len().min(want.len()));
    let ctx = |s: &str| {
        let mut start = pos.saturating_sub(40).min(s.len());
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (pos + 40).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!(
        "first difference at byte {pos}: got {} want {} (lengths {} vs {})",
        ctx(got),
        ctx(want),
        got.len(),
        want.len()
    )
}

fn golden_template(goldens: &Json, name: &str) -> ChatTemplate {
    match name {
        "qwen3" => ChatTemplate::new(Some(&tokenizer_config_template("qwen3-tokenizer")), "", "<|im_end|>"),
        "tiny-qwen3" => ChatTemplate::new(Some(&tokenizer_config_template("tiny-qwen3")), "", "<|im_end|>"),
        other => {
            let t = &goldens["templates"][other];
            ChatTemplate::new(
                Some(t["source"].as_str().expect("template source")),
                t["bos_token"].as_str().unwrap_or(""),
                t["eos_token"].as_str().unwrap_or("<|im_end|>"),
            )
        }
    }
    .unwrap_or_else(|e| panic!("template {name}: {e:#}"))
}

fn case_inputs(case: &Json) -> (Vec<Message>, RenderOptions) {
    let messages: Vec<Message> =
        serde_json::from_value(case["messages"].clone()).expect("messages deserialize");
    let opts = RenderOptions {
        add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        enable_thinking: case["enable_thinking"].as_bool(),
        tools: (!case["tools"].is_null()).then(|| case["tools"].clone()),
    };
    (messages, opts)
}

#[test]
fn goldens_from_transformers() {
    let goldens = read_json(Path::new(GOLDENS));
    let ordered = serde_json_preserves_order();
    let mut templates = std::collections::HashMap::new();
    let (mut ran, mut skipped) = (0, Vec::new());
    let mut failures = Vec::new();
    let mut per_template = std::collections::BTreeMap::<String, usize>::new();
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tname = case["template"].as_str().unwrap();
        if case["needs_preserve_order"].as_bool() == Some(true) && !ordered {
            skipped.push(format!("{tname}/{name}"));
            continue;
        }
        let tmpl = templates.entry(tname.to_string()).or_insert_with(|| golden_template(&goldens, tname));
        let (messages, opts) = case_inputs(case);
        let want = case["expected"].as_str().unwrap();
        match tmpl.render(&messages, &opts) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{tname}/{name}: {}", first_difference(&got, want))),
            Err(e) => failures.push(format!("{tname}/{name}: error {e:#}")),
        }
        ran += 1;
        *per_template.entry(tname.to_string()).or_default() += 1;
    }
    println!("ran {ran} golden cases {per_template:?}");
    if !skipped.is_empty() {
        println!(
            "SKIP {} key-order cases (serde_json built without preserve_order): {skipped:?}",
            skipped.len()
        );
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(ran >= 50, "only {ran} golden cases ran");
    for t in ["qwen3", "tiny-qwen3", "custom:tojson_args", "custom:python_methods"] {
        assert!(per_template.contains_key(t), "no cases for {t}");
    }
}

#[test]
fn qwen3_templates_agree_across_sources() {
    // The template in tokenizer_config.json, the tiny fixture's copy and the one llama.cpp's converter
    // wrote into the vocab GGUF are the same text, so the goldens cover all of them.
    let qwen3 = tokenizer_config_template("qwen3-tokenizer");
    assert_eq!(qwen3, tokenizer_config_template("tiny-qwen3"));
    assert_eq!(qwen3, gguf_chat_template(&fixtures().join("qwen3-tokenizer/qwen3-vocab.gguf")));
    assert_eq!(qwen3, gguf_chat_template(&fixtures().join("tiny-qwen3-q8_0.gguf")));
}

/// Split a rendered ChatML prompt back into (role, content) turns.
fn chatml_turns(text: &str) -> Vec<(String, String)> {
    text.split("<|im_start|>")
        .skip(1)
        .filter_map(|turn| {
            let (role, rest) = turn.split_once('\n')?;
            let content = rest.split_once("<|im_end|>")?.0;
            Some((role.to_string(), content.to_string()))
        })
        .collect()
}

#[test]
fn tiny_reference_chat_text_is_reproduced() {
    // reference.json's chat_text is the template's rendering of a system + user turn with the
    // generation prompt (checked with transformers by the golden generator, which also checked that
    // the `chatml` prompt ids are exactly this text tokenized).
    let reference = read_json(&fixtures().join("tiny-qwen3/reference.json"));
    let chat_text = reference["chat_text"].as_str().unwrap();
    let messages: Vec<Message> =
        chatml_turns(chat_text).into_iter().map(|(role, content)| Message::new(role, content)).collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].content, "Write a function that adds two numbers.\n写一个加法函数。");
    let tmpl = ChatTemplate::new(Some(&tokenizer_config_template("tiny-qwen3")), "", "<|im_end|>").unwrap();
    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
    assert_eq!(tmpl.render(&messages, &opts).unwrap(), chat_text);

    let goldens = read_json(Path::new(GOLDENS));
    let check = &goldens["checks"]["tiny_reference_chat_text"];
    assert_eq!(check["template_renders_chat_text"], Json::Bool(true));
    assert_eq!(check["chatml_ids_are_chat_text_tokens"], Json::Bool(true));
}

#[test]
fn qwen25_real_model_template_reproduces_llamacpp_prompts() {
    let Some(model) = real_model_or_skip("qwen25_real_model_template_reproduces_llamacpp_prompts") else {
        return;
    };
    let source = gguf_chat_template(&model);
    // the goldens carry a copy of this template so its tool cases run without the model
    let goldens = read_json(Path::new(GOLDENS));
    assert_eq!(
        goldens["templates"]["qwen25"]["source"].as_str(),
        Some(source.as_str()),
        "the golden file's qwen25 template is not the model's"
    );
    let tmpl = ChatTemplate::new(Some(&source), "<|endoftext|>", "<|im_end|>").unwrap();
    assert!(!tmpl.is_fallback());
    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };

    let real = read_json(&fixtures().join("real/qwen25-coder-goldens.json"));
    let mut checked = 0;
    for (name, prompt) in real["prompts"].as_object().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        if !text.starts_with("<|im_start|>") {
            continue; // the raw completion prompt
        }
        let turns = chatml_turns(text);
        let user = turns
            .iter()
            .find(|(r, _)| r == "user")
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("{name}: no user turn"));
        let system = turns.iter().find(|(r, _)| r == "system").map(|(_, c)| c.clone()).unwrap();
        // the default system prompt must come from the template, not from us
        let mut messages = Vec::new();
        if system != QWEN25_DEFAULT_SYSTEM {
            messages.push(Message::system(system));
        }
        messages.push(Message::user(user));
        let got = tmpl.render(&messages, &opts).unwrap();
        assert_eq!(got, text, "{name}: {}", first_difference(&got, text));
        checked += 1;
    }
    assert_eq!(checked, 4, "expected 4 chat prompts in the Qwen2.5 goldens");

    // no system message → the template's default one
    let got = tmpl.render(&[Message::user("hi")], &opts).unwrap();
    assert_eq!(
        got,
        format!("<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    );
}

#[test]
fn chatml_fallback_without_template() {
    for source in [None, Some(""), Some("  \n")] {
        let tmpl = ChatTemplate::new(source, "", "<|im_end|>").unwrap();
        assert!(tmpl.is_fallback());
        assert_eq!(tmpl.source(), CHATML_TEMPLATE);
        let msgs = [
            Message::system("sys"),
            Message::user("hi\nthere"),
            Message::assistant("hello"),
            Message::user("再见"),
        ];
        let no_gen = tmpl.render(&msgs, &RenderOptions::default()).unwrap();
        let want = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi\nthere<|im_end|>\n\
                    <|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n再见<|im_end|>\n";
        assert_eq!(no_gen, want);
        let gen =
            tmpl.render(&msgs, &RenderOptions { add_generation_prompt: true, ..Default::default() }).unwrap();
        assert_eq!(gen, format!("{want}<|im_start|>assistant\n"));
    }
}

#[test]
fn template_errors_are_clear() {
    let opts = RenderOptions::default();
    let msgs = [Message::user("hi")];

    let e = ChatTemplate::new(Some("{% for m in messages %}{{ m.content }}"), "", "")
        .expect_err("unclosed for must not compile");
    let msg = format!("{e:#}");
    assert!(msg.contains("does not compile") && msg.contains("syntax error"), "{msg}");

    let e = ChatTemplate::new(Some("line one\n{{ messages[0] + }}"), "", "").unwrap_err();
    assert!(format!("{e:#}").contains(":2"), "line number missing: {e:#}");

    let tmpl = ChatTemplate::new(
        Some("{% if messages[0].role != 'system' %}{{ raise_exception('System message required!') }}{% endif %}ok"),
        "",
        "",
    )
    .unwrap();
    let e = tmpl.render(&msgs, &opts).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("System message required!"), "{msg}");
    assert!(tmpl.render(&[Message::system("s")], &opts).unwrap() == "ok");

    // the Mistral-style alternation check from the goldens
    let goldens = read_json(Path::new(GOLDENS));
    let alt = golden_template(&goldens, "custom:alternating_roles");
    let e = alt.render(&[Message::user("a"), Message::user("b")], &opts).unwrap_err();
    assert!(format!("{e:#}").contains("Conversation roles must alternate"), "{e:#}");

    // runtime errors: unknown filter, attribute of undefined, bad tojson arguments
    for (src, what) in [
        ("{{ messages | no_such_filter }}", "unknown filter"),
        ("{{ nothing.here }}", "undefined"),
        ("{{ messages | tojson(indent=[1]) }}", "indent"),
        ("{{ messages | tojson(bogus=1) }}", "bogus"),
        ("{{ messages | tojson(separators=(',',)) }}", "separators"),
        ("{{ nothing | tojson }}", "not JSON serializable"),
    ] {
        match ChatTemplate::new(Some(src), "", "").and_then(|t| t.render(&msgs, &opts)) {
            Ok(s) => panic!("{src}: expected an error, rendered {s:?}"),
            Err(e) => assert!(format!("{e:#}").contains(what), "{src}: {e:#}"),
        }
    }

    // an empty conversation is refused (transformers refuses too)
    let tmpl = ChatTemplate::new(None, "", "").unwrap();
    assert!(tmpl.render(&[], &opts).is_err());
}

#[test]
fn openai_style_messages_deserialize() {
    let msgs: Vec<Message> = serde_json::from_value(serde_json::json!([
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_9", "content": "42"},
        {"role": "assistant", "content": "done", "reasoning": "thought"}
    ]))
    .unwrap();
    assert_eq!(msgs[0].content, "part one\npart two");
    assert_eq!(msgs[1].content, "");
    let call = &msgs[1].tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.kind, "function");
    assert_eq!(call.function.arguments, Json::String("{\"x\": 1}".into()));
    assert_eq!(msgs[2].tool_call_id.as_deref(), Some("call_9"));
    assert_eq!(msgs[3].reasoning_content.as_deref(), Some("thought"));

    // and round-trip without inventing fields
    let back = serde_json::to_value(&msgs[0]).unwrap();
    assert_eq!(back, serde_json::json!({"role": "user", "content": "part one\npart two"}));

    let bad: Result<Message, _> =
        serde_json::from_value(serde_json::json!({"role": "user", "content": [{"type": "image_url"}]}));
    assert!(bad.is_err());

    // Qwen3 renders the string arguments verbatim and the tool turn as a <tool_response>
    let tmpl = ChatTemplate::new(Some(&tokenizer_config_template("qwen3-tokenizer")), "", "").unwrap();
    let out = tmpl.render(&msgs[1..3], &RenderOptions::default()).unwrap();
    assert_eq!(
        out,
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n"
    );
}

#[test]
fn strftime_now_and_special_tokens() {
    let tmpl = ChatTemplate::new(
        Some("{{ bos_token }}{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}{{ eos_token }}"),
        "<s>",
        "</s>",
    )
    .unwrap();
    let out = tmpl.render(&[Message::user("x")], &RenderOptions::default()).unwrap();
    let inner = out.strip_prefix("<s>").unwrap().strip_suffix("</s>").unwrap();
    let (iso, human) = inner.split_once('|').unwrap();
    assert_eq!(iso.len(), 10, "{iso}");
    let year: i32 = iso[..4].parse().unwrap();
    assert!((2024..2200).contains(&year), "{iso}");
    assert!(human.ends_with(&iso[..4]), "{human}");
}

#[test]
fn chat_template_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChatTemplate>();
}
