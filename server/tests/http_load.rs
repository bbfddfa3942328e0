//! Scheduling seen from HTTP: disconnects free their slot, a full queue answers 429, waiting streams get
//! keep-alives, timeouts end requests, and shutdown lets in-flight streams finish.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A request that generates for a long time (ignore_eos; the context bounds it).
fn long_chat(stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Count forever."}],
        "max_tokens": 100000,
        "temperature": 0,
        "ignore_eos": true,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_the_slot() {
    let mut cfg = test_config();
    cfg.ctx = Some(4096);
    let s = TestServer::start(cfg).await;
    for path in ["/v1/chat/completions", "/stream"] {
        let mut body = long_chat(true);
        if path == "/stream" {
            body = json!({"prompt": "Count forever.", "max_new_tokens": 100000, "ignore_eos": true});
        }
        let mut st = OpenStream::open(s.addr, path, &body).await;
        // Wait for a few pieces of text, then hang up.
        let enough = |b: &[u8]| match path {
            "/stream" => b.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|end| b.len() > end + 60),
            _ => count(b, "\"content\"") >= 6,
        };
        assert!(st.read_until(enough).await, "stream ended early");
        assert_eq!(
            s.active(),
            1,
            "the request holds a slot while streaming: {:?} {}",
            s.handle.stats(),
            String::from_utf8_lossy(&st.received)
        );
        drop(st);
        s.wait_idle().await;
    }
    // The next request is served normally.
    let r = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200);
    let m = get(s.addr, "/metrics").await.text();
    assert!(m.contains("quire_slots_active 0"), "{m}");
    assert!(m.contains("quire_requests_total{endpoint=\"/v1/chat/completions\",status=\"499\"} 1"), "{m}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_while_waiting_for_a_non_streamed_answer_frees_the_slot() {
    let mut cfg = test_config();
    cfg.ctx = Some(16384);
    let s = TestServer::start(cfg).await;
    let st = OpenStream::open(s.addr, "/v1/chat/completions", &long_chat(false)).await;
    for _ in 0..400 {
        if s.active() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.active(), 1);
    drop(st);
    s.wait_idle().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gets_429_with_retry_after() {
    let mut cfg = test_config();
    cfg.n_slots = 1;
    cfg.queue_capacity = 1;
    cfg.ctx = Some(16384);
    cfg.keepalive_interval = Duration::from_millis(100);
    let s = TestServer::start(cfg).await;

    // One request generating...
    let mut first = OpenStream::open(s.addr, "/v1/chat/completions", &long_chat(true)).await;
    assert!(first.read_until(|b| count(b, "\"content\"") >= 3).await);
    // ...one waiting in the queue (it gets keep-alive comments while it waits)...
    let mut second = OpenStream::open(s.addr, "/v1/chat/completions", &long_chat(true)).await;
    assert!(second.read_until(|b| contains(b, ": keep-alive")).await, "a queued stream gets keep-alives");
    let stats = s.handle.stats().unwrap();
    assert_eq!((stats.active, stats.queued), (1, 1));
    // ...and the rest are turned away at once.
    let (b3, b4) = (long_chat(false), json!({"prompt": "x", "max_tokens": 5}));
    let (r3, r4) = tokio::join!(
        post_json(s.addr, "/v1/chat/completions", &b3),
        post_json(s.addr, "/v1/completions", &b4)
    );
    for r in [&r3, &r4] {
        let v = r.assert_error(429, None);
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let secs: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(secs >= 1);
    }
    drop(first);
    drop(second);
    s.wait_idle().await;
    let r = post_json(s.addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 5})).await;
    assert_eq!(r.status, 200, "served again once the queue drained");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_complete_or_get_429() {
    let mut cfg = test_config();
    cfg.n_slots = 4;
    cfg.queue_capacity = 8;
    let s = TestServer::start(cfg).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let stream = i % 2 == 0;
            let body = json!({"prompt": format!("client {i}"), "max_tokens": 40, "temperature": 0, "ignore_eos": true, "stream": stream});
            let r = post_json(addr, "/v1/completions", &body).await;
            (stream, r)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (stream, r) = t.await.unwrap();
        match r.status {
            200 if stream => {
                let events = parse_sse(&r.text());
                assert_eq!(events.last(), Some(&Sse::Done));
                ok += 1;
            }
            200 => {
                assert_eq!(r.json()["usage"]["completion_tokens"], 40);
                ok += 1;
            }
            429 => busy += 1,
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert_eq!(ok + busy, 16);
    // Admission counts requests in slots and in the queue, so at least slots + queue = 12 complete even when
    // all 16 arrive at once.
    assert!(ok >= 12, "at least slots + queue requests complete ({ok} ok, {busy} busy)");
    s.wait_idle().await;
    let metrics = get(s.addr, "/metrics").await.text();
    assert!(metrics.contains("quire_slots_active 0"), "slots back to zero in /metrics:\n{metrics}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_a_request() {
    let mut cfg = test_config();
    cfg.ctx = Some(16384);
    cfg.timeout = Some(Duration::from_millis(300));
    let s = TestServer::start(cfg).await;
    let t0 = Instant::now();
    let r = post_json(s.addr, "/v1/chat/completions", &long_chat(false)).await;
    assert!(t0.elapsed() < Duration::from_secs(30), "the timeout cut the request short");
    let v = r.assert_error(504, None);
    assert_eq!(v["error"]["code"], "timeout");
    // Streaming: the 200 is already out, so the timeout arrives as an error event, then [DONE].
    let r = post_json(s.addr, "/v1/chat/completions", &long_chat(true)).await;
    assert_eq!(r.status, 200);
    let events = parse_sse(&r.text());
    assert_eq!(events.last(), Some(&Sse::Done));
    let Sse::Data(err) = &events[events.len() - 2] else { panic!("error event before [DONE]") };
    assert_eq!(err["error"]["code"], "timeout", "{err}");
    s.wait_idle().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_streams_finish() {
    let mut cfg = test_config();
    cfg.ctx = Some(2048);
    let mut s = TestServer::start(cfg).await;
    let body = json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": 300, "temperature": 0, "ignore_eos": true, "stream": true});
    let mut st = OpenStream::open(s.addr, "/v1/chat/completions", &body).await;
    assert!(st.read_until(|b| count(b, "\"content\"") >= 2).await);
    s.signal_stop();
    // The in-flight stream runs to its end...
    let r = st.read_to_end().await;
    let events = parse_sse(&r.text());
    assert_eq!(events.last(), Some(&Sse::Done));
    let finish = events.iter().rev().find_map(|e| match e {
        Sse::Data(v) => v["choices"][0]["finish_reason"].as_str().map(str::to_string),
        _ => None,
    });
    assert_eq!(finish.as_deref(), Some("length"));
    // ...and the server then stops; new connections are refused.
    let addr = s.addr;
    s.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}
