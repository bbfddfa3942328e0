//! Where the test data lives: the shared fixtures and the real model.
#![allow(dead_code)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quire_engine::generate::{GenerateParams, GenerationStats, Session};
use quire_engine::scheduler::{Event, Priority, Request, Usage};

/// `$QUIRE_FIXTURES`, else `../shared/fixtures` beside the repository. Every test reaches its data through
/// here, so this also fixes the kernels' instruction set first ([`init_isa`]).
pub fn fixtures() -> PathBuf {
    init_isa();
    match std::env::var_os("QUIRE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")),
    }
}

/// The kernels' instruction set for this test process: scripts/test.sh runs the engine's tests once per set,
/// naming it in `QUIRE_ISA`; this passes it to the kernels as the CLI's `--isa` does.
pub fn init_isa() {
    use quire_kernels::dispatch::{self, IsaKind};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(name) = std::env::var("QUIRE_ISA") {
            let kind = IsaKind::ALL.into_iter().find(|k| k.name() == name.trim());
            let kind = kind.unwrap_or_else(|| panic!("QUIRE_ISA={name:?} is not scalar, avx2 or avx512"));
            let isa = dispatch::force(kind).expect("the kernels ran before the instruction set was chosen");
            if isa.kind() != kind {
                eprintln!("this CPU does not run {kind}; testing {isa}");
            }
        }
    });
}

pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let p = fixture(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The real Qwen2.5-Coder GGUF (`$QUIRE_REAL_MODEL`, else the fetch script's cache path). `None` means
/// skip; with `QUIRE_REQUIRE_REAL=1` (set by scripts/test.sh) a missing model is a failure instead.
pub fn real_model() -> Option<PathBuf> {
    real_file("QUIRE_REAL_MODEL", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "fetch-qwen25-coder.sh")
}

/// The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M (mostly Q5_0 tensors; the draft model of the pair), as
/// [`real_model`]: `QUIRE_REAL_DRAFT_MODEL` or the cache.
pub fn real_draft_model() -> Option<PathBuf> {
    real_file(
        "QUIRE_REAL_DRAFT_MODEL",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "fetch-qwen25-coder-0.5b.sh",
    )
}

fn real_file(var: &str, name: &str, fetch: &str) -> Option<PathBuf> {
    init_isa();
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => {
            let base = std::env::var_os("QUIRE_MODELS").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/quire/models")
            });
            base.join(name)
        }
    };
    if path.exists() {
        return Some(path);
    }
    if std::env::var("QUIRE_REQUIRE_REAL").as_deref() == Ok("1") {
        panic!("real model not found at {} (run ../shared/scripts/{fetch})", path.display());
    }
    eprintln!("SKIP: real model not found at {}; run scripts/test.sh to fetch it", path.display());
    None
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The whole text `session` generates for `prompt`, and its stats.
pub fn session_text(session: &mut Session, prompt: &[u32], p: &GenerateParams) -> (String, GenerationStats) {
    let mut text = String::new();
    let stats = session
        .generate(prompt, p, |t| {
            text.push_str(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    (text, stats)
}

/// A scheduler request whose events go to the returned channel (dropping the receiver cancels the request).
pub fn channel_request(
    prompt: Vec<u32>,
    params: GenerateParams,
    deadline: Option<Instant>,
    priority: Priority,
) -> (Request, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let on_event =
        Box::new(
            move |e| if tx.send(e).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) },
        );
    (Request { prompt, params, deadline, priority, on_event }, rx)
}

/// The text and usage a request's events carry; panics, naming `what`, if it fails or nothing comes for
/// `timeout`.
pub fn collect_events(rx: mpsc::Receiver<Event>, timeout: Duration, what: &str) -> (String, Usage) {
    let mut text = String::new();
    loop {
        match rx
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("{what}: the scheduler does not answer: {e}"))
        {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(_) => {}
            Event::Done(u) => return (text, u),
            Event::Failed(e) => panic!("{what}: request failed: {e}"),
        }
    }
}
