//! Request parsing and validation for every generating endpoint, and the OpenAI response bodies.
//!
//! Requests are deserialized into typed structs through `serde_path_to_error`, so that each wrong type
//! becomes a 400 naming the exact field (`param`: `temperature`, `messages[0].role`); range and feature
//! checks follow, each a 400 naming its field too. Unknown fields are ignored (OpenAI clients send many we
//! have no use for), and `null` means "not given", as OpenAI treats it.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use percent_encoding::percent_decode_str;
use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{FinishReason, GenerateParams};
use quire_engine::gguf::json_kind;
use quire_engine::grammar::GrammarSpec;
use quire_engine::sampler::{Logprob, SamplerOptions, TokenLogprob};
use quire_engine::speculate::SpecCounts;
use quire_engine::tools::{call_grammar, CallGrammar, Function, ParsedCall};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use serde_path_to_error::{Path, Segment};

use crate::errors::{ApiError, ApiResult};

/// Most stop strings accepted (OpenAI allows 4; a few more cost nothing).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string accepted, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most alternatives per token: chat's `top_logprobs` (OpenAI's limit) and completions' `logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;
pub const MAX_COMPLETION_LOGPROBS: usize = 5;

/// Sampling and length settings common to every endpoint, as the client gave them (`None` = default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingRequest {
    pub max_tokens: Option<usize>,
    /// Sampler settings (`temperature`, `top_p`, `top_k`, `min_p`, `seed`, the penalties).
    pub sampler: SamplerOptions,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Log-probabilities of each generated token and of this many alternatives (`logprobs`, `top_logprobs`).
    pub logprobs: Option<usize>,
    /// What the reply must match (`response_format`, `grammar`, `regex`).
    pub grammar: Option<GrammarRequest>,
}

/// A grammar as asked for, with the request field it came from (the `param` of its compile errors).
#[derive(Clone, Debug, PartialEq)]
pub struct GrammarRequest {
    pub spec: GrammarSpec,
    pub param: &'static str,
}

impl SamplingRequest {
    /// Engine parameters for a prompt of `prompt_tokens` in a slot of `n_ctx`. Unset fields take Qwen's
    /// recommended sampling ([`quire_engine::sampler::SamplerConfig::default`]), not OpenAI's 1.0/1.0, because that is what these
    /// models are tuned for. Without `max_tokens` a request may use the rest of its context; with one that
    /// goes past the context, generation simply ends there with `finish_reason: "length"` (as llama.cpp does,
    /// rather than OpenAI's 400), since the client cannot know our token count in advance.
    pub fn to_params(&self, prompt_tokens: usize, n_ctx: usize) -> GenerateParams {
        let room = n_ctx.saturating_sub(prompt_tokens).max(1);
        GenerateParams {
            max_tokens: self.max_tokens.unwrap_or(room).min(room),
            sampler: self.sampler.resolve(),
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            ..Default::default()
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
    /// Tool calling: what the model may call and how (`None`: no tools, or `tool_choice: "none"`).
    pub tools: Option<ToolUse>,
    /// Predicted Outputs: the text the reply is expected to resemble (`prediction.content`), drafts for
    /// speculative decoding; it changes how fast the reply comes, never what it is.
    pub prediction: Option<String>,
}

/// `tools` with `tool_choice` and `parallel_tool_calls`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolUse {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides; once it opens a call, the call must match a function's schema.
    Auto,
    /// The reply is one or more calls.
    Required,
    /// The reply is a call of this function.
    Named(String),
}

impl ToolUse {
    /// The grammar the reply or its calls follow, and whether it applies after `<tool_call>` only.
    pub fn grammar(&self) -> (GrammarSpec, bool) {
        match &self.choice {
            ToolChoice::Auto => (call_grammar(&self.functions, CallGrammar::Body), true),
            ToolChoice::Required => {
                (call_grammar(&self.functions, CallGrammar::Reply { parallel: self.parallel }), false)
            }
            ToolChoice::Named(name) => {
                let f: Vec<Function> = self.functions.iter().filter(|f| &f.name == name).cloned().collect();
                (call_grammar(&f, CallGrammar::Reply { parallel: false }), false)
            }
        }
    }
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
// Request bodies
//
// Each body is a derived struct of `Option`s (missing and `null` both mean "not given"; unknown fields are
// ignored), read by `from_object` so that a wrong type is a 400 naming its path. The sampling fields live in
// their own struct, read from the same object, so every endpoint shares them without `#[serde(flatten)]`
// (which would hide the paths from serde_path_to_error). Range and feature checks follow deserialization.

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
            json_kind(&other)
        ))),
    }
}

/// `/v1/chat/completions`, less the sampling fields.
#[derive(Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<Integer>,
    max_completion_tokens: Option<Integer>,
    /// Qwen3 hybrid models: a top-level `enable_thinking`, or vLLM's `chat_template_kwargs` one (which wins).
    enable_thinking: Option<bool>,
    chat_template_kwargs: Option<TemplateKwargs>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    logprobs: Option<bool>,
    top_logprobs: Option<Integer>,
    prediction: Option<Prediction>,
}

/// `prediction`: `{"type": "content", "content": "…" | [{"type": "text", "text": "…"}, …]}`.
#[derive(Deserialize)]
struct Prediction {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<PredictionContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PredictionContent {
    Text(String),
    Parts(Vec<TextPart>),
}

#[derive(Deserialize)]
struct TextPart {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

impl Prediction {
    /// The predicted text (the parts joined), or a 400 naming the field that is wrong.
    fn text(self) -> ApiResult<String> {
        let kind = self.kind.ok_or_else(|| required("prediction.type"))?;
        reject_if(kind != "content", "prediction.type", "the only prediction type is 'content'")?;
        match self.content.ok_or_else(|| required("prediction.content"))? {
            PredictionContent::Text(t) => Ok(t),
            PredictionContent::Parts(parts) => {
                let mut text = String::new();
                for (i, p) in parts.into_iter().enumerate() {
                    let param = format!("prediction.content[{i}]");
                    reject_if(
                        p.kind.as_deref() != Some("text"),
                        &param,
                        "content parts must be of type 'text'",
                    )?;
                    text += &p.text.ok_or_else(|| required(&format!("{param}.text")))?;
                }
                Ok(text)
            }
        }
    }
}

/// One entry of `tools`: `{"type": "function", "function": {"name", "description", "parameters"}}`. Kept
/// whole for the chat template, which renders it as the client sent it.
#[derive(Deserialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: Option<String>,
    function: Option<ToolFunction>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize, serde::Serialize)]
struct ToolFunction {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct TemplateKwargs {
    enable_thinking: Option<bool>,
}

/// `response_format`: OpenAI's `text`, `json_object` and `json_schema` (`json_schema.schema`); llama-server's
/// `json_object` with a `schema` beside it works too.
#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
    json_schema: Option<JsonSchemaFormat>,
    schema: Option<Value>,
}

#[derive(Deserialize)]
struct JsonSchemaFormat {
    /// OpenAI requires a name; we need none, and `strict` is how we always decode (the schema is enforced).
    #[allow(dead_code)]
    name: Option<String>,
    schema: Option<Value>,
    #[allow(dead_code)]
    strict: Option<bool>,
}

impl ResponseFormat {
    /// The grammar this format asks for (`None` for text).
    fn grammar(self) -> ApiResult<Option<GrammarRequest>> {
        let kind = self.kind.ok_or_else(|| required("response_format.type"))?;
        let spec = match kind.as_str() {
            "text" => return Ok(None),
            "json_object" => match self.schema {
                Some(schema) => GrammarSpec::JsonSchema(schema),
                None => GrammarSpec::JsonObject,
            },
            "json_schema" => {
                let f = self.json_schema.ok_or_else(|| required("response_format.json_schema"))?;
                let schema = f.schema.ok_or_else(|| required("response_format.json_schema.schema"))?;
                return Ok(Some(GrammarRequest {
                    spec: GrammarSpec::JsonSchema(schema),
                    param: "response_format.json_schema.schema",
                }));
            }
            other => {
                return Err(ApiError::invalid_param(
                    "response_format.type",
                    format!(
                        "unknown response_format type '{other}'; expected text, json_object or json_schema"
                    ),
                ))
            }
        };
        Ok(Some(GrammarRequest { spec, param: "response_format" }))
    }
}

/// `/v1/completions`, less the sampling fields.
#[derive(Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: Option<Prompt>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<Integer>,
    best_of: Option<Integer>,
    echo: Option<bool>,
    logprobs: Option<Integer>,
    suffix: Option<String>,
}

/// `/generate` and `/stream`, less the sampling fields.
#[derive(Deserialize)]
struct SimpleBody {
    prompt: Option<String>,
    system: Option<String>,
    raw: Option<bool>,
    /// The seed's name for `max_tokens`.
    max_new_tokens: Option<Integer>,
}

/// The fields behind [`SamplingRequest`], by their OpenAI (and vLLM) names.
#[derive(Deserialize)]
struct SamplingBody {
    max_tokens: Option<Integer>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<Integer>,
    min_p: Option<f64>,
    seed: Option<Integer>,
    stop: Option<Stop>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    ignore_eos: Option<bool>,
    response_format: Option<ResponseFormat>,
    /// Extensions: a Lark grammar (llguidance's syntax) or a regex the whole reply must match.
    grammar: Option<String>,
    regex: Option<String>,
}

/// Largest `max_tokens` accepted; anything bigger is surely a mistake (and is clamped to the context anyway).
const MAX_TOKENS_LIMIT: i128 = 1 << 24;

impl SamplingBody {
    /// Range-checks every field; `max_tokens` comes from [`max_tokens`], which knows the endpoint's aliases.
    fn check(self, max_tokens: Option<usize>) -> ApiResult<SamplingRequest> {
        // top_k: 0 and -1 both mean "off" (vLLM and llama.cpp spell it -1).
        let top_k = integer_in("top_k", self.top_k, -1, i128::from(u32::MAX))?.map(|k| k.max(0) as usize);
        // OpenAI's seed is any integer; negative ones map onto u64 bit-for-bit so every value is a distinct seed.
        let seed =
            integer_in("seed", self.seed, i128::from(i64::MIN), i128::from(u64::MAX))?.map(|s| s as u64);
        // checked in this order, so the first bad field is the one reported
        let temperature = number_in("temperature", self.temperature, 0.0, false, 2.0)?;
        let top_p = number_in("top_p", self.top_p, 0.0, true, 1.0)?;
        let min_p = number_in("min_p", self.min_p, 0.0, false, 1.0)?;
        let stop = check_stop(self.stop.map_or_else(Vec::new, |s| s.0))?;
        let presence_penalty = number_in("presence_penalty", self.presence_penalty, -2.0, false, 2.0)?;
        let frequency_penalty = number_in("frequency_penalty", self.frequency_penalty, -2.0, false, 2.0)?;
        let repetition_penalty = number_in("repetition_penalty", self.repetition_penalty, 0.0, true, 10.0)?;
        let mut grammars = Vec::new();
        if let Some(f) = self.response_format {
            grammars.extend(f.grammar()?);
        }
        if let Some(g) = self.grammar {
            grammars.push(GrammarRequest { spec: GrammarSpec::Lark(g), param: "grammar" });
        }
        if let Some(r) = self.regex {
            grammars.push(GrammarRequest { spec: GrammarSpec::Regex(r), param: "regex" });
        }
        if grammars.len() > 1 {
            return Err(ApiError::invalid_param(
                grammars[1].param,
                format!(
                    "give one of response_format, grammar and regex, not {} and {}",
                    grammars[0].param, grammars[1].param
                ),
            ));
        }
        let s = SamplingRequest {
            max_tokens,
            sampler: SamplerOptions {
                temperature,
                top_p,
                top_k,
                min_p,
                seed,
                presence_penalty,
                frequency_penalty,
                repetition_penalty,
            },
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: None,
            grammar: grammars.pop(),
        };
        // Belt and braces: the engine's own check, in case it grows rules we do not mirror here.
        let probe = s.to_params(0, 1);
        probe.sampler.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(s)
    }
}

/// `max_tokens` under any of the names an endpoint accepts, each range-checked; a later name wins.
fn max_tokens(given: &[(&str, Option<Integer>)]) -> ApiResult<Option<usize>> {
    let mut max = None;
    for &(name, n) in given {
        if let Some(n) = integer_in(name, n, 1, MAX_TOKENS_LIMIT)? {
            max = Some(n as usize);
        }
    }
    Ok(max)
}

/// A JSON integer. Integral floats (`1.0`) count too: JavaScript clients send them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Integer(i128);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read as a `Number`, which works whatever serde_json's features: with `arbitrary_precision` (on in
        // this workspace) numbers reach a plain visitor as maps, not as i64/f64.
        let n = serde_json::Number::deserialize(d)?;
        n.as_i128()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e30).map(|f| f as i128))
            .map(Integer)
            .ok_or_else(|| de::Error::custom(format!("invalid value: {n}, expected an integer")))
    }
}

/// `stop`: one string or an array of strings. A visitor, not an untagged enum, so that a bad element is
/// reported at its own path (`stop[1]`).
struct Stop(Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StopVisitor;
        impl<'de> Visitor<'de> for StopVisitor {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
                Ok(vec![s.to_owned()])
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element()? {
                    out.push(s);
                }
                Ok(out)
            }
        }
        d.deserialize_any(StopVisitor).map(Stop)
    }
}

fn check_stop(list: Vec<String>) -> ApiResult<Vec<String>> {
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop sequences are allowed, got {}", list.len()),
        ));
    }
    if list.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!("stop sequences must be non-empty and at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

/// OpenAI's prompt forms. Only one prompt per request is supported ([`Prompt::single`]).
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a string, an array of strings or an array of token ids")]
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl Prompt {
    /// The one non-empty prompt, or a 400 naming `prompt`.
    fn single(self) -> ApiResult<PromptInput> {
        fn only<T>(mut v: Vec<T>) -> ApiResult<T> {
            match v.len() {
                1 => Ok(v.remove(0)),
                _ => Err(ApiError::invalid_param("prompt", "only one prompt per request is supported")
                    .with_code("unsupported_value")),
            }
        }
        let p = match self {
            Prompt::Text(t) => PromptInput::Text(t),
            Prompt::Tokens(ids) => PromptInput::Tokens(ids),
            Prompt::Texts(v) => PromptInput::Text(only(v)?),
            Prompt::TokenLists(v) => PromptInput::Tokens(only(v)?),
        };
        match &p {
            PromptInput::Text(t) if t.is_empty() => Err(empty("prompt")),
            PromptInput::Tokens(t) if t.is_empty() => Err(empty("prompt")),
            _ => Ok(p),
        }
    }
}

/// Deserializes a request object into `T`. A value of the wrong type is a 400 (`invalid_type`) whose `param`
/// is its path ([`param_path`]); a missing required field is a 400 `missing_required_parameter`.
fn from_object<'a, T: Deserialize<'a>>(map: &'a Map<String, Value>) -> ApiResult<T> {
    serde_path_to_error::deserialize(map).map_err(|e| {
        let missing = missing_field(e.inner());
        let param = param_path(e.path(), missing.as_deref());
        match missing {
            Some(_) => required(&param),
            None => {
                ApiError::invalid_param(&param, format!("'{param}': {}", e.inner())).with_code("invalid_type")
            }
        }
    })
}

/// `param` for an error at `path`, as OpenAI writes it: `a.b[0].c`. A `missing` field is appended, since serde
/// reports it at the object that lacks it. An error inside a message names the whole message (`messages[2]`)
/// unless it is the role, as this API always has.
fn param_path(path: &Path, missing: Option<&str>) -> String {
    enum Step<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut steps: Vec<Step> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } | Segment::Enum { variant: key } => Some(Step::Key(key)),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Unknown => None,
        })
        .chain(missing.map(Step::Key))
        .collect();
    if let [Step::Key("messages"), Step::Index(_), Step::Key(field), ..] = steps[..] {
        if field != "role" {
            steps.truncate(2);
        }
    }
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => write!(out, ".{k}").unwrap(),
            Step::Index(i) => write!(out, "[{i}]").unwrap(),
        }
    }
    out
}

/// The field named by serde's "missing field `name`" error, if that is what `e` is.
fn missing_field(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    msg.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')).map(str::to_owned)
}

fn required(param: &str) -> ApiError {
    ApiError::invalid_param(param, format!("'{param}' is required")).with_code("missing_required_parameter")
}

fn empty(param: &str) -> ApiError {
    ApiError::invalid_param(param, format!("'{param}' must not be empty"))
}

/// `x` if it is finite and within `[lo, hi]` (`(lo, hi]` when `lo_open`), else a 400 naming `param`.
fn number_in(param: &str, x: Option<f64>, lo: f64, lo_open: bool, hi: f64) -> ApiResult<Option<f32>> {
    let Some(x) = x else { return Ok(None) };
    if x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi {
        return Ok(Some(x as f32));
    }
    let open = if lo_open { '(' } else { '[' };
    Err(ApiError::invalid_param(param, format!("'{param}' must be in {open}{lo}, {hi}], got {x}")))
}

/// `n` if it is within `[lo, hi]`, else a 400 naming `param`.
fn integer_in(param: &str, n: Option<Integer>, lo: i128, hi: i128) -> ApiResult<Option<i128>> {
    match n {
        Some(Integer(n)) if n < lo || n > hi => {
            Err(ApiError::invalid_param(param, format!("'{param}' must be between {lo} and {hi}, got {n}")))
        }
        n => Ok(n.map(|n| n.0)),
    }
}

/// A 400 when a field asks for something we do not do, rather than silently ignoring it.
fn reject_if(bad: bool, param: &str, why: &str) -> ApiResult<()> {
    if bad {
        return Err(ApiError::invalid_param(param, why).with_code("unsupported_value"));
    }
    Ok(())
}

/// `n` must be 1: one slot produces one choice.
fn check_n(n: Option<Integer>) -> ApiResult<()> {
    match n {
        Some(Integer(n)) if n != 1 => {
            Err(ApiError::invalid_param("n", format!("only n = 1 is supported, got {n}"))
                .with_code("unsupported_value"))
        }
        _ => Ok(()),
    }
}

fn include_usage(o: Option<StreamOptions>) -> bool {
    o.and_then(|o| o.include_usage).unwrap_or(false)
}

/// Roles the chat templates know; `developer` (OpenAI's newer name for `system`) is mapped to `system`.
const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Parse `/v1/chat/completions`.
pub fn parse_chat(map: &Map<String, Value>) -> ApiResult<ChatRequest> {
    let b: ChatBody = from_object(map)?;
    let s: SamplingBody = from_object(map)?;
    let mut messages = b.messages.ok_or_else(|| required("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "'messages' must contain at least one message"));
    }
    for (i, m) in messages.iter_mut().enumerate() {
        if m.role == "developer" {
            m.role = "system".to_string();
        }
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].role"),
                format!(
                    "unknown role '{}'; expected one of system, developer, user, assistant, tool",
                    m.role
                ),
            ));
        }
    }
    check_n(b.n)?;
    let top_logprobs = integer_in("top_logprobs", b.top_logprobs, 0, MAX_TOP_LOGPROBS as i128)?;
    let logprobs = b.logprobs == Some(true);
    reject_if(
        !logprobs && top_logprobs.is_some_and(|n| n > 0),
        "top_logprobs",
        "top_logprobs needs logprobs: true",
    )?;
    let max_tokens =
        max_tokens(&[("max_tokens", s.max_tokens), ("max_completion_tokens", b.max_completion_tokens)])?;
    let enable_thinking = b.chat_template_kwargs.and_then(|k| k.enable_thinking).or(b.enable_thinking);
    let (tool_use, rendered_tools) = tool_use(b.tools, b.tool_choice, b.parallel_tool_calls)?;
    let prediction = b.prediction.map(Prediction::text).transpose()?;
    let sampling = SamplingRequest {
        logprobs: logprobs.then_some(top_logprobs.unwrap_or(0) as usize),
        ..s.check(max_tokens)?
    };
    if tool_use.is_some() && sampling.grammar.is_some() {
        // One grammar per reply: a JSON answer or a tool call would need one grammar for both (not built yet).
        return Err(ApiError::invalid_param(
            sampling.grammar.as_ref().map_or("response_format", |g| g.param),
            "response_format, grammar and regex cannot be combined with tools (use tool_choice: \"none\")",
        ));
    }
    Ok(ChatRequest {
        model: b.model,
        messages,
        stream: b.stream.unwrap_or(false),
        include_usage: include_usage(b.stream_options),
        sampling,
        render: RenderOptions { add_generation_prompt: true, enable_thinking, tools: rendered_tools },
        tools: tool_use,
        prediction,
    })
}

/// `tools`, `tool_choice` and `parallel_tool_calls`: the functions (each with a name; no `parameters` means
/// any object), the choice (`none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`,
/// which must name one of them), and the tools as the chat template gets them (none for `"none"`: the model
/// is not told about tools it may not call).
fn tool_use(
    tools: Option<Vec<Tool>>,
    choice: Option<Value>,
    parallel: Option<bool>,
) -> ApiResult<(Option<ToolUse>, Option<Value>)> {
    let tools = tools.unwrap_or_default();
    let mut functions = Vec::new();
    let mut rendered = Vec::new();
    for (i, t) in tools.into_iter().enumerate() {
        if t.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        let f = t.function.ok_or_else(|| required(&format!("tools[{i}].function")))?;
        if f.name.is_empty() || functions.iter().any(|g: &Function| g.name == f.name) {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.name"),
                "function names must be non-empty and distinct",
            ));
        }
        let parameters = f.parameters.clone().unwrap_or_else(|| json!({"type": "object"}));
        functions.push(Function { name: f.name.clone(), parameters });
        let mut v = t.rest;
        v.insert("type".into(), "function".into());
        v.insert("function".into(), serde_json::to_value(&f).expect("a function serializes"));
        rendered.push(Value::Object(v));
    }
    let choice = match &choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok((None, None)),
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("unknown tool_choice '{other}'; expected none, auto, required or a function"),
                ))
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if functions.iter().any(|f| f.name == name) => Some(ToolChoice::Named(name.to_string())),
            Some(name) => {
                return Err(ApiError::invalid_param("tool_choice", format!("no tool named '{name}' in tools")))
            }
            None => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
    };
    if functions.is_empty() {
        if choice.is_some_and(|c| c != ToolChoice::Auto) {
            return Err(ApiError::invalid_param("tool_choice", "tool_choice needs tools"));
        }
        return Ok((None, None));
    }
    let tool_use =
        ToolUse { functions, choice: choice.unwrap_or(ToolChoice::Auto), parallel: parallel.unwrap_or(true) };
    Ok((Some(tool_use), Some(Value::Array(rendered))))
}

/// Parse `/v1/completions`.
pub fn parse_completion(map: &Map<String, Value>) -> ApiResult<CompletionRequest> {
    let b: CompletionBody = from_object(map)?;
    let s: SamplingBody = from_object(map)?;
    let prompt = b.prompt.ok_or_else(|| required("prompt"))?.single()?;
    check_n(b.n)?;
    reject_if(b.best_of.is_some_and(|n| n.0 != 1), "best_of", "only best_of = 1 is supported")?;
    reject_if(b.echo == Some(true), "echo", "echo is not supported")?;
    let logprobs = integer_in("logprobs", b.logprobs, 0, MAX_COMPLETION_LOGPROBS as i128)?;
    reject_if(
        b.suffix.is_some_and(|s| !s.is_empty()),
        "suffix",
        "suffix (fill-in-the-middle) is not supported",
    )?;
    let max_tokens = max_tokens(&[("max_tokens", s.max_tokens)])?;
    Ok(CompletionRequest {
        model: b.model,
        prompt,
        stream: b.stream.unwrap_or(false),
        include_usage: include_usage(b.stream_options),
        sampling: SamplingRequest { logprobs: logprobs.map(|n| n as usize), ..s.check(max_tokens)? },
    })
}

/// Parse `/generate` and `POST /stream` (`max_new_tokens` is the seed's name; `max_tokens` works too).
pub fn parse_simple(map: &Map<String, Value>) -> ApiResult<SimpleRequest> {
    let b: SimpleBody = from_object(map)?;
    let s: SamplingBody = from_object(map)?;
    let prompt = b.prompt.ok_or_else(|| required("prompt"))?;
    if prompt.is_empty() {
        return Err(empty("prompt"));
    }
    let max_tokens = max_tokens(&[("max_tokens", s.max_tokens), ("max_new_tokens", b.max_new_tokens)])?;
    Ok(SimpleRequest {
        prompt,
        system: b.system,
        raw: b.raw.unwrap_or(false),
        sampling: s.check(max_tokens)?,
    })
}

/// `GET /stream?prompt=...&max_new_tokens=...`: the query as the JSON object `parse_simple` reads. Text
/// fields stay strings; others are read as numbers or booleans when they look like one, so a bad value
/// still gets the same typed 400 as in JSON. Malformed escapes and non-UTF-8 text are a 400.
pub fn query_to_object(query: &str) -> ApiResult<Map<String, Value>> {
    const TEXT_KEYS: &[&str] = &["prompt", "system", "stop"];
    let mut map = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k)?, form_decode(v)?);
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
fn form_decode(s: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request("the query string is not valid percent-encoded UTF-8");
    // percent-encoding passes malformed escapes (`%zz`, `%4`) through verbatim; a client that sends one has
    // a bug it should hear about.
    let escapes_ok =
        s.split('%').skip(1).all(|r| r.get(..2).is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    if !escapes_ok {
        return Err(bad());
    }
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().map(Cow::into_owned).map_err(|_| bad())
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
    /// Speculative decoding: drafted tokens verified, and the ones accepted.
    pub spec: SpecCounts,
}

impl UsageCounts {
    /// OpenAI's shape; the Predicted Outputs counts are every draft's (prompt lookup's too): tokens drafted
    /// and kept, and drafted and thrown away (scored, not part of the reply nor of `completion_tokens`).
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
            "completion_tokens_details": {
                "accepted_prediction_tokens": self.spec.accepted,
                "rejected_prediction_tokens": self.spec.rejected(),
            },
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

/// One token as OpenAI's logprob entries show it: its text (lossy where it holds part of a character), its
/// log-probability and its bytes.
fn logprob_entry(l: &Logprob) -> Value {
    json!({ "token": String::from_utf8_lossy(&l.bytes), "logprob": l.logprob, "bytes": l.bytes })
}

/// Chat's `logprobs` object for these tokens (`content` entries with their `top_logprobs`).
pub fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = logprob_entry(&lp.chosen);
            e["top_logprobs"] = lp.top.iter().map(logprob_entry).collect();
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Legacy completions' `logprobs` object for these tokens; `offset` counts the characters of text before
/// them and is advanced past them (`text_offset`).
pub fn completion_logprobs(lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let text = |l: &Logprob| String::from_utf8_lossy(&l.bytes).into_owned();
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        offsets.push(*offset);
        *offset += text(&lp.chosen).chars().count();
    }
    let top: Vec<Map<String, Value>> =
        lps.iter().map(|lp| lp.top.iter().map(|t| (text(t), json!(t.logprob))).collect()).collect();
    json!({
        "tokens": lps.iter().map(|lp| text(&lp.chosen)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|lp| lp.chosen.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// A finished, non-streamed answer.
pub struct Answer<'a> {
    pub text: &'a str,
    /// OpenAI's `finish_reason` ([`finish_reason`]).
    pub finish: &'a str,
    pub usage: UsageCounts,
    /// The tokens' log-probabilities when the request asked for them.
    pub logprobs: Option<&'a [TokenLogprob]>,
    /// Chat replies of models that reason first: the reasoning, apart from `text` (`reasoning_content`).
    pub reasoning: Option<&'a str>,
    /// Chat replies to requests with tools: the calls parsed out of the reply.
    pub tool_calls: &'a [ParsedCall],
}

/// The id of a reply's `index`-th tool call, the same whole and streamed.
pub fn call_id(response_id: &str, index: usize) -> String {
    let base = response_id.strip_prefix("chatcmpl-").unwrap_or(response_id);
    format!("call_{base}_{index}")
}

/// Non-streaming `chat.completion`.
pub fn chat_completion(meta: &ResponseMeta, a: &Answer) -> Value {
    let (text, finish, usage) = (a.text, a.finish, &a.usage);
    let mut message = json!({ "role": "assistant", "content": text, "refusal": null });
    if let Some(r) = a.reasoning.filter(|r| !r.is_empty()) {
        message["reasoning_content"] = r.into();
    }
    let mut finish = finish;
    if !a.tool_calls.is_empty() {
        let calls: Vec<Value> = a
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({"id": call_id(&meta.id, i), "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        if finish == "stop" {
            finish = "tool_calls";
        }
    }
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": a.logprobs.map(chat_logprobs),
            "finish_reason": finish,
        }],
        "usage": usage.to_json(),
        "system_fingerprint": fingerprint(),
    })
}

/// Non-streaming `text_completion`.
pub fn text_completion(meta: &ResponseMeta, a: &Answer) -> Value {
    let (text, finish, usage) = (a.text, a.finish, &a.usage);
    let logprobs = a.logprobs.map(|lps| completion_logprobs(lps, &mut 0));
    json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish }],
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
    use quire_engine::sampler::SamplerConfig;

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
        let o = &s.sampler;
        assert_eq!((o.temperature, o.top_p, o.top_k, o.min_p), (Some(0.0), Some(0.5), Some(0), Some(0.1)));
        assert_eq!(o.seed, Some(u64::MAX));
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
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":-1}"#,
                "top_logprobs",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"logprobs":"yes"}"#, "logprobs"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
                "response_format.type",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}}"#,
                "response_format.json_schema",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a"}}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"regex":"a+"}"#,
                "regex",
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
    fn prediction_forms() {
        let chat = |extra: &str| {
            parse_chat(&obj(&format!(r#"{{"messages":[{{"role":"user","content":"x"}}]{extra}}}"#)))
                .map(|r| r.prediction)
        };
        assert_eq!(chat("").unwrap(), None);
        assert_eq!(chat(r#","prediction":null"#).unwrap(), None);
        let text = chat(r#","prediction":{"type":"content","content":"fn main() {}"}"#).unwrap();
        assert_eq!(text.as_deref(), Some("fn main() {}"));
        let parts = r#","prediction":{"type":"content","content":[{"type":"text","text":"a "},{"type":"text","text":"b"}]}"#;
        assert_eq!(chat(parts).unwrap().as_deref(), Some("a b"));
        assert_eq!(
            err_param(chat(r#","prediction":{"type":"file","content":"x"}"#)).as_deref(),
            Some("prediction.type")
        );
        assert_eq!(err_param(chat(r#","prediction":{"content":"x"}"#)).as_deref(), Some("prediction.type"));
        assert_eq!(
            err_param(chat(r#","prediction":{"type":"content"}"#)).as_deref(),
            Some("prediction.content")
        );
        assert_eq!(
            err_param(chat(r#","prediction":{"type":"content","content":7}"#)).as_deref(),
            Some("prediction.content")
        );
        let bad_part = r#","prediction":{"type":"content","content":[{"type":"image_url","text":"x"}]}"#;
        assert_eq!(err_param(chat(bad_part)).as_deref(), Some("prediction.content[0]"));
        assert_eq!(err_param(chat(r#","prediction":"x""#)).as_deref(), Some("prediction"));
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
        assert_eq!(r.sampling.sampler.temperature, Some(0.5));
        assert!(r.raw);
        let q = query_to_object("prompt=x&max_new_tokens=lots").unwrap();
        assert_eq!(err_param(parse_simple(&q)).as_deref(), Some("max_new_tokens"));
        assert!(query_to_object("prompt=%zz").is_err());
        assert!(query_to_object("prompt=%ff").is_err());
        assert!(query_to_object("prompt=%4").is_err());
        assert_eq!(query_to_object("prompt=%E4%BD%A0%E5%A5%BD").unwrap()["prompt"], "你好");
        assert_eq!(err_param(parse_simple(&obj(r#"{"max_new_tokens":5}"#))).as_deref(), Some("prompt"));
    }

    #[test]
    fn response_shapes() {
        let meta = ResponseMeta { id: "chatcmpl-1".into(), created: 5, model: "m".into() };
        let u = UsageCounts {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 2,
            spec: SpecCounts { drafted: 5, accepted: 3 },
        };
        let answer = |text, finish, logprobs| Answer {
            text,
            finish,
            usage: u,
            logprobs,
            reasoning: None,
            tool_calls: &[],
        };
        let c = chat_completion(&meta, &answer("hi", "stop", None));
        assert_eq!(c["choices"][0]["message"]["content"], "hi");
        assert_eq!(c["choices"][0]["logprobs"], Value::Null);
        assert_eq!(c["usage"]["total_tokens"], 7);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        let details = &c["usage"]["completion_tokens_details"];
        assert_eq!(
            (&details["accepted_prediction_tokens"], &details["rejected_prediction_tokens"]),
            (&json!(3), &json!(2))
        );
        assert!(c["choices"][0]["message"].get("reasoning_content").is_none());
        let r = chat_completion(&meta, &Answer { reasoning: Some("plan"), ..answer("{}", "stop", None) });
        assert_eq!(r["choices"][0]["message"]["reasoning_content"], "plan");
        assert_eq!(r["choices"][0]["message"]["content"], "{}");
        let t = text_completion(&meta, &answer("yo", "length", None));
        assert_eq!(t["choices"][0]["text"], "yo");
        assert_eq!(t["object"], "text_completion");
        // logprobs: "h" + "\xe4" (half of a character) with their alternatives
        let l = |token: u32, bytes: &[u8], logprob: f32| Logprob { token, bytes: bytes.to_vec(), logprob };
        let lps = [
            TokenLogprob { chosen: l(1, b"h", -0.5), top: vec![l(1, b"h", -0.5), l(2, b"y", -1.5)] },
            TokenLogprob { chosen: l(3, &[0xe4], -0.25), top: vec![l(3, &[0xe4], -0.25)] },
        ];
        let c = chat_completion(&meta, &answer("h", "stop", Some(&lps)));
        let content = &c["choices"][0]["logprobs"]["content"];
        assert_eq!(content[0]["token"], "h");
        assert_eq!(content[0]["logprob"], -0.5);
        assert_eq!(content[0]["bytes"], json!([104]));
        assert_eq!(content[0]["top_logprobs"][1]["token"], "y");
        assert_eq!(content[1]["bytes"], json!([0xe4]));
        assert_eq!(content[1]["token"], "\u{fffd}");
        let t = text_completion(&meta, &answer("hy", "stop", Some(&lps)));
        let lp = &t["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["h", "\u{fffd}"]));
        assert_eq!(lp["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(lp["top_logprobs"][0]["y"], -1.5);
        assert_eq!(lp["text_offset"], json!([0, 1]));
    }
    #[test]
    fn query_decoding_is_strict() {
        for bad in ["%zz", "%4", "%ff", "%%41", "%4你", "%", "a%e4%bd", "%ff=x"] {
            assert!(query_to_object(&format!("prompt={bad}")).is_err(), "{bad}");
        }
        let q = query_to_object("prompt=a+b%2Bc&&flag&system=%e4%bd%a0&x=%41%42").unwrap();
        assert_eq!(q["prompt"], "a b+c");
        assert_eq!(q["flag"], "");
        assert_eq!(q["system"], "你");
        assert_eq!(q["x"], "AB");
        assert_eq!(query_to_object("prompt=你%20").unwrap()["prompt"], "你 ");
    }

    #[test]
    fn integers_accept_integral_floats() {
        let int = |v: Value| Integer::deserialize(&v).map(|n| n.0);
        assert_eq!(int(json!(1.0)).unwrap(), 1);
        assert_eq!(int(json!(-3)).unwrap(), -3);
        assert_eq!(int(json!(u64::MAX)).unwrap(), i128::from(u64::MAX));
        assert_eq!(int(json!(1e3)).unwrap(), 1000);
        assert!(int(json!(1.5)).is_err());
        assert!(int(json!("1")).is_err());
        assert!(int(json!(true)).is_err());
        // Through a whole request: 1.0 works wherever an integer does.
        let r = parse_chat(&obj(
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":8.0,"n":1.0,"seed":-2.0,"top_k":40.0}"#,
        ))
        .unwrap();
        assert_eq!(r.sampling.max_tokens, Some(8));
        assert_eq!(r.sampling.sampler.seed, Some(u64::MAX - 1));
        assert_eq!(r.sampling.sampler.top_k, Some(40));
        let s = |body: &str| parse_simple(&obj(body)).map(|r| r.sampling);
        assert_eq!(s(r#"{"prompt":"x","seed":18446744073709551615}"#).unwrap().sampler.seed, Some(u64::MAX));
        assert_eq!(err_param(s(r#"{"prompt":"x","seed":18446744073709551616}"#)).as_deref(), Some("seed"));
        assert_eq!(err_param(s(r#"{"prompt":"x","top_k":-2}"#)).as_deref(), Some("top_k"));
        assert_eq!(err_param(s(r#"{"prompt":"x","top_k":4294967296}"#)).as_deref(), Some("top_k"));
        assert_eq!(s(r#"{"prompt":"x","top_k":4294967295}"#).unwrap().sampler.top_k, Some(u32::MAX as usize));
        // The later alias wins, and each is checked.
        let r = s(r#"{"prompt":"x","max_tokens":3,"max_new_tokens":4}"#).unwrap();
        assert_eq!(r.max_tokens, Some(4));
        assert_eq!(
            err_param(s(r#"{"prompt":"x","max_tokens":0,"max_new_tokens":4}"#)).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(err_param(s(r#"{"prompt":"x","max_tokens":16777217}"#)).as_deref(), Some("max_tokens"));
    }

    #[test]
    fn nested_params_are_paths() {
        let user = r#""messages":[{"role":"user","content":"x"}]"#;
        let cases: &[(String, &str, &str)] = &[
            (format!(r#"{{{user},"stop":["a",2]}}"#), "stop[1]", "invalid_type"),
            (format!(r#"{{{user},"stop":5}}"#), "stop", "invalid_type"),
            (format!(r#"{{{user},"stream_options":3}}"#), "stream_options", "invalid_type"),
            (
                format!(r#"{{{user},"chat_template_kwargs":{{"enable_thinking":"no"}}}}"#),
                "chat_template_kwargs.enable_thinking",
                "invalid_type",
            ),
            (format!(r#"{{{user},"tools":{{}}}}"#), "tools", "invalid_type"),
            (format!(r#"{{{user},"response_format":{{"type":1}}}}"#), "response_format.type", "invalid_type"),
            (format!(r#"{{{user},"top_logprobs":2}}"#), "top_logprobs", "unsupported_value"),
            (r#"{"messages":[{"role":5,"content":"x"}]}"#.into(), "messages[0].role", "invalid_type"),
            (r#"{"messages":[{"content":"x"}]}"#.into(), "messages[0].role", "missing_required_parameter"),
            (r#"{"messages":{}}"#.into(), "messages", "invalid_type"),
            (r#"{"messages":null}"#.into(), "messages", "missing_required_parameter"),
            // Inside a message, anything but the role names the whole message.
            (
                r#"{"messages":[{"role":"user","content":"x"},
                    {"role":"assistant","tool_calls":[{"function":{"arguments":"{}"}}]}]}"#
                    .into(),
                "messages[1]",
                "missing_required_parameter",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.into(),
                "messages[0]",
                "invalid_type",
            ),
        ];
        for (body, param, code) in cases {
            let e = parse_chat(&obj(body)).unwrap_err();
            assert_eq!((e.param.as_deref(), e.code), (Some(*param), Some(*code)), "{body}: {e}");
            if *code != "unsupported_value" {
                assert!(e.message.contains(&format!("'{param}'")), "{body}: {e}");
            }
        }
        let e =
            parse_completion(&obj(r#"{"prompt":"x","stream_options":{"include_usage":"yes"}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn param_path_formatting() {
        #[derive(Deserialize)]
        struct Outer {
            #[allow(dead_code)]
            a: Option<std::collections::BTreeMap<String, Vec<Inner>>>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[allow(dead_code)]
            c: Vec<u8>,
        }
        let path = |json: &str| {
            let v: Value = serde_json::from_str(json).unwrap();
            let e = serde_path_to_error::deserialize::<_, Outer>(&v).err().unwrap();
            param_path(e.path(), missing_field(e.inner()).as_deref())
        };
        assert_eq!(path(r#"{"a":{"b":[{"c":[1,"x"]}]}}"#), "a.b[0].c[1]");
        assert_eq!(path(r#"{"a":{"b":[{}]}}"#), "a.b[0].c");
        assert_eq!(path(r#"{"a":{"b":5}}"#), "a.b");
        assert_eq!(path(r#"{"a":[]}"#), "a");
    }

    #[test]
    fn completion_and_simple_fields() {
        let c = parse_completion(&obj(
            r#"{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true},"max_tokens":2,
                "stop":["a","b"],"best_of":1,"logprobs":0,"suffix":"","echo":false}"#,
        ))
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("m"));
        assert!(c.stream && c.include_usage);
        assert_eq!(c.sampling.max_tokens, Some(2));
        assert_eq!(c.sampling.stop, vec!["a".to_string(), "b".to_string()]);
        let bad = |body: &str| err_param(parse_completion(&obj(body)));
        assert_eq!(bad(r#"{"prompt":"x","logprobs":6}"#).as_deref(), Some("logprobs"));
        assert_eq!(c.sampling.logprobs, Some(0));
        let lp = |body: &str| parse_completion(&obj(body)).unwrap().sampling.logprobs;
        assert_eq!((lp(r#"{"prompt":"x","logprobs":5}"#), lp(r#"{"prompt":"x"}"#)), (Some(5), None));
        assert_eq!(bad(r#"{"prompt":"x","suffix":"y"}"#).as_deref(), Some("suffix"));
        assert_eq!(bad(r#"{"prompt":[[1],[2]]}"#).as_deref(), Some("prompt"));
        assert_eq!(bad(r#"{"prompt":[[]]}"#).as_deref(), Some("prompt"));
        assert_eq!(bad(r#"{"prompt":[4294967296]}"#).as_deref(), Some("prompt"));
        assert_eq!(bad(r#"{"prompt":"x","stop":["s"],"max_tokens":1,"n":2}"#).as_deref(), Some("n"));
        let stops = format!(r#"{{"prompt":"x","stop":{}}}"#, json!(vec!["s"; MAX_STOP_STRINGS + 1]));
        assert_eq!(bad(&stops).as_deref(), Some("stop"));
        let r = parse_simple(&obj(r#"{"prompt":"p","system":"s","raw":null,"ignore_eos":true}"#)).unwrap();
        assert_eq!(r.messages(), vec![Message::system("s"), Message::user("p")]);
        assert!(!r.raw && r.sampling.ignore_eos);
        assert_eq!(err_param(parse_simple(&obj(r#"{"prompt":"p","raw":"yes"}"#))).as_deref(), Some("raw"));
        assert_eq!(err_param(parse_simple(&obj(r#"{"prompt":""}"#))).as_deref(), Some("prompt"));
    }

    #[test]
    fn chat_thinking_and_tools() {
        let chat = |extra: &str| {
            parse_chat(&obj(&format!(r#"{{"messages":[{{"role":"user","content":"x"}}]{extra}}}"#))).unwrap()
        };
        assert_eq!(chat("").render.enable_thinking, None);
        assert_eq!(chat(r#","enable_thinking":true"#).render.enable_thinking, Some(true));
        let both = chat(r#","enable_thinking":true,"chat_template_kwargs":{"enable_thinking":false}"#);
        assert_eq!(both.render.enable_thinking, Some(false));
        assert_eq!(chat(r#","tools":[]"#).render.tools, None);
        let tools = chat(r#","tools":[{"type":"function","function":{"name":"f"}}]"#).render.tools;
        assert_eq!(tools.unwrap()[0]["function"]["name"], "f");
        assert!(!chat(r#","response_format":{"type":"text"},"top_logprobs":0,"logprobs":false"#).stream);
    }
}
