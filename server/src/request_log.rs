//! One log line and one metrics record per request, written when the request is really over: for a stream
//! that is when its body ends or the client goes away, long after the handler returned. The record is
//! shared (handler and response body each hold a clone) and emits itself when the last holder drops it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;

/// Status logged for a stream whose client disconnected before the end (nginx's "client closed request").
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// A request's log record; clones share it.
#[derive(Clone)]
pub struct RequestLog(Arc<Mutex<Entry>>);

struct Entry {
    id: String,
    method: String,
    endpoint: &'static str,
    started: Instant,
    status: u16,
    prompt_tokens: Option<usize>,
    cached_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    finish: Option<&'static str>,
    first_token: Option<Instant>,
    error: Option<String>,
    metrics: Arc<Metrics>,
}

impl RequestLog {
    /// Start the record of a request to `endpoint` (a route name, not the raw path, so metrics labels stay few).
    pub fn new(id: String, method: &str, endpoint: &'static str, metrics: Arc<Metrics>) -> RequestLog {
        RequestLog(Arc::new(Mutex::new(Entry {
            id,
            method: method.to_string(),
            endpoint,
            started: Instant::now(),
            status: 0,
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
            finish: None,
            first_token: None,
            error: None,
            metrics,
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> R {
        // A poisoned lock only means another holder panicked mid-update; the numbers are still worth logging.
        let mut e = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut e)
    }

    pub fn id(&self) -> String {
        self.with(|e| e.id.clone())
    }

    pub fn set_status(&self, status: u16) {
        self.with(|e| e.status = status);
    }

    pub fn set_error(&self, message: &str) {
        self.with(|e| e.error = Some(message.to_string()));
    }

    pub fn set_prompt_tokens(&self, n: usize) {
        self.with(|e| e.prompt_tokens = Some(n));
    }

    /// Note the first generated text (time to first token), once.
    pub fn first_token(&self) {
        self.with(|e| {
            e.first_token.get_or_insert_with(Instant::now);
        });
    }

    /// The generation's final counts.
    pub fn set_usage(&self, prompt: usize, cached: usize, completion: usize, finish: &'static str) {
        self.with(|e| {
            e.prompt_tokens = Some(prompt);
            e.cached_tokens = Some(cached);
            e.completion_tokens = Some(completion);
            e.finish = Some(finish);
        });
    }

    /// The client went away before the end.
    pub fn client_closed(&self) {
        self.with(|e| {
            e.status = STATUS_CLIENT_CLOSED;
            e.finish = Some("cancelled");
        });
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.status == 0 {
            // The handler never finished: its future was dropped because the client disconnected.
            self.status = STATUS_CLIENT_CLOSED;
            self.finish = Some("cancelled");
        }
        let secs = self.started.elapsed().as_secs_f64();
        let ttft = self.first_token.map(|t| t.duration_since(self.started).as_secs_f64());
        self.metrics.record_request(self.endpoint, self.status, secs, ttft);
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |n| n.to_string());
        let ttft_ms = ttft.map_or("-".to_string(), |t| format!("{:.0}", t * 1e3));
        let error = self.error.as_deref().unwrap_or("");
        let ms = format!("{:.1}", secs * 1e3);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "quire::request",
                    id = %self.id,
                    method = %self.method,
                    endpoint = self.endpoint,
                    status = self.status,
                    tokens_in = %opt(self.prompt_tokens),
                    cached = %opt(self.cached_tokens),
                    tokens_out = %opt(self.completion_tokens),
                    ms = %ms,
                    ttft_ms = %ttft_ms,
                    finish = self.finish.unwrap_or("-"),
                    error,
                    "request"
                )
            };
        }
        // 503 is routine (loading, shutting down): not worth a warning on every health probe.
        if self.status >= 500 && self.status != 503 {
            line!(warn);
        } else {
            line!(info);
        }
    }
}
