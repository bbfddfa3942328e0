//! Test harness: an in-process server on 127.0.0.1 with the tiny fixture model, and a deliberately small
//! HTTP/1.1 client over a raw `TcpStream` (so tests control exactly what goes on the wire: broken bodies,
//! half-sent requests, disconnects mid-stream). Every network wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quire_server::{Server, ServerConfig, ServerHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single HTTP exchange in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

pub fn fixtures() -> PathBuf {
    match std::env::var_os("QUIRE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")),
    }
}

pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-qwen3-q8_0.gguf")
}

/// Defaults for tests: loopback, port 0, the tiny model, small context, 2 slots.
pub fn test_config() -> ServerConfig {
    let mut cfg = ServerConfig::new(tiny_model());
    cfg.port = 0;
    cfg.api_key = None;
    cfg.ctx = Some(512);
    cfg.shutdown_grace = Duration::from_secs(10);
    cfg
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Start a server and wait (bounded) until its model is loaded.
    pub async fn start(cfg: ServerConfig) -> TestServer {
        let s = TestServer::start_loading(cfg).await;
        tokio::time::timeout(IO_TIMEOUT, s.handle.wait_ready())
            .await
            .expect("model load timed out")
            .expect("model load");
        s
    }

    /// Start a server without waiting for the model.
    pub async fn start_loading(cfg: ServerConfig) -> TestServer {
        quire_server::init_logging(None);
        let server = Server::bind(cfg).await.expect("bind");
        let addr = server.local_addr().unwrap();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        TestServer { addr, handle, stop: Some(tx), task: Some(task) }
    }

    /// Signal shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Signal shutdown and wait for the serve loop to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.signal_stop();
        let task = self.task.take().unwrap();
        tokio::time::timeout(IO_TIMEOUT, task)
            .await
            .expect("shutdown timed out")
            .expect("serve task panicked")
    }

    /// The serve loop's result, for servers expected to stop by themselves.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(IO_TIMEOUT, task)
            .await
            .expect("server did not stop")
            .expect("serve task panicked")
    }

    pub fn active(&self) -> usize {
        self.handle.stats().map(|s| s.active).unwrap_or(0)
    }

    /// Wait (bounded) until no slot is active and nothing is queued.
    pub async fn wait_idle(&self) {
        for _ in 0..400 {
            if let Some(s) = self.handle.stats() {
                if s.active == 0 && s.queued == 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("slots still busy after 10 s: {:?}", self.handle.stats());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Assert an OpenAI-style error with this status (and `param`, when given).
    pub fn assert_error(&self, status: u16, param: Option<&str>) -> Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{v}");
        }
        v
    }
}

/// Raw request bytes.
pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// Send raw bytes and read the whole response (the server closes after it: `Connection: close`).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        buf
    };
    let buf = tokio::time::timeout(IO_TIMEOUT, fut).await.expect("HTTP exchange timed out");
    parse_response(&buf)
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    raw(addr, &build_request(method, path, headers, body)).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None).await
}

pub async fn post_json(addr: SocketAddr, path: &str, v: &Value) -> Resp {
    let body = v.to_string();
    request(addr, "POST", path, &[("Content-Type", "application/json")], Some(body.as_bytes())).await
}

/// Split a raw response into status, headers and (de-chunked) body.
pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("header UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest).0 } else { rest.to_vec() };
    Resp { status, headers, body }
}

/// Decode a chunked body; also returns whether the terminating zero chunk was seen.
pub fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return (out, false) };
        let size_str = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (out, true);
        }
        let start = eol + 2;
        if b.len() < start + size {
            out.extend_from_slice(&b[start..]);
            return (out, false);
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

/// One SSE event: a JSON payload, the `[DONE]` marker, or a comment.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    Data(Value),
    Done,
    Comment(String),
}

/// Parse an SSE body strictly: every event is `data: <json>` or `data: [DONE]` or a `:` comment, each
/// ended by a blank line.
pub fn parse_sse(body: &str) -> Vec<Sse> {
    assert!(body.ends_with("\n\n"), "SSE body must end with a blank line: {body:?}");
    body.trim_end_matches('\n')
        .split("\n\n")
        .map(|ev| {
            assert!(!ev.contains('\n'), "one line per event expected: {ev:?}");
            if let Some(c) = ev.strip_prefix(':') {
                Sse::Comment(c.trim().to_string())
            } else if ev == "data: [DONE]" {
                Sse::Done
            } else {
                let data = ev.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {ev:?}"));
                Sse::Data(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad JSON in {data:?}: {e}")))
            }
        })
        .collect()
}

/// A streaming exchange read incrementally, for disconnect tests.
pub struct OpenStream {
    pub stream: TcpStream,
    pub received: Vec<u8>,
}

impl OpenStream {
    pub async fn open(addr: SocketAddr, path: &str, v: &Value) -> OpenStream {
        let body = v.to_string();
        let bytes =
            build_request("POST", path, &[("Content-Type", "application/json")], Some(body.as_bytes()));
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        OpenStream { stream, received: Vec::new() }
    }

    /// Read until `pred(received so far)` holds or the connection ends; false on EOF before that.
    pub async fn read_until(&mut self, pred: impl Fn(&[u8]) -> bool) -> bool {
        let fut = async {
            let mut buf = [0u8; 4096];
            while !pred(&self.received) {
                let n = self.stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    return false;
                }
                self.received.extend_from_slice(&buf[..n]);
            }
            true
        };
        tokio::time::timeout(IO_TIMEOUT, fut).await.expect("stream read timed out")
    }

    pub async fn read_to_end(&mut self) -> Resp {
        self.read_until(|_| false).await;
        parse_response(&self.received)
    }
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub fn count(hay: &[u8], needle: &str) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}
