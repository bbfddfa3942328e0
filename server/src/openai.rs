//! Request parsing and validation for every generating endpoint, and the OpenAI response bodies.
//!
//! Requests are read field by field from a `serde_json` object instead of derived structs, so that each
//! wrong type or out-of-range value becomes a 400 naming the exact field (`param`), unknown fields are
//! ignored (OpenAI clients send many we have no use for), and `null` means "not given", as OpenAI treats it.

use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{FinishReason, GenerateParams};
use quire_engine::sampler::SamplerConfig;
use serde_json::{json, Map, Value};

use crate::errors::{ApiError, ApiResult};

/// Most stop strings accepted (OpenAI allows 4; a few more cost nothing).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string accepted, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Sampling and length settings common to every endpoint, as the client gave them (`None` = default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingRequest {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: bool,
}

impl SamplingRequest {
    /// Engine parameters for a prompt of `prompt_tokens` in a slot of `n_ctx`. Unset fields take Qwen's
    /// recommended sampling ([`SamplerConfig::default`]), not OpenAI's 1.0/1.0, because that is what these
    /// models are tuned for. Without `max_tokens` a request may use the rest of its context; with one that
    /// goes past the context, generation simply ends there with `finish_reason: "length"` (as llama.cpp does,
    /// rather than OpenAI's 400), since the client cannot know our token count in advance.
    pub fn to_params(&self, prompt_tokens: usize, n_ctx: usize) -> GenerateParams {
        let mut s = SamplerConfig::default();
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            s.top_k = k;
        }
        if let Some(m) = self.min_p {
            s.min_p = m;
        }
        if let Some(p) = self.presence_penalty {
            s.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            s.frequency_penalty = p;
        }
        if let Some(p) = self.repetition_penalty {
            s.repetition_penalty = p;
        }
        s.seed = self.seed;
        let room = n_ctx.saturating_sub(prompt_tokens).max(1);
        GenerateParams {
            max_tokens: self.max_tokens.unwrap_or(room).min(room),
            sampler: s,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    pub sampling: SamplingRequest,
    pub render: RenderOptions,
}

/// What `/v1/completions` is asked to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Text(String),
    /// Pre-tokenized prompt (OpenAI accepts arrays of token ids).
    Tokens(Vec<u32>),
}

/// `POST /v1/completions`.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub stream: bool,
    pub include_usage: bool,
    pub sampling: SamplingRequest,
}

/// `POST /generate`, `GET|POST /stream`: the seed's simple API. The prompt is sent as one user message
/// through the chat template (these are instruct models; that is what the seed's users expect), after an
/// optional `system` message; `"raw": true` sends it to the model verbatim instead.
#[derive(Clone, Debug)]
pub struct SimpleRequest {
    pub prompt: String,
    pub system: Option<String>,
    pub raw: bool,
    pub sampling: SamplingRequest,
}

impl SimpleRequest {
    /// The conversation the prompt stands for (when not raw).
    pub fn messages(&self) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(Message::system(s.clone()));
        }
        m.push(Message::user(self.prompt.clone()));
        m
    }
}

// ---------------------------------------------------------------------------------------------------------
// Field readers

/// The request body as a JSON object, or a 400 saying what it is instead.
pub fn parse_json_object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("the request body is empty; send a JSON object"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to a request object's fields; every error names the field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for `param` in errors (`"stream_options."`).
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: "" }
    }

    fn param(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value, or `None` when missing or `null`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> ApiError {
        ApiError::invalid_param(
            self.param(key),
            format!("'{}' must be {want}, not {}", self.param(key), type_name(got)),
        )
        .with_code("invalid_type")
    }

    fn string(&self, key: &str) -> ApiResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a boolean", v)),
        }
    }

    fn object(&self, key: &str) -> ApiResult<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    /// A finite number within `[lo, hi]` (`lo_open` excludes `lo`).
    fn number(&self, key: &str, lo: f64, lo_open: bool, hi: f64) -> ApiResult<Option<f32>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let Some(x) = v.as_f64() else { return Err(self.wrong_type(key, "a number", v)) };
        let ok = x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi;
        if !ok {
            let open = if lo_open { '(' } else { '[' };
            let hi_s = if hi.is_finite() { hi.to_string() } else { "inf".to_string() };
            return Err(ApiError::invalid_param(
                self.param(key),
                format!("'{}' must be in {open}{lo}, {hi_s}], got {x}", self.param(key)),
            ));
        }
        Ok(Some(x as f32))
    }

    /// An integer within `[lo, hi]`. Integral floats (`1.0`) are accepted: JavaScript clients send them.
    fn integer(&self, key: &str, lo: i128, hi: i128) -> ApiResult<Option<i128>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n: Option<i128> = match v {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e30).map(|f| f as i128)),
            _ => None,
        };
        let Some(n) = n else { return Err(self.wrong_type(key, "an integer", v)) };
        if n < lo || n > hi {
            return Err(ApiError::invalid_param(
                self.param(key),
                format!("'{}' must be between {lo} and {hi}, got {n}", self.param(key)),
            ));
        }
        Ok(Some(n))
    }

    /// `stop`: a string or an array of strings.
    fn stop(&self, key: &str) -> ApiResult<Vec<String>> {
        let list: Vec<String> = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            return Err(ApiError::invalid_param(
                                format!("{}[{i}]", self.param(key)),
                                format!("stop sequences must be strings, not {}", type_name(other)),
                            )
                            .with_code("invalid_type"))
                        }
                    }
                }
                out
            }
            Some(v) => return Err(self.wrong_type(key, "a string or an array of strings", v)),
        };
        if list.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                self.param(key),
                format!("at most {MAX_STOP_STRINGS} stop sequences are allowed, got {}", list.len()),
            ));
        }
        if list.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_param(
                self.param(key),
                format!("stop sequences must be non-empty and at most {MAX_STOP_BYTES} bytes"),
            ));
        }
        Ok(list)
    }

    /// Reject a field that asks for something we do not do, rather than silently ignoring it.
    fn unsupported_if(&self, key: &str, bad: impl Fn(&Value) -> bool, why: &str) -> ApiResult<()> {
        match self.get(key) {
            Some(v) if bad(v) => {
                Err(ApiError::invalid_param(self.param(key), why).with_code("unsupported_value"))
            }
            _ => Ok(()),
        }
    }
}

/// Largest `max_tokens` accepted; anything bigger is surely a mistake (and is clamped to the context anyway).
const MAX_TOKENS_LIMIT: i128 = 1 << 24;

/// Fields shared by all generating endpoints. `max_keys` lists the names `max_tokens` goes by.
fn sampling(f: &Fields, max_keys: &[&str]) -> ApiResult<SamplingRequest> {
    let mut max_tokens = None;
    for key in max_keys {
        if let Some(n) = f.integer(key, 1, MAX_TOKENS_LIMIT)? {
            max_tokens = Some(n as usize);
        }
    }
    // top_k: 0 and -1 both mean "off" (vLLM and llama.cpp spell it -1).
    let top_k = f.integer("top_k", -1, i128::from(u32::MAX))?.map(|k| k.max(0) as usize);
    // OpenAI's seed is any integer; negative ones map onto u64 bit-for-bit so every value is a distinct seed.
    let seed = f.integer("seed", i128::from(i64::MIN), i128::from(u64::MAX))?.map(|s| s as u64);
    let s = SamplingRequest {
        max_tokens,
        temperature: f.number("temperature", 0.0, false, 2.0)?,
        top_p: f.number("top_p", 0.0, true, 1.0)?,
        top_k,
        min_p: f.number("min_p", 0.0, false, 1.0)?,
        seed,
        stop: f.stop("stop")?,
        presence_penalty: f.number("presence_penalty", -2.0, false, 2.0)?,
        frequency_penalty: f.number("frequency_penalty", -2.0, false, 2.0)?,
        repetition_penalty: f.number("repetition_penalty", 0.0, true, 10.0)?,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
    };
    // Belt and braces: the engine's own check, in case it grows rules we do not mirror here.
    let probe = s.to_params(0, 1);
    probe.sampler.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(s)
}

/// `n` must be 1: one slot produces one choice.
fn check_n(f: &Fields) -> ApiResult<()> {
    if let Some(n) = f.integer("n", i128::MIN, i128::MAX)? {
        if n != 1 {
            return Err(ApiError::invalid_param("n", format!("only n = 1 is supported, got {n}"))
                .with_code("unsupported_value"));
        }
    }
    Ok(())
}

/// `stream` and `stream_options.include_usage`.
fn stream_flags(f: &Fields) -> ApiResult<(bool, bool)> {
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields { map: o, prefix: "stream_options." }.bool("include_usage")?.unwrap_or(false),
        None => false,
    };
    Ok((stream, include_usage))
}

/// Roles the chat templates know; `developer` (OpenAI's newer name for `system`) is mapped to `system`.
const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Parse `/v1/chat/completions`.
pub fn parse_chat(map: &Map<String, Value>) -> ApiResult<ChatRequest> {
    let f = Fields::new(map);
    let messages_v = match map.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_param("messages", "'messages' is required")
                .with_code("missing_required_parameter"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(f.wrong_type("messages", "an array of messages", v)),
    };
    if messages_v.is_empty() {
        return Err(ApiError::invalid_param("messages", "'messages' must contain at least one message"));
    }
    let mut messages = Vec::with_capacity(messages_v.len());
    for (i, v) in messages_v.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(obj) = v else {
            return Err(ApiError::invalid_param(
                param,
                format!("each message must be an object, not {}", type_name(v)),
            )
            .with_code("invalid_type"));
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => {
                return Err(ApiError::invalid_param(
                    format!("{param}.role"),
                    format!("'role' must be a string, not {}", type_name(other)),
                )
                .with_code("invalid_type"))
            }
            None => {
                return Err(ApiError::invalid_param(format!("{param}.role"), "each message needs a 'role'")
                    .with_code("missing_required_parameter"))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid_param(
                format!("{param}.role"),
                format!("unknown role '{role}'; expected one of system, developer, user, assistant, tool"),
            ));
        }
        let mut m: Message = serde_json::from_value(v.clone())
            .map_err(|e| ApiError::invalid_param(param.clone(), format!("invalid message: {e}")))?;
        m.role = role.to_string();
        messages.push(m);
    }
    check_n(&f)?;
    f.unsupported_if("logprobs", |v| v.as_bool() == Some(true), "logprobs are not supported")?;
    f.unsupported_if("top_logprobs", |v| v.as_u64() != Some(0), "logprobs are not supported")?;
    f.unsupported_if(
        "response_format",
        |v| v.get("type").and_then(Value::as_str).is_some_and(|t| t != "text"),
        "only response_format {\"type\": \"text\"} is supported",
    )?;
    let (stream, include_usage) = stream_flags(&f)?;
    // Qwen3 hybrid models: vLLM's `chat_template_kwargs.enable_thinking`, or a top-level `enable_thinking`.
    let mut enable_thinking = f.bool("enable_thinking")?;
    if let Some(kw) = f.object("chat_template_kwargs")? {
        if let Some(t) = (Fields { map: kw, prefix: "chat_template_kwargs." }).bool("enable_thinking")? {
            enable_thinking = Some(t);
        }
    }
    let tools = match f.get("tools") {
        None => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(v @ Value::Array(_)) => Some(v.clone()),
        Some(v) => return Err(f.wrong_type("tools", "an array", v)),
    };
    Ok(ChatRequest {
        model: f.string("model")?,
        messages,
        stream,
        include_usage,
        sampling: sampling(&f, &["max_tokens", "max_completion_tokens"])?,
        render: RenderOptions { add_generation_prompt: true, enable_thinking, tools },
    })
}

/// Parse `/v1/completions`.
pub fn parse_completion(map: &Map<String, Value>) -> ApiResult<CompletionRequest> {
    let f = Fields::new(map);
    let prompt = match map.get("prompt") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_param("prompt", "'prompt' is required")
                .with_code("missing_required_parameter"))
        }
        Some(v) => prompt_input(v)?,
    };
    if matches!(&prompt, PromptInput::Text(t) if t.is_empty())
        || matches!(&prompt, PromptInput::Tokens(t) if t.is_empty())
    {
        return Err(ApiError::invalid_param("prompt", "'prompt' must not be empty"));
    }
    check_n(&f)?;
    f.unsupported_if("best_of", |v| v.as_u64() != Some(1), "only best_of = 1 is supported")?;
    f.unsupported_if("echo", |v| v.as_bool() == Some(true), "echo is not supported")?;
    f.unsupported_if("logprobs", |v| v.as_u64() != Some(0), "logprobs are not supported")?;
    f.unsupported_if("suffix", |v| v.as_str() != Some(""), "suffix (fill-in-the-middle) is not supported")?;
    let (stream, include_usage) = stream_flags(&f)?;
    Ok(CompletionRequest {
        model: f.string("model")?,
        prompt,
        stream,
        include_usage,
        sampling: sampling(&f, &["max_tokens"])?,
    })
}

/// OpenAI's prompt forms with one prompt: a string, `[string]`, `[token ids]` or `[[token ids]]`.
fn prompt_input(v: &Value) -> ApiResult<PromptInput> {
    let one_prompt = || {
        ApiError::invalid_param("prompt", "only one prompt per request is supported")
            .with_code("unsupported_value")
    };
    match v {
        Value::String(s) => Ok(PromptInput::Text(s.clone())),
        Value::Array(a) if a.is_empty() => {
            Err(ApiError::invalid_param("prompt", "'prompt' must not be empty"))
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            let ids = a
                .iter()
                .map(|x| x.as_u64().filter(|&n| n <= u64::from(u32::MAX)).map(|n| n as u32))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    ApiError::invalid_param("prompt", "token ids must be non-negative integers")
                })?;
            Ok(PromptInput::Tokens(ids))
        }
        Value::Array(a) if a.len() == 1 => match &a[0] {
            inner @ (Value::String(_) | Value::Array(_)) => prompt_input(inner),
            other => Err(ApiError::invalid_param(
                "prompt",
                format!("invalid prompt element: {}", type_name(other)),
            )),
        },
        Value::Array(_) => Err(one_prompt()),
        other => Err(ApiError::invalid_param(
            "prompt",
            format!("'prompt' must be a string or an array of token ids, not {}", type_name(other)),
        )
        .with_code("invalid_type")),
    }
}

/// Parse `/generate` and `POST /stream` (`max_new_tokens` is the seed's name; `max_tokens` works too).
pub fn parse_simple(map: &Map<String, Value>) -> ApiResult<SimpleRequest> {
    let f = Fields::new(map);
    let prompt = f.string("prompt")?.ok_or_else(|| {
        ApiError::invalid_param("prompt", "'prompt' is required").with_code("missing_required_parameter")
    })?;
    if prompt.is_empty() {
        return Err(ApiError::invalid_param("prompt", "'prompt' must not be empty"));
    }
    Ok(SimpleRequest {
        prompt,
        system: f.string("system")?,
        raw: f.bool("raw")?.unwrap_or(false),
        sampling: sampling(&f, &["max_tokens", "max_new_tokens"])?,
    })
}

/// `GET /stream?prompt=...&max_new_tokens=...`: the query as the JSON object `parse_simple` reads. Text
/// fields stay strings; others are read as numbers or booleans when they look like one, so a bad value
/// still gets the same typed 400 as in JSON.
pub fn query_to_object(query: &str) -> ApiResult<Map<String, Value>> {
    const TEXT_KEYS: &[&str] = &["prompt", "system", "stop"];
    let mut map = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        let value = if TEXT_KEYS.contains(&k.as_str()) {
            Value::String(v)
        } else if let Ok(b) = v.parse::<bool>() {
            Value::Bool(b)
        } else if let Some(n) = v.parse::<i64>().ok().map(Value::from).or_else(|| {
            v.parse::<f64>().ok().and_then(|x| serde_json::Number::from_f64(x).map(Value::Number))
        }) {
            n
        } else {
            Value::String(v)
        };
        map.insert(k, value);
    }
    Ok(map)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn percent_decode(s: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request("the query string is not valid percent-encoded UTF-8");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

// ---------------------------------------------------------------------------------------------------------
// Responses

/// OpenAI's `finish_reason`. A cancelled request (timeout; a disconnected client never sees one) reports
/// `length`: its output was cut short by a limit, which is what `length` tells a client.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// Token counts in OpenAI's `usage` shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl UsageCounts {
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
        })
    }
}

/// Identity of one response, shared by all its chunks.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Non-streaming `chat.completion`.
pub fn chat_completion(meta: &ResponseMeta, text: &str, finish: &str, usage: &UsageCounts) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text, "refusal": null },
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage.to_json(),
        "system_fingerprint": fingerprint(),
    })
}

/// Non-streaming `text_completion`.
pub fn text_completion(meta: &ResponseMeta, text: &str, finish: &str, usage: &UsageCounts) -> Value {
    json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
        "usage": usage.to_json(),
        "system_fingerprint": fingerprint(),
    })
}

/// Names the server build, as OpenAI's `system_fingerprint` names its backend configuration.
pub fn fingerprint() -> String {
    format!("quire-{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        parse_json_object(s.as_bytes()).unwrap()
    }

    fn err_param(r: ApiResult<impl std::fmt::Debug>) -> Option<String> {
        r.unwrap_err().param
    }

    #[test]
    fn body_must_be_a_json_object() {
        assert!(parse_json_object(b"").unwrap_err().message.contains("empty"));
        assert!(parse_json_object(b"{\"a\":").unwrap_err().message.contains("not valid JSON"));
        assert!(parse_json_object(b"[1]").unwrap_err().message.contains("an array"));
    }

    #[test]
    fn chat_parses_everything() {
        let m = obj(r#"{"model":"x","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"}]}],
            "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":7,
            "temperature":0,"top_p":0.5,"top_k":-1,"min_p":0.1,"seed":-1,"stop":"\n\n",
            "presence_penalty":1,"frequency_penalty":-1.5,"n":1,"user":"ignored",
            "chat_template_kwargs":{"enable_thinking":false},"logprobs":false}"#);
        let r = parse_chat(&m).unwrap();
        assert_eq!(r.model.as_deref(), Some("x"));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "hi");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.render.enable_thinking, Some(false));
        assert!(r.render.add_generation_prompt);
        let s = &r.sampling;
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p), (Some(0.0), Some(0.5), Some(0), Some(0.1)));
        assert_eq!(s.seed, Some(u64::MAX));
        assert_eq!(s.stop, vec!["\n\n".to_string()]);
        let p = s.to_params(10, 100);
        assert_eq!(p.max_tokens, 7);
        assert_eq!(p.sampler.temperature, 0.0);
        assert_eq!(p.sampler.presence_penalty, 1.0);
    }

    #[test]
    fn chat_rejects_bad_input_with_the_field_named() {
        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[1]}"#, "messages[0]"),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"wizard","content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"user","content":5}]}"#, "messages[0]"),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":-0.1}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":2.5}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#, "top_p"),
            (r#"{"messages":[{"role":"user","content":"x"}],"top_p":1.5}"#, "top_p"),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#, "max_tokens"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-3}"#,
                "max_completion_tokens",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#, "stop[0]"),
            (r#"{"messages":[{"role":"user","content":"x"}],"stop":""}"#, "stop"),
            (r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":3}"#, "presence_penalty"),
            (r#"{"messages":[{"role":"user","content":"x"}],"min_p":-1}"#, "min_p"),
            (r#"{"messages":[{"role":"user","content":"x"}],"seed":"s"}"#, "seed"),
            (r#"{"messages":[{"role":"user","content":"x"}],"model":3}"#, "model"),
            (r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true}"#, "logprobs"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                "response_format",
            ),
        ];
        for (body, param) in cases {
            let e = parse_chat(&obj(body)).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(*param), "{body}: {e}");
        }
    }

    #[test]
    fn nulls_mean_not_given() {
        let r = parse_chat(&obj(
            r#"{"messages":[{"role":"user","content":null}],"temperature":null,"stop":null,"n":null}"#,
        ))
        .unwrap();
        assert_eq!(r.sampling, SamplingRequest::default());
        let p = r.sampling.to_params(10, 100);
        assert_eq!(p.max_tokens, 90);
        assert_eq!(p.sampler, SamplerConfig::default());
    }

    #[test]
    fn max_tokens_is_clamped_to_the_context() {
        let s = SamplingRequest { max_tokens: Some(1000), ..Default::default() };
        assert_eq!(s.to_params(90, 100).max_tokens, 10);
        assert_eq!(s.to_params(100, 100).max_tokens, 1);
    }

    #[test]
    fn completion_prompt_forms() {
        let p = |s: &str| parse_completion(&obj(s)).map(|r| r.prompt);
        assert_eq!(p(r#"{"prompt":"hi"}"#).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(r#"{"prompt":["hi"]}"#).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(r#"{"prompt":[1,2,3]}"#).unwrap(), PromptInput::Tokens(vec![1, 2, 3]));
        assert_eq!(p(r#"{"prompt":[[4]]}"#).unwrap(), PromptInput::Tokens(vec![4]));
        assert_eq!(err_param(p(r#"{"prompt":["a","b"]}"#)).as_deref(), Some("prompt"));
        assert_eq!(err_param(p(r#"{"prompt":""}"#)).as_deref(), Some("prompt"));
        assert_eq!(err_param(p(r#"{"prompt":[-1]}"#)).as_deref(), Some("prompt"));
        assert_eq!(err_param(p(r#"{"prompt":{}}"#)).as_deref(), Some("prompt"));
        assert_eq!(err_param(p(r#"{}"#)).as_deref(), Some("prompt"));
        assert_eq!(err_param(p(r#"{"prompt":"x","echo":true}"#)).as_deref(), Some("echo"));
        assert_eq!(err_param(p(r#"{"prompt":"x","best_of":3}"#)).as_deref(), Some("best_of"));
        assert!(p(r#"{"prompt":"x","echo":false,"best_of":1,"logprobs":null,"suffix":null}"#).is_ok());
    }

    #[test]
    fn simple_request_and_query() {
        let r = parse_simple(&obj(r#"{"prompt":"hello","max_new_tokens":5,"temperature":0}"#)).unwrap();
        assert_eq!(r.sampling.max_tokens, Some(5));
        assert!(!r.raw);
        assert_eq!(r.messages().len(), 1);
        let q =
            query_to_object("prompt=1+%2B+1%3D&max_new_tokens=3&temperature=0.5&raw=true&stop=%0A").unwrap();
        assert_eq!(q["prompt"], "1 + 1=");
        assert_eq!(q["stop"], "\n");
        let r = parse_simple(&q).unwrap();
        assert_eq!(r.sampling.max_tokens, Some(3));
        assert_eq!(r.sampling.temperature, Some(0.5));
        assert!(r.raw);
        let q = query_to_object("prompt=x&max_new_tokens=lots").unwrap();
        assert_eq!(err_param(parse_simple(&q)).as_deref(), Some("max_new_tokens"));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
        assert!(percent_decode("%4").is_err());
        assert_eq!(percent_decode("%E4%BD%A0%E5%A5%BD").unwrap(), "你好");
        assert_eq!(err_param(parse_simple(&obj(r#"{"max_new_tokens":5}"#))).as_deref(), Some("prompt"));
    }

    #[test]
    fn response_shapes() {
        let meta = ResponseMeta { id: "chatcmpl-1".into(), created: 5, model: "m".into() };
        let u = UsageCounts { prompt_tokens: 3, completion_tokens: 4, cached_tokens: 2 };
        let c = chat_completion(&meta, "hi", "stop", &u);
        assert_eq!(c["choices"][0]["message"]["content"], "hi");
        assert_eq!(c["usage"]["total_tokens"], 7);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        let t = text_completion(&meta, "yo", "length", &u);
        assert_eq!(t["choices"][0]["text"], "yo");
        assert_eq!(t["object"], "text_completion");
    }
}
