//! The API end to end over HTTP with the tiny fixture model: every endpoint, the OpenAI shapes, streaming
//! equal to non-streaming, and every class of bad input answered with the right 4xx.

mod common;

use common::*;
use serde_json::{json, Value};

/// Concatenated content of a chat SSE stream, after checking its order: role delta first, content
/// deltas, one chunk with a finish_reason, optional usage chunk, then `[DONE]` last.
fn chat_stream_text(events: &[Sse], include_usage: bool) -> (String, String, Option<Value>) {
    let data: Vec<&Value> =
        events.iter().filter_map(|e| if let Sse::Data(v) = e { Some(v) } else { None }).collect();
    assert_eq!(events.last(), Some(&Sse::Done), "[DONE] must be last");
    assert_eq!(events.iter().filter(|e| **e == Sse::Done).count(), 1);
    let first = data[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "role delta first: {first}");
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (i, v) in data.iter().enumerate() {
        assert_eq!(v["id"], id, "one id per stream");
        assert_eq!(v["object"], "chat.completion.chunk");
        if include_usage {
            assert!(v.get("usage").is_some(), "usage key on every chunk when include_usage: {v}");
        } else {
            assert!(v.get("usage").is_none(), "{v}");
        }
        let choices = v["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert!(include_usage && i == data.len() - 1, "only the last chunk may have no choices: {v}");
            usage = Some(v["usage"].clone());
            continue;
        }
        assert!(finish.is_none(), "nothing but usage after the finish chunk: {v}");
        let c = &choices[0];
        if i > 0 {
            assert!(c["delta"].get("role").is_none(), "role only in the first chunk");
        }
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = c["finish_reason"].as_str() {
            assert_eq!(c["delta"], json!({}), "finish chunk has an empty delta");
            finish = Some(f.to_string());
        }
    }
    (text, finish.expect("a chunk with finish_reason"), usage)
}

fn completion_stream_text(events: &[Sse], include_usage: bool) -> (String, String, Option<Value>) {
    assert_eq!(events.last(), Some(&Sse::Done));
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for e in events {
        let Sse::Data(v) = e else { continue };
        assert_eq!(v["object"], "text_completion");
        let choices = v["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert!(include_usage);
            usage = Some(v["usage"].clone());
            continue;
        }
        assert!(finish.is_none());
        text.push_str(choices[0]["text"].as_str().unwrap());
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish.unwrap(), usage)
}

fn greedy_chat(extra: Value) -> Value {
    let mut v = json!({
        "model": "tiny-qwen3-q8_0",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write a haiku about CPUs."}],
        "temperature": 0,
        "max_tokens": 24,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_endpoints() {
    let s = TestServer::start(test_config()).await;
    let r = get(s.addr, "/health").await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    assert!(r.header("x-request-id").is_some());

    let r = get(s.addr, "/v1/models").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny-qwen3-q8_0");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["context_length"], 512);
    assert_eq!(get(s.addr, "/v1/models/tiny-qwen3-q8_0").await.status, 200);
    get(s.addr, "/v1/models/gpt-4").await.assert_error(404, Some("model"));

    let r = get(s.addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("<html"));

    // CORS is off by default: no Access-Control headers anywhere.
    assert!(r.header("access-control-allow-origin").is_none());

    let r = get(s.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    for needle in [
        "quire_model_loaded{model=\"tiny-qwen3-q8_0\"} 1",
        "quire_requests_total{endpoint=\"/health\",status=\"200\"} 1",
        "quire_requests_total{endpoint=\"/v1/models/{id}\",status=\"404\"} 1",
        "quire_request_duration_seconds_bucket{endpoint=\"/v1/models\",le=\"+Inf\"} 1",
        "quire_slots_total 2",
        "quire_slots_active 0",
        "quire_queue_depth 0",
        "quire_queue_capacity 16",
        "quire_kv_cache_capacity_tokens",
        "quire_prompt_tokens_total",
        "quire_generated_tokens_total",
        "quire_decode_tokens_per_second",
        "quire_prefill_tokens_per_second",
        "quire_weights_prepacking",
        "quire_spec_drafted_tokens_total",
        "quire_spec_accepted_tokens_total",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_equals_non_stream() {
    let s = TestServer::start(test_config()).await;
    let r = post_json(s.addr, "/v1/chat/completions", &greedy_chat(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "tiny-qwen3-q8_0");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    let finish = choice["finish_reason"].as_str().unwrap().to_string();
    assert!(finish == "stop" || finish == "length");
    let u = &v["usage"];
    let completion_tokens = u["completion_tokens"].as_u64().unwrap();
    assert!(u["prompt_tokens"].as_u64().unwrap() > 10);
    assert!((1..=24).contains(&completion_tokens), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + completion_tokens);
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    if finish == "length" {
        assert_eq!(completion_tokens, 24);
    }

    for include_usage in [false, true] {
        let mut req = greedy_chat(json!({"stream": true}));
        if include_usage {
            req["stream_options"] = json!({"include_usage": true});
        }
        let r = post_json(s.addr, "/v1/chat/completions", &req).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let events = parse_sse(&r.text());
        let (stext, sfinish, usage) = chat_stream_text(&events, include_usage);
        assert_eq!(stext, text, "streamed greedy text equals the non-streamed one");
        assert_eq!(sfinish, finish);
        if include_usage {
            let usage = usage.expect("usage chunk");
            assert_eq!(usage["completion_tokens"], u["completion_tokens"]);
            assert_eq!(usage["prompt_tokens"], u["prompt_tokens"]);
            assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
        } else {
            assert!(usage.is_none());
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stream_equals_non_stream() {
    let s = TestServer::start(test_config()).await;
    let req = json!({"model": "whatever-name", "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0, "ignore_eos": true});
    let r = post_json(s.addr, "/v1/completions", &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let r = post_json(s.addr, "/v1/completions", &sreq).await;
    assert_eq!(r.status, 200);
    let (stext, finish, usage) = completion_stream_text(&parse_sse(&r.text()), true);
    assert_eq!(stext, text);
    assert_eq!(finish, "length");
    assert_eq!(usage.unwrap()["completion_tokens"], 16);

    // A prompt given as token ids continues the same way as its text.
    let ids_resp = post_json(
        s.addr,
        "/v1/completions",
        &json!({"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(ids_resp.status, 200, "{}", ids_resp.text());
    assert_eq!(ids_resp.json()["usage"]["prompt_tokens"], 3);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_generate_and_stream() {
    let s = TestServer::start(test_config()).await;
    let req =
        json!({"prompt": "Tell me about Rust.", "max_new_tokens": 20, "temperature": 0, "ignore_eos": true});
    let r = post_json(s.addr, "/generate", &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let result = v["result"].as_str().unwrap().to_string();
    assert!(!result.is_empty());
    assert_eq!(v["usage"]["completion_tokens"], 20);
    assert_eq!(v["finish_reason"], "length");

    let r = post_json(s.addr, "/stream", &req).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), result, "POST /stream streams the same text");

    let r = get(s.addr, "/stream?prompt=Tell+me+about+Rust.&max_new_tokens=20&temperature=0&ignore_eos=true")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), result, "GET /stream too");

    // raw: the prompt goes to the model verbatim (a different prompt, so usually different tokens).
    let r = post_json(
        s.addr,
        "/generate",
        &json!({"prompt": "abc", "raw": true, "max_new_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["usage"]["prompt_tokens"].as_u64().unwrap(),
        3,
        "raw 'abc' is 3 byte tokens or fewer"
    );

    get(s.addr, "/stream").await.assert_error(400, Some("prompt"));
    get(s.addr, "/stream?prompt=x&temperature=hot").await.assert_error(400, Some("temperature"));
    get(s.addr, "/stream?prompt=%ZZ").await.assert_error(400, None);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_reuses_the_prefix() {
    let mut cfg = test_config();
    cfg.n_slots = 1;
    let s = TestServer::start(cfg).await;
    let turn1 = json!({"messages": [{"role": "user", "content": "Hello there, how are you today?"}], "temperature": 0, "max_tokens": 8});
    let r1 = post_json(s.addr, "/v1/chat/completions", &turn1).await.json();
    let answer = r1["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let turn2 = json!({"messages": [
        {"role": "user", "content": "Hello there, how are you today?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And tomorrow?"}], "temperature": 0, "max_tokens": 8});
    let r2 = post_json(s.addr, "/v1/chat/completions", &turn2).await.json();
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 10, "the second turn reuses the first turn's prompt KV: {}", r2["usage"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_and_the_server_keeps_working() {
    let mut cfg = test_config();
    cfg.ctx = Some(64);
    cfg.max_body_bytes = 4096;
    let s = TestServer::start(cfg).await;
    let a = s.addr;
    let user = json!([{"role": "user", "content": "hi"}]);
    let chat = |extra: Value| {
        let mut v = json!({"messages": user});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let json_ct = [("Content-Type", "application/json")];

    // Invalid JSON, wrong body types.
    request(a, "POST", "/v1/chat/completions", &json_ct, Some(b"{\"messages\": ["))
        .await
        .assert_error(400, None);
    request(a, "POST", "/v1/chat/completions", &json_ct, Some(b"")).await.assert_error(400, None);
    request(a, "POST", "/v1/chat/completions", &json_ct, Some(b"[1,2]")).await.assert_error(400, None);
    request(a, "POST", "/v1/chat/completions", &json_ct, Some(b"\xff\xfe{}")).await.assert_error(400, None);
    // Field errors name the field.
    let cases = [
        (json!({}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": "hello"}), "messages"),
        (json!({"messages": [{"role": "user", "content": 12}]}), "messages[0]"),
        (json!({"messages": [{"role": "pirate", "content": "arr"}]}), "messages[0].role"),
        (chat(json!({"n": 2})), "n"),
        (chat(json!({"temperature": -1})), "temperature"),
        (chat(json!({"temperature": 3})), "temperature"),
        (chat(json!({"temperature": "0.5"})), "temperature"),
        (chat(json!({"top_p": 0})), "top_p"),
        (chat(json!({"top_p": 1.01})), "top_p"),
        (chat(json!({"max_tokens": 0})), "max_tokens"),
        (chat(json!({"max_tokens": "ten"})), "max_tokens"),
        (chat(json!({"stream": 1})), "stream"),
        (chat(json!({"stop": [1, 2]})), "stop[0]"),
        (chat(json!({"frequency_penalty": 9})), "frequency_penalty"),
        (chat(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs"),
        (chat(json!({"top_logprobs": 3})), "top_logprobs"),
    ];
    for (body, param) in &cases {
        post_json(a, "/v1/chat/completions", body).await.assert_error(400, Some(param));
    }
    post_json(a, "/v1/completions", &json!({"prompt": 5})).await.assert_error(400, Some("prompt"));
    post_json(a, "/v1/completions", &json!({"prompt": [100000]})).await.assert_error(400, Some("prompt"));
    post_json(a, "/v1/completions", &json!({"prompt": "x", "n": 3})).await.assert_error(400, Some("n"));
    post_json(a, "/generate", &json!({"prompt": ["x"]})).await.assert_error(400, Some("prompt"));
    post_json(a, "/generate", &json!({"max_new_tokens": 3})).await.assert_error(400, Some("prompt"));

    // Prompt longer than the 64-token context.
    let long = "lorem ipsum dolor sit amet ".repeat(40);
    let v = post_json(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": long}]}))
        .await
        .assert_error(400, Some("messages"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let v = post_json(a, "/v1/completions", &json!({"prompt": long})).await.assert_error(400, Some("prompt"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    // Body over --max-body: declared by Content-Length (sent in full, so the reply is not lost to a reset),
    // and chunked without a length.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(5000));
    request(a, "POST", "/v1/completions", &json_ct, Some(big.as_bytes())).await.assert_error(413, None);
    let chunk = "x".repeat(3000);
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    raw(a, chunked.as_bytes()).await.assert_error(413, None);
    // A huge declared length is refused without reading anything.
    let head =
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n";
    raw(a, head.as_bytes()).await.assert_error(413, None);

    // Unknown routes and wrong methods.
    get(a, "/v2/everything").await.assert_error(404, None);
    let r = get(a, "/v1/chat/completions").await;
    r.assert_error(405, None);
    assert_eq!(r.header("allow"), Some("POST"));

    // Not HTTP at all: hyper answers 400 and closes; the server lives on.
    let r = raw(a, b"HELLO WORLD\r\n\r\n").await;
    assert_eq!(r.status, 400);

    // Unknown model names are served (documented choice).
    let r =
        post_json(a, "/v1/chat/completions", &chat(json!({"model": "gpt-4o-mini", "max_tokens": 2}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "tiny-qwen3-q8_0");

    // Still healthy, and every failure above was counted.
    assert_eq!(get(a, "/health").await.status, 200);
    let m = get(a, "/metrics").await.text();
    assert!(m.contains("quire_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"), "{m}");
    assert!(m.contains("quire_requests_total{endpoint=\"/v1/completions\",status=\"413\"} 3"), "{m}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_cors() {
    let mut cfg = test_config();
    cfg.api_key = Some("sekrit".into());
    cfg.cors = Some("https://app.example".into());
    let s = TestServer::start(cfg).await;
    let a = s.addr;
    assert_eq!(get(a, "/health").await.status, 200, "health needs no key");
    let r = get(a, "/v1/models").await;
    let v = r.assert_error(401, None);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    request(a, "GET", "/v1/models", &[("Authorization", "Bearer wrong")], None).await.assert_error(401, None);
    request(a, "GET", "/metrics", &[("Authorization", "Basic sekrit")], None).await.assert_error(401, None);
    post_json(a, "/v1/chat/completions", &json!({"messages": []})).await.assert_error(401, None);
    let r = request(a, "GET", "/v1/models", &[("Authorization", "Bearer sekrit")], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
    let r = request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sekrit")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200);

    // Preflight: no credentials, allowed, with the CORS headers.
    let r = request(
        a,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("authorization"));
    // Errors carry CORS headers too, so a browser can read them.
    assert_eq!(get(a, "/v1/models").await.header("access-control-allow-origin"), Some("https://app.example"));
    s.stop().await.unwrap();
}

/// DNS rebinding (ollama CVE-2024-28224): a server on a loopback address answers only loopback names and the
/// `--allowed-hosts` ones in `Host`; a page that made its own name resolve to 127.0.0.1 gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_refuses_foreign_host_names() {
    let mut cfg = test_config();
    assert_eq!(cfg.host, "127.0.0.1");
    cfg.allowed_hosts = vec!["writer.corp".into()];
    let s = TestServer::start(cfg).await;
    let a = s.addr;
    let get_as =
        |host: String| format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for bad in
        ["evil.example".to_string(), format!("evil.example:{}", a.port()), "localhost.evil.example".into()]
    {
        let v = raw(a, get_as(bad.clone()).as_bytes()).await.assert_error(403, None);
        assert_eq!(v["error"]["code"], "host_not_allowed", "{bad}");
        assert!(v["error"]["message"].as_str().unwrap().contains("--allowed-hosts"), "{v}");
    }
    for ok in [
        "localhost".to_string(),
        format!("127.0.0.1:{}", a.port()),
        format!("[::1]:{}", a.port()),
        "Writer.Corp".into(),
    ] {
        assert_eq!(raw(a, get_as(ok.clone()).as_bytes()).await.status, 200, "{ok}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_loading_and_a_failed_load_stops_the_server() {
    // A FIFO as the model file: loading blocks on it until we write, so "loading" lasts as long as we like.
    let dir = std::env::temp_dir().join(format!("quire-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("slow.gguf");
    let _ = std::fs::remove_file(&fifo);
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipping: mkfifo unavailable");
        return;
    }
    // Opening a FIFO read-write never blocks and releases a reader blocked in open(): done on drop, so the
    // loader thread is freed even if an assertion fails (the runtime waits for it on exit).
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::OpenOptions::new().read(true).write(true).open(&self.0);
        }
    }
    let release = Release(fifo.clone());
    let mut cfg = test_config();
    cfg.model_path = fifo.clone();
    cfg.model_name = "slow".into();
    let s = TestServer::start_loading(cfg).await;
    let r = get(s.addr, "/health").await;
    assert_eq!((r.status, r.json()), (503, json!({"status": "loading"})));
    let r =
        post_json(s.addr, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}]}))
            .await;
    let v = r.assert_error(503, None);
    assert_eq!(v["error"]["code"], "model_loading");
    assert!(r.header("retry-after").is_some());
    assert_eq!(get(s.addr, "/v1/models").await.status, 200, "the model list is known before loading");
    assert!(get(s.addr, "/metrics").await.text().contains("quire_model_loaded{model=\"slow\"} 0"));
    // Let the loader in: it finds an empty file, loading fails and the server stops with the error.
    drop(release);
    let err = s.join().await.unwrap_err();
    assert!(format!("{err:#}").contains("failed to load"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RAM planner in the server: `--max-ram` below the weights stops the load with the numbers; one that
/// holds a single 512-token slot gives one slot (the default two did not fit, `--parallel` was not set) with
/// the context it could, and the server serves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ram_plans_the_slots_or_stops_the_load() {
    let mut cfg = test_config();
    cfg.max_ram = Some(1 << 20);
    let s = TestServer::start_loading(cfg).await;
    let err = s.join().await.unwrap_err();
    assert!(format!("{err:#}").contains("not enough memory (--max-ram 1.0 MiB)"), "{err:#}");

    let engine = quire_engine::generate::Engine::load(tiny_model()).unwrap();
    let sizes = quire_engine::memory::Sizes::of(&engine, 2);
    let q8 = quire_engine::kv_cache::KvType::Q8_0;
    // room for one slot of 512 tokens (q8_0), not for two
    let budget = sizes.plan(512, q8, 1).total()
        + (sizes.plan(512, q8, 2).total() - sizes.plan(512, q8, 1).total()) / 2;
    let mut cfg = test_config();
    cfg.ctx = None;
    cfg.max_ram = Some(budget);
    let s = TestServer::start(cfg).await;
    let m = get(s.addr, "/metrics").await.text();
    assert!(m.contains("quire_slots_total 1"), "{m}");
    let r = post_json(s.addr, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 3})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await.unwrap();
}

/// Greedy chat with `logprobs`: one entry per generated token (the end-of-generation token excluded), the
/// chosen token is the most likely one, alternatives come most likely first, the entries' bytes spell the
/// text; streamed entries equal the whole answer's. Completions report the same numbers in their own shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_chat_and_completions() {
    let s = TestServer::start(test_config()).await;
    let req = greedy_chat(json!({"logprobs": true, "top_logprobs": 3, "ignore_eos": true, "max_tokens": 12}));
    let v = post_json(s.addr, "/v1/chat/completions", &req).await.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let mut bytes = Vec::new();
    for e in &content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"], "greedy picks the most likely token");
        assert_eq!(top[0]["logprob"], e["logprob"]);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{lps:?}");
        assert!(lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-5);
        // control tokens (`<|...|>`, which the tiny random model emits) are not shown in the text
        let tok = e["token"].as_str().unwrap();
        if !(tok.starts_with("<|") && tok.ends_with("|>")) {
            bytes.extend(e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
        }
    }
    assert_eq!(String::from_utf8_lossy(&bytes), v["choices"][0]["message"]["content"].as_str().unwrap());

    let mut stream_req = req.clone();
    stream_req["stream"] = json!(true);
    let events = parse_sse(&post_json(s.addr, "/v1/chat/completions", &stream_req).await.text());
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| if let Sse::Data(v) = e { Some(v) } else { None })
        .filter_map(|v| v["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed, content, "streamed logprobs equal the whole answer's");

    let creq =
        json!({"prompt": "The CPU", "temperature": 0, "max_tokens": 6, "ignore_eos": true, "logprobs": 2});
    let c = post_json(s.addr, "/v1/completions", &creq).await.json();
    let lp = &c["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    assert_eq!(lp["text_offset"][0], 0);
    for (t, top) in tokens.iter().zip(lp["top_logprobs"].as_array().unwrap()) {
        assert!(top.as_object().unwrap().len() <= 2);
        assert!(top.get(t.as_str().unwrap()).is_some(), "greedy token {t} among its top alternatives");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_on_every_endpoint() {
    let s = TestServer::start(test_config()).await;
    let a = s.addr;
    let schema = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 10},
            "slug": {"type": "string", "pattern": "^[a-z]{1,5}(-[a-z]{1,5})?$"},
            "stock": {"type": "integer", "minimum": 0, "maximum": 500},
            "colour": {"enum": ["red", "green"]},
        },
        "required": ["title", "slug", "stock", "colour"],
        "additionalProperties": false,
    });
    let check = |v: &Value| {
        let o = v.as_object().unwrap_or_else(|| panic!("{v} is not an object"));
        assert_eq!(o.len(), 4, "{v}");
        assert!(v["title"].as_str().unwrap().chars().count() <= 10, "{v}");
        let slug = v["slug"].as_str().unwrap();
        assert!(
            slug.split('-').all(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase())),
            "{v}"
        );
        assert!((0..=500).contains(&v["stock"].as_i64().unwrap()), "{v}");
        assert!(v["colour"] == "red" || v["colour"] == "green", "{v}");
    };
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "item", "schema": schema, "strict": true}});
    for seed in 0..3 {
        // thinking off: the random model, free to reason first, need never close its `<think>` block
        let req = greedy_chat(
            json!({"response_format": format, "temperature": 1.2, "seed": seed, "max_tokens": 200, "enable_thinking": false}),
        );
        let v = post_json(a, "/v1/chat/completions", &req).await.json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        check(&serde_json::from_str(content).unwrap());

        // streamed: the same text in pieces
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let events = parse_sse(&post_json(a, "/v1/chat/completions", &sreq).await.text());
        let (text, finish, _) = chat_stream_text(&events, false);
        assert_eq!((text.as_str(), finish.as_str()), (content, "stop"));
    }

    // json_object, on chat; a regex on /v1/completions, /generate and /stream; a Lark grammar.
    let v = post_json(
        a,
        "/v1/chat/completions",
        &greedy_chat(
            json!({"response_format": {"type": "json_object"}, "max_tokens": 300, "enable_thinking": false}),
        ),
    )
    .await
    .json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object(), "{content}");
    } else {
        assert!(content.starts_with('{'), "{content}");
    }
    let rx = "[a-c]{2}[0-9]";
    let ok = |t: &str| {
        t.len() == 3
            && t.as_bytes()[..2].iter().all(|b| (b'a'..=b'c').contains(b))
            && t.as_bytes()[2].is_ascii_digit()
    };
    let c = post_json(
        a,
        "/v1/completions",
        &json!({"prompt": "Code:", "regex": rx, "temperature": 1.0, "seed": 3}),
    )
    .await
    .json();
    assert!(ok(c["choices"][0]["text"].as_str().unwrap()), "{c}");
    let g =
        post_json(a, "/generate", &json!({"prompt": "Code?", "regex": rx, "temperature": 1.0, "seed": 4}))
            .await
            .json();
    assert!(ok(g["result"].as_str().unwrap()), "{g}");
    let t = post_json(a, "/stream", &json!({"prompt": "Code?", "regex": rx, "temperature": 1.0, "seed": 4}))
        .await
        .text();
    assert_eq!(t, g["result"].as_str().unwrap(), "/stream equals /generate");
    let lark = "start: \"answer: \" (\"yes\" | \"no\")";
    let c = post_json(
        a,
        "/v1/completions",
        &json!({"prompt": "Q:", "grammar": lark, "temperature": 1.0, "seed": 1}),
    )
    .await
    .json();
    let text = c["choices"][0]["text"].as_str().unwrap();
    assert!(text == "answer: yes" || text == "answer: no", "{c}");

    // max_tokens inside the structure: "length" with the partial text
    let req = greedy_chat(json!({"response_format": format, "max_tokens": 4, "enable_thinking": false}));
    let v = post_json(a, "/v1/chat/completions", &req).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with('{'), "{v}");

    // Grammars that cannot be used are 400s naming the field, with the reason; the server goes on.
    let cases = [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strang"}}}}),
            "response_format.json_schema.schema",
            "strang",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}}}),
            "response_format.json_schema.schema",
            "uniqueItems",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
            "required",
        ),
        (json!({"response_format": {"type": "yaml"}}), "response_format.type", "yaml"),
        (json!({"grammar": "start: ((\n"}), "grammar", "Expected"),
        (json!({"regex": "[a-"}), "regex", ""),
        (json!({"regex": "a", "grammar": "start: \"a\""}), "regex", "one of"),
    ];
    for (extra, param, needle) in cases {
        let e = post_json(a, "/v1/chat/completions", &greedy_chat(extra.clone()))
            .await
            .assert_error(400, Some(param));
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    let v = post_json(a, "/v1/chat/completions", &greedy_chat(json!({}))).await;
    assert_eq!(v.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_in_openai_shape() {
    let mut cfg = test_config();
    cfg.ctx = Some(2048); // the tools' description is long in the tiny model's 538-token vocabulary
    let s = TestServer::start(cfg).await;
    let a = s.addr;
    let tools = json!([
        {"type": "function", "function": {"name": "lookup", "parameters": {
            "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}},
            "required": ["sku"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "stock", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["n"], "additionalProperties": false}}},
    ]);
    let valid = |c: &Value| {
        assert_eq!(c["type"], "function");
        assert!(c["id"].as_str().unwrap().starts_with("call_"));
        let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        match c["function"]["name"].as_str().unwrap() {
            "lookup" => {
                let sku = args["sku"].as_str().unwrap();
                assert!(sku.len() == 5 && sku[..2].bytes().all(|b| b.is_ascii_uppercase()), "{args}");
            }
            "stock" => assert!((0..=9).contains(&args["n"].as_i64().unwrap()), "{args}"),
            other => panic!("unknown function {other}"),
        }
    };
    for (choice, seed) in
        [(json!("required"), 1), (json!({"type": "function", "function": {"name": "stock"}}), 2)]
    {
        let req =
            greedy_chat(json!({"tools": tools, "tool_choice": choice, "temperature": 1.0, "seed": seed,
                                     "max_tokens": 200, "enable_thinking": false}));
        let v = post_json(a, "/v1/chat/completions", &req).await.json();
        let choice0 = &v["choices"][0];
        assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
        let calls = choice0["message"]["tool_calls"].as_array().unwrap();
        assert!(!calls.is_empty());
        calls.iter().for_each(valid);
        if seed == 2 {
            assert!(calls.iter().all(|c| c["function"]["name"] == "stock"), "{v}");
        }
        // streamed: index, id, type and name first, then the arguments; reassembled equal to the whole reply
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let events = parse_sse(&post_json(a, "/v1/chat/completions", &sreq).await.text());
        let mut streamed: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        for e in &events {
            let Sse::Data(d) = e else { continue };
            let c = &d["choices"][0];
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
            for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = t["index"].as_u64().unwrap() as usize;
                if i == streamed.len() {
                    assert!(
                        t["id"].is_string() && t["function"]["name"].is_string(),
                        "first chunk of a call: {t}"
                    );
                    streamed.push(json!({"id": t["id"], "type": t["type"], "function": {"name": t["function"]["name"], "arguments": ""}}));
                }
                let args = streamed[i]["function"]["arguments"].as_str().unwrap().to_owned()
                    + t["function"]["arguments"].as_str().unwrap_or("");
                streamed[i]["function"]["arguments"] = args.into();
            }
        }
        assert_eq!(finish, "tool_calls");
        let strip = |v: &Value| json!({"type": v["type"], "function": v["function"]});
        assert_eq!(
            streamed.iter().map(strip).collect::<Vec<_>>(),
            calls.iter().map(strip).collect::<Vec<_>>()
        );
    }
    // none: no calls parsed, plain content
    let v =
        post_json(a, "/v1/chat/completions", &greedy_chat(json!({"tools": tools, "tool_choice": "none"})))
            .await
            .json();
    assert!(v["choices"][0]["message"].get("tool_calls").is_none(), "{v}");
    // bad tool requests
    let cases = [
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tools": tools, "tool_choice": "sometimes"}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": ""}}]}), "tools[0].function.name"),
        (json!({"tools": [{"type": "function"}]}), "tools[0].function"),
        (json!({"tools": tools, "response_format": {"type": "json_object"}}), "response_format"),
    ];
    for (extra, param) in cases {
        post_json(a, "/v1/chat/completions", &greedy_chat(extra)).await.assert_error(400, Some(param));
    }
}

/// `--draft` and `prediction`: the replies are those of a server without speculation, usage reports the
/// drafted tokens, and a draft model of another vocabulary stops the load with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_changes_no_reply() {
    let mut off = test_config();
    off.spec = quire_engine::speculate::SpecConfig::off();
    let plain = TestServer::start(off).await;
    let mut cfg = test_config();
    cfg.spec = quire_engine::speculate::SpecConfig { always: true, ..Default::default() };
    cfg.draft_model = Some(fixtures().join("tiny-qwen3-q4_0.gguf"));
    let fast = TestServer::start(cfg).await;
    for (i, extra) in [
        json!({}),
        json!({"seed": 3, "temperature": 0.9}),
        json!({"prediction": {"type": "content", "content": "CPUs hum"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let body = greedy_chat(extra);
        let a = post_json(plain.addr, "/v1/chat/completions", &body).await.json();
        let b = post_json(fast.addr, "/v1/chat/completions", &body).await.json();
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"], "request {i}");
        assert_eq!(a["usage"]["completion_tokens"], b["usage"]["completion_tokens"]);
        let details = &b["usage"]["completion_tokens_details"];
        assert!(details["accepted_prediction_tokens"].as_u64().unwrap() > 0, "request {i}: {details}");
        assert_eq!(a["usage"]["completion_tokens_details"]["accepted_prediction_tokens"], 0);
    }
    let m = get(fast.addr, "/metrics").await.text();
    let drafted = m.lines().find_map(|l| l.strip_prefix("quire_spec_drafted_tokens_total ")).unwrap();
    assert!(drafted.parse::<u64>().unwrap() > 0, "{m}");
    plain.stop().await.unwrap();
    fast.stop().await.unwrap();

    let mut cfg = test_config();
    let real = std::env::var_os("QUIRE_REAL_DRAFT_MODEL").map(std::path::PathBuf::from);
    let Some(other) = real.filter(|p| p.exists()) else { return };
    cfg.draft_model = Some(other);
    let s = TestServer::start_loading(cfg).await;
    let err = s.join().await.unwrap_err();
    assert!(format!("{err:#}").contains("vocabulary differs"), "{err:#}");
}
