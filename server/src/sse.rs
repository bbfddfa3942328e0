//! Streaming responses: a hyper body fed by the scheduler's events, formatted as OpenAI's server-sent
//! events (chat and completions) or as plain text (`/stream`).
//!
//! The body itself owns the receiving end of the event channel. When the client disconnects, hyper drops
//! the body, the channel closes, the scheduler's next `send` fails and its callback returns `Break`, which
//! cancels the request and frees the slot. Keep-alive comments come from a timer polled by the same body,
//! so a stream needs no task of its own.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::errors::ApiError;
use crate::openai::{
    call_id, chat_logprobs, completion_logprobs, fingerprint, finish_reason, ResponseMeta, UsageCounts,
};
use crate::request_log::RequestLog;
use crate::state::AppState;
use quire_engine::reasoning::ReasoningSplit;
use quire_engine::sampler::TokenLogprob;
use quire_engine::scheduler::{Event, Usage};
use quire_engine::tools::{Piece, ToolCallSplit};

/// Error type of response bodies: returning one from a body aborts the connection, which is how a plain
/// text stream tells its client that it did not end normally.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The SSE comment sent while waiting; clients ignore lines starting with `:`.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// `data: <json>\n\n`.
pub fn data_line(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The stream terminator OpenAI clients wait for.
pub const DONE_LINE: &str = "data: [DONE]\n\n";

/// How a stream's events become bytes.
pub trait StreamFormat: Send + Unpin + 'static {
    /// Bytes sent before any token (the chat role delta).
    fn start(&mut self) -> Option<Bytes> {
        None
    }
    /// One piece of generated text.
    fn text(&mut self, piece: &str) -> Bytes;
    /// A token's log-probabilities, sent before the text it completes (formats that report them keep them
    /// for the next chunk).
    fn logprob(&mut self, _lp: TokenLogprob) {}
    /// The end: final chunk, usage, terminator (`None` = nothing more to send).
    fn done(&mut self, usage: &Usage) -> Option<Bytes>;
    /// Generation failed after the response started: an error event (OpenAI's streams: the error object,
    /// then `[DONE]`), or `Err` to abort the connection.
    fn failed(&mut self, error: &ApiError) -> Result<Bytes, BoxError> {
        Ok(format!("{}{DONE_LINE}", data_line(&error.to_json())).into())
    }
    /// Whether `: keep-alive` comments may be interleaved (SSE comments: yes).
    fn keepalive(&self) -> bool {
        true
    }
}

impl From<&Usage> for UsageCounts {
    fn from(u: &Usage) -> Self {
        UsageCounts {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            spec: u.spec,
        }
    }
}

/// The end of an OpenAI stream: the chunk with the finish reason, with `include_usage` a chunk with no choices
/// and the usage, then `[DONE]`. `chunk(finish)` is the format's empty chunk.
fn final_events(chunk: impl Fn(Option<&str>) -> Value, include_usage: bool, usage: &Usage) -> String {
    let mut out = data_line(&chunk(Some(finish_reason(usage.finish))));
    if include_usage {
        let mut last = chunk(None);
        last["choices"] = json!([]);
        last["usage"] = UsageCounts::from(usage).to_json();
        out.push_str(&data_line(&last));
    }
    out.push_str(DONE_LINE);
    out
}

/// The log-probabilities of the tokens since the last chunk, when the request asked for them.
#[derive(Default)]
pub struct PendingLogprobs {
    wanted: bool,
    tokens: Vec<TokenLogprob>,
    /// Characters of text already sent (completions' `text_offset`).
    offset: usize,
}

impl PendingLogprobs {
    pub fn new(wanted: bool) -> Self {
        PendingLogprobs { wanted, ..Default::default() }
    }

    fn push(&mut self, lp: TokenLogprob) {
        if self.wanted {
            self.tokens.push(lp);
        }
    }

    /// The pending tokens in `shape` (`null` when not asked for), emptied.
    fn take(&mut self, shape: impl FnOnce(&[TokenLogprob], &mut usize) -> Value) -> Value {
        if !self.wanted {
            return Value::Null;
        }
        let v = shape(&self.tokens, &mut self.offset);
        self.tokens.clear();
        v
    }
}

/// `chat.completion.chunk` events.
pub struct ChatSse {
    pub meta: ResponseMeta,
    pub include_usage: bool,
    pub logprobs: PendingLogprobs,
    /// Models that reason first: reasoning goes out as `delta.reasoning_content`, the answer as `content`.
    pub reasoning: Option<ReasoningSplit>,
    /// Requests with tools: calls in the answer go out as `delta.tool_calls`, the rest as `content`.
    pub tools: Option<ToolCallSplit>,
    /// Tool calls sent so far.
    pub calls: usize,
}

impl ChatSse {
    /// Chunks for reasoning and answer text: `reasoning_content`, `content`, and each tool call as OpenAI
    /// streams one (its index, id, type and name with empty arguments, then the arguments). Nothing while the
    /// splitters hold a possible tag back; `end`: flush them.
    fn deltas(&mut self, reasoning: String, answer: String, end: bool) -> String {
        let mut deltas = Vec::new();
        if !reasoning.is_empty() {
            deltas.push(json!({ "reasoning_content": reasoning }));
        }
        let mut pieces = match self.tools.as_mut() {
            Some(split) => split.push(&answer),
            None if answer.is_empty() => Vec::new(),
            None => vec![Piece::Text(answer)],
        };
        if end {
            pieces.extend(self.tools.as_mut().map(ToolCallSplit::finish).unwrap_or_default());
        }
        for p in pieces {
            match p {
                Piece::Text(t) => deltas.push(json!({ "content": t })),
                Piece::Call(c) => {
                    let index = self.calls;
                    self.calls += 1;
                    let id = call_id(&self.meta.id, index);
                    deltas.push(json!({"tool_calls": [{
                        "index": index, "id": id, "type": "function",
                        "function": {"name": c.name, "arguments": ""},
                    }]}));
                    deltas.push(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": c.arguments}}]}),
                    );
                }
            }
        }
        let mut out = String::new();
        for (i, d) in deltas.into_iter().enumerate() {
            let lp = if i == 0 { self.logprobs.take(|t, _| chat_logprobs(t)) } else { Value::Null };
            out += &data_line(&self.chunk_with(d, None, lp));
        }
        out
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        self.chunk_with(delta, finish, Value::Null)
    }

    fn chunk_with(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Value {
        let mut v = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": fingerprint(),
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        });
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage was asked for.
            v["usage"] = Value::Null;
        }
        v
    }
}

impl StreamFormat for ChatSse {
    fn start(&mut self) -> Option<Bytes> {
        Some(data_line(&self.chunk(json!({"role": "assistant", "content": ""}), None)).into())
    }

    fn text(&mut self, piece: &str) -> Bytes {
        if self.reasoning.is_none() && self.tools.is_none() {
            let lp = self.logprobs.take(|t, _| chat_logprobs(t));
            return data_line(&self.chunk_with(json!({ "content": piece }), None, lp)).into();
        }
        let (reasoning, answer) = match self.reasoning.as_mut() {
            Some(split) => split.push(piece),
            None => (String::new(), piece.to_string()),
        };
        self.deltas(reasoning, answer, false).into()
    }

    fn logprob(&mut self, lp: TokenLogprob) {
        self.logprobs.push(lp);
    }

    fn done(&mut self, usage: &Usage) -> Option<Bytes> {
        // tokens whose text never came (a stop string held back) still get their entries
        let (reasoning, answer) = self.reasoning.as_mut().map(ReasoningSplit::finish).unwrap_or_default();
        let mut out = if self.reasoning.is_some() || self.tools.is_some() {
            self.deltas(reasoning, answer, true)
        } else {
            String::new()
        };
        if !self.logprobs.tokens.is_empty() {
            let lp = self.logprobs.take(|t, _| chat_logprobs(t));
            out += &data_line(&self.chunk_with(json!({ "content": "" }), None, lp));
        }
        let calls = self.calls > 0;
        let chunk = |f: Option<&str>| {
            let f = f.map(|f| if calls && f == "stop" { "tool_calls" } else { f });
            self.chunk(json!({}), f)
        };
        out += &final_events(chunk, self.include_usage, usage);
        Some(out.into())
    }
}

/// `text_completion` events.
pub struct CompletionSse {
    pub meta: ResponseMeta,
    pub include_usage: bool,
    pub logprobs: PendingLogprobs,
}

impl CompletionSse {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        self.chunk_with(text, finish, Value::Null)
    }

    fn chunk_with(&self, text: &str, finish: Option<&str>, logprobs: Value) -> Value {
        let mut v = json!({
            "id": self.meta.id,
            "object": "text_completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": fingerprint(),
            "choices": [{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish }],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

impl StreamFormat for CompletionSse {
    fn text(&mut self, piece: &str) -> Bytes {
        let lp = self.logprobs.take(completion_logprobs);
        data_line(&self.chunk_with(piece, None, lp)).into()
    }

    fn logprob(&mut self, lp: TokenLogprob) {
        self.logprobs.push(lp);
    }

    fn done(&mut self, usage: &Usage) -> Option<Bytes> {
        let mut out = String::new();
        if !self.logprobs.tokens.is_empty() {
            let lp = self.logprobs.take(completion_logprobs);
            out = data_line(&self.chunk_with("", None, lp));
        }
        out += &final_events(|finish| self.chunk("", finish), self.include_usage, usage);
        Some(out.into())
    }
}

/// `/stream`: the text itself, chunk by chunk. A failure aborts the connection (the chunked encoding is
/// left unterminated), because plain text has no way to carry an error after the 200.
pub struct PlainText;

impl StreamFormat for PlainText {
    fn text(&mut self, piece: &str) -> Bytes {
        Bytes::copy_from_slice(piece.as_bytes())
    }

    fn done(&mut self, _usage: &Usage) -> Option<Bytes> {
        None
    }

    fn failed(&mut self, error: &ApiError) -> Result<Bytes, BoxError> {
        Err(Box::new(error.clone()))
    }

    fn keepalive(&self) -> bool {
        false
    }
}

/// A streaming response body driven by scheduler events.
pub struct EventStream<F: StreamFormat> {
    rx: UnboundedReceiver<Event>,
    format: F,
    started: bool,
    finished: bool,
    keepalive: Option<Interval>,
    timeout: Option<Duration>,
    log: RequestLog,
    /// Set when the event channel closes without a final event: the scheduler lost the request.
    lost: Arc<AtomicBool>,
}

impl<F: StreamFormat> EventStream<F> {
    /// The body for `rx`'s events; keep-alives every `state.cfg.keepalive_interval` where `format` allows.
    pub fn new(rx: UnboundedReceiver<Event>, format: F, state: &AppState, log: RequestLog) -> Self {
        let every = state.cfg.keepalive_interval;
        let keepalive = format.keepalive().then(|| {
            let mut iv = tokio::time::interval_at(Instant::now() + every, every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            iv
        });
        let (timeout, lost) = (state.cfg.timeout, state.scheduler_lost.clone());
        EventStream { rx, format, started: false, finished: false, keepalive, timeout, log, lost }
    }

    fn data(&mut self, b: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(iv) = &mut self.keepalive {
            iv.reset();
        }
        Poll::Ready(Some(Ok(Frame::data(b))))
    }

    fn fail(&mut self, error: ApiError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        tracing::warn!(id = %self.log.id(), "generation failed mid-stream: {}", error.message);
        self.log.set_status(error.status.as_u16());
        self.log.set_error(&error.message);
        match self.format.failed(&error) {
            Ok(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl<F: StreamFormat> Body for EventStream<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.started {
            this.started = true;
            if let Some(b) = this.format.start() {
                return this.data(b);
            }
        }
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Event::Text(piece))) => {
                    if piece.is_empty() {
                        continue;
                    }
                    this.log.first_token();
                    let b = this.format.text(&piece);
                    if b.is_empty() {
                        continue; // held back (a possible `</think>`): nothing to send yet
                    }
                    return this.data(b);
                }
                Poll::Ready(Some(Event::Logprob(lp))) => this.format.logprob(lp),
                Poll::Ready(Some(Event::Done(usage))) => {
                    this.finished = true;
                    this.log.set_usage(
                        usage.prompt_tokens,
                        usage.cached_tokens,
                        usage.completion_tokens,
                        finish_reason(usage.finish),
                    );
                    return match this.format.done(&usage) {
                        Some(b) => this.data(b),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Ready(Some(Event::Failed(failure))) => {
                    return this.fail(ApiError::generation_failed(&failure, this.timeout));
                }
                Poll::Ready(None) => {
                    this.lost.store(true, Ordering::Release);
                    return this
                        .fail(ApiError::internal("the scheduler dropped the request before it finished"));
                }
                Poll::Pending => {
                    if let Some(iv) = &mut this.keepalive {
                        if iv.poll_tick(cx).is_ready() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.started && self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<F: StreamFormat> Drop for EventStream<F> {
    fn drop(&mut self) {
        if !self.finished {
            self.log.client_closed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_engine::generate::FinishReason;

    fn deltas(bytes: &[Bytes]) -> Vec<Value> {
        bytes
            .iter()
            .flat_map(|b| std::str::from_utf8(b).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("data: ").and_then(|d| serde_json::from_str::<Value>(d).ok()))
            .map(|v| v["choices"][0]["delta"].clone())
            .collect()
    }

    #[test]
    fn chat_stream_sends_reasoning_apart_from_content() {
        let meta = ResponseMeta { id: "chatcmpl-1".into(), created: 5, model: "m".into() };
        let mut f = ChatSse {
            meta,
            include_usage: false,
            logprobs: PendingLogprobs::new(false),
            reasoning: Some(ReasoningSplit::new(false)),
            tools: None,
            calls: 0,
        };
        let mut out: Vec<Bytes> = ["<think>", "\nplan", " it</th", "ink>", "\n\n", "{\"a\"", ": 1}"]
            .iter()
            .map(|p| f.text(p))
            .filter(|b| !b.is_empty())
            .collect();
        let usage = Usage {
            prompt_tokens: 3,
            cached_tokens: 0,
            completion_tokens: 7,
            finish: FinishReason::Stop,
            prompt_secs: 0.0,
            gen_secs: 0.0,
            spec: Default::default(),
        };
        out.extend(f.done(&usage));
        let d = deltas(&out);
        let join = |key: &str| d.iter().filter_map(|v| v[key].as_str()).collect::<String>();
        assert_eq!(join("reasoning_content"), "\nplan it");
        assert_eq!(join("content"), "{\"a\": 1}");
    }
}
