//! HTTP abuse against a running server (issue 20's list): slow headers, oversized and too many headers,
//! request smuggling shapes, pipelining, bodies longer than announced, deep JSON, lone surrogates, hostile
//! numbers in every numeric field, a key in the query string. Each gets its 4xx (or is served when valid),
//! never a 5xx or a hang, and the server keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` (ignoring a server that closes before taking them all) and reads the reply, if any, until
/// the server closes (the requests end with `Connection: close`; hyper takes a half-close for a client gone).
async fn exchange(addr: std::net::SocketAddr, bytes: Vec<u8>) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let write = async move {
        let _ = wr.write_all(&bytes).await;
    };
    let read = async {
        let mut buf = Vec::new();
        let _ = rd.read_to_end(&mut buf).await;
        buf
    };
    let (_, buf) =
        tokio::time::timeout(IO_TIMEOUT, async { tokio::join!(write, read) }).await.expect("timed out");
    buf
}

fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.split(' ').nth(1)?.parse().ok()
}

async fn still_serving(a: std::net::SocketAddr) {
    assert_eq!(get(a, "/health").await.status, 200);
    let r =
        post_json(a, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0})).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_gets_4xx_and_the_server_keeps_serving() {
    let mut cfg = test_config();
    cfg.read_timeout = Duration::from_secs(1);
    let s = TestServer::start(cfg).await;
    let a = s.addr;

    // 120 headers, and one header of 1 MiB: 431 Request Header Fields Too Large (or the connection is
    // closed before the reply could be read), never a crash
    let mut many = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string();
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&exchange(a, many.into_bytes()).await), Some(431), "too many headers");
    let huge = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let reply = exchange(a, huge.into_bytes()).await;
    assert!(reply.is_empty() || status_of(&reply) == Some(431), "{:?}", String::from_utf8_lossy(&reply));

    // smuggling shapes: signed lengths, both framings at once
    let body = r#"{"prompt":"x"}"#;
    for cl in ["+14", "-1", "14, 15", "0x0e"] {
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {cl}\r\nConnection: close\r\n\r\n{body}"
        );
        assert_eq!(status_of(&exchange(a, req.into_bytes()).await), Some(400), "Content-Length: {cl}");
    }
    // both framings: hyper reads the chunked one (RFC 9112 §6.1: Transfer-Encoding wins) and drops the
    // Content-Length, so a length that would cut the stream elsewhere smuggles no second request
    let both = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\ne\r\n{body}\r\n0\r\n\r\n"
    );
    let reply = String::from_utf8_lossy(&exchange(a, both.into_bytes()).await).into_owned();
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("text_completion"), "{reply}");

    // two pipelined requests on one connection: both answered, in order
    let two = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\
               Connection: close\r\n\r\n";
    let reply = String::from_utf8(exchange(a, two.as_bytes().to_vec()).await).unwrap();
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    assert!(reply.find("\"status\"").unwrap_or(0) < reply.find("\"object\"").unwrap(), "in order: {reply}");

    // a body longer than announced: the announced bytes are the request, the rest is not a second one
    let long = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\n{body}GARBAGE\r\n\r\n"
    );
    let reply = String::from_utf8_lossy(&exchange(a, long.into_bytes()).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(!reply.contains("HTTP/1.1 200"), "{reply}");

    // slow headers (slowloris): one byte every 200 ms is cut off by the 1 s header timeout, while another
    // client is served meanwhile
    let t = Instant::now();
    let mut slow = TcpStream::connect(a).await.unwrap();
    let dribble = async {
        for b in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
        {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
        buf
    };
    let (buf, ()) = tokio::join!(dribble, still_serving(a));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "the slow client held its connection for {took:?}");
    assert!(buf.is_empty() || status_of(&buf) == Some(408), "{:?}", String::from_utf8_lossy(&buf));

    still_serving(a).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_gets_400_naming_the_problem() {
    let mut cfg = test_config();
    cfg.api_key = Some("sekrit".into());
    let s = TestServer::start(cfg).await;
    let a = s.addr;
    let auth = [("Authorization", "Bearer sekrit"), ("Content-Type", "application/json")];
    let post = |path: &'static str, body: Vec<u8>| async move {
        request(a, "POST", path, &[auth[0], auth[1]], Some(&body)).await
    };

    // nested 100,000 deep, and a lone surrogate in a string
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    post("/v1/chat/completions", deep.into_bytes()).await.assert_error(400, None);
    let lone = r#"{"messages":[{"role":"user","content":"\ud800 hi"}]}"#;
    post("/v1/chat/completions", lone.as_bytes().to_vec()).await.assert_error(400, None);
    // NaN and infinities are not JSON; out-of-range numbers do not parse
    for n in ["NaN", "Infinity", "-Infinity", "1e999"] {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"temperature":{n}}}"#);
        post("/v1/chat/completions", body.into_bytes()).await.assert_error(400, None);
    }
    // every numeric field with negative, huge and fractional values: a 400 naming the field, or served
    let fields = [
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_logprobs",
    ];
    for field in fields {
        for v in [json!(-1), json!(-1e300), json!(1e300), json!(u64::MAX), json!(i64::MIN), json!(2.5)] {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
            body[field] = v.clone();
            if field == "top_logprobs" {
                body["logprobs"] = json!(true);
            }
            let r = post("/v1/chat/completions", body.to_string().into_bytes()).await;
            match r.status {
                200 => {}
                400 => assert_eq!(r.json()["error"]["param"], field, "{field} = {v}: {}", r.text()),
                other => panic!("{field} = {v}: status {other}: {}", r.text()),
            }
        }
    }
    // token ids outside the vocabulary, and 10,000 stop strings
    let v = post("/v1/completions", json!({"prompt": [1, 2, u32::MAX]}).to_string().into_bytes()).await;
    v.assert_error(400, Some("prompt"));
    let stops: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stop": stops});
    post("/v1/chat/completions", body.to_string().into_bytes()).await.assert_error(400, Some("stop"));
    // a key in the query string is not a key
    get(a, "/v1/models?api_key=sekrit").await.assert_error(401, None);
    get(a, "/v1/models?key=sekrit&token=sekrit").await.assert_error(401, None);

    assert_eq!(get(a, "/health").await.status, 200);
    s.stop().await.unwrap();
}
