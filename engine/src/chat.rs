//! Chat templates: turn a conversation into the exact prompt text the model was trained on.
//!
//! Models ship a Jinja template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`) written for
//! Hugging Face transformers' `apply_chat_template`. A prompt that differs by a single newline from what the
//! model saw in training measurably hurts it, so the goal here is byte-for-byte agreement with transformers,
//! not "something ChatML-looking". We render with minijinja configured the way transformers configures
//! jinja2: `trim_blocks`, `lstrip_blocks`, loop controls, no autoescape, plus transformers' globals
//! (`raise_exception`, `strftime_now`) and its own `tojson` (which, unlike Jinja's, does not HTML-escape and
//! takes `ensure_ascii`/`indent`/`separators`/`sort_keys`). Python string methods (`startswith`, `split`,
//! `strip`, ...) come from `minijinja_contrib::pycompat`.
//!
//! Values are handed to the template through our own conversion instead of serde, for two reasons:
//! `serde_json` is built with `arbitrary_precision` in this workspace (via gguf-rs), which makes numbers
//! serialize as private structs through any non-serde_json serializer; and minijinja's own maps are sorted,
//! while Python dicts (and so transformers' `tojson`) keep insertion order. [`JsonMap`] keeps the order the
//! JSON value has (insertion order once `serde_json/preserve_order` is enabled; sorted otherwise).
//!
//! The golden tests (`engine/tests/chat_template.rs`, data made by `scripts/dev/gen-chat-goldens.py` with
//! transformers itself) pin this behaviour down for the Qwen3 and Qwen2.5 templates.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Result};
use jiff::fmt::strtime;
use jiff::Timestamp;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};
use serde::{Deserialize, Deserializer, Serialize};

/// The template used when a model has none: plain ChatML, which is what Qwen models speak. It is the
/// well-known Hugging Face ChatML template, so rendering goes through the same machinery as real templates.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Name under which the template is stored in the environment; it shows up in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// Longest chat template accepted: real ones are a few KiB (Qwen3's 4 KiB, the longest seen ~30 KiB); a
/// hostile one must not cost a compile of megabytes at every load.
const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// One chat message, shaped like an OpenAI chat-completions message so the server can deserialize
/// requests straight into it. Optional fields are left out of the template's view when `None`, like
/// transformers drops `None`-valued keys, so `message.tool_calls is defined` behaves the same.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// Text content. OpenAI allows `null` (assistant turns that only call tools) and arrays of content
    /// parts; those are accepted and flattened (null → "", text parts joined with "\n") because every
    /// template we target does string operations on `content`.
    #[serde(default, deserialize_with = "deserialize_content")]
    pub content: String,
    /// Reasoning ("thinking") of an assistant turn, when the client keeps it separate from `content`.
    /// Qwen3's template reads `reasoning_content`; transformers also exposes it as `thinking`, and so do we.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "reasoning", alias = "thinking")]
    pub reasoning_content: Option<String>,
    /// Tool calls made by an assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `role: "tool"` messages: the id of the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Optional participant / tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into(), ..Default::default() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// An OpenAI-style tool call (`{"id", "type": "function", "function": {"name", "arguments"}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function part of a [`ToolCall`]. `arguments` is kept as JSON: OpenAI clients send a JSON-encoded
/// *string*, transformers users send an object, and templates distinguish the two (`is string`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

fn function_kind() -> String {
    "function".to_string()
}

fn deserialize_content<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error as _;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(serde_json::Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in &parts {
                match (part.get("type").and_then(|t| t.as_str()), part.get("text")) {
                    (Some("text"), Some(serde_json::Value::String(t))) => texts.push(t.as_str()),
                    _ => {
                        return Err(D::Error::custom(
                            "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(other) => Err(D::Error::custom(format!(
            "message content must be a string, null or an array of text parts, not {other}"
        ))),
    }
}

/// Options of one rendering, mirroring `apply_chat_template`'s keyword arguments.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Append the header that starts an assistant turn (`<|im_start|>assistant\n` for ChatML).
    pub add_generation_prompt: bool,
    /// Qwen3 hybrid models: `Some(false)` makes the template emit an empty `<think></think>` block.
    /// `None` leaves the variable undefined, as transformers does when the kwarg is not passed.
    pub enable_thinking: Option<bool>,
    /// Tool (function) definitions, usually a JSON array of `{"type": "function", "function": {...}}`.
    pub tools: Option<serde_json::Value>,
}

/// A compiled chat template. Cheap to share (`Send + Sync`); compile once per model.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// Compile the model's Jinja template (GGUF `tokenizer.chat_template`); `None` (or an empty
    /// template) → plain ChatML ([`CHATML_TEMPLATE`]). `bos_token`/`eos_token` are exposed to the template
    /// as variables, as transformers exposes the tokenizer's special tokens.
    ///
    /// Syntax errors are reported here, with the line, rather than on first use.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let (source, is_fallback) = match source {
            Some(s) if !s.trim().is_empty() => (s, false),
            _ => (CHATML_TEMPLATE, true),
        };
        ensure!(
            source.len() <= MAX_TEMPLATE_BYTES,
            "the chat template is {:.1} MiB, more than the {} MiB a template may have",
            source.len() as f64 / (1 << 20) as f64,
            MAX_TEMPLATE_BYTES >> 20
        );
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))
            .map_err(|e| anyhow!("chat template does not compile: {}", describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback,
        })
    }

    /// The template source in use (the ChatML fallback if the model had none).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the model had no template and plain ChatML is used.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// True if the template lets the model reason first (Qwen3's hybrid templates read `enable_thinking`).
    pub fn can_think(&self) -> bool {
        self.source().contains("enable_thinking")
    }

    /// Render like transformers' `apply_chat_template(messages, tools=..., add_generation_prompt=...,
    /// enable_thinking=..., tokenize=False)`. Errors raised by the template (`raise_exception`, undefined
    /// attribute access, type errors) come back as `Err` with the template's message and line.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        if messages.is_empty() {
            // transformers refuses too, and most templates index messages[0].
            bail!("cannot apply a chat template to an empty conversation");
        }
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages.iter().map(message_to_value).collect::<Vec<_>>())),
            ("tools", opts.tools.as_ref().map_or(Value::from(()), json_to_value)),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(opts.add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ];
        if let Some(t) = opts.enable_thinking {
            ctx.push(("enable_thinking", Value::from(t)));
        }
        let ctx: Value = ctx.into_iter().collect();
        let tmpl =
            self.env.get_template(TEMPLATE_NAME).map_err(|e| anyhow!("chat template: {}", describe(&e)))?;
        tmpl.render(ctx).map_err(|e| anyhow!("chat template failed to render: {}", describe(&e)))
    }
}

/// minijinja's error plus its cause chain, on one line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

/// transformers registers a `{% generation %}...{% endgeneration %}` tag (for assistant-token masks) that
/// minijinja does not know. For plain rendering it is a no-op block, so rewrite it into `{% if true %}` /
/// `{% endif %}`, keeping the whitespace-control markers so trimming is unchanged.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(word) => {
                let lead = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
                let trail = &inner[inner.trim_end_matches(['-', '+']).len()..];
                let _ = write!(out, "{{%{lead} {word} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Jinja2 prints Python values: `True`, `False`, `None`. minijinja would print `true`/`false`/`none`.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Error::from),
        ValueKind::None => out.write_str("None").map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {message}")))
}

/// transformers' `strftime_now(format)`. Python uses local time; we use UTC (servers usually run in UTC,
/// and it avoids a timezone database).
fn strftime_now(format: String) -> Result<Value, Error> {
    Ok(Value::from(strftime_utc(&format, Timestamp::now())))
}

/// Conversions of glibc's `strftime` that jiff formats the same way (C locale, UTC, with `PosixCustom`
/// for `%c %r %x %X`). Flags and widths (`%-d`, `%_3e`) work as in glibc too.
const GLIBC_CONVERSIONS: &str = "aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyYzZ%";

/// Format `t` in UTC like glibc's `strftime` in the C locale; never fails. Conversions glibc lacks, whether
/// unknown to jiff too or jiff extensions such as `%Q`, `%f` and `%:z`, are kept verbatim as glibc does.
pub(crate) fn strftime_utc(format: &str, t: Timestamp) -> String {
    // Escape (`%%`) each conversion glibc does not know, so jiff prints it literally; lenient mode is the
    // backstop that turns anything jiff still rejects into literal text instead of an error.
    let mut escaped = String::with_capacity(format.len() + 8);
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        escaped.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let conv = after.trim_start_matches(|c: char| "_-0^#".contains(c) || c.is_ascii_digit());
        let c = conv.chars().next();
        escaped.push_str(if c.is_some_and(|c| GLIBC_CONVERSIONS.contains(c)) { "%" } else { "%%" });
        let spec_len = after.len() - conv.len() + c.map_or(0, char::len_utf8);
        escaped.push_str(&after[..spec_len]);
        rest = &after[spec_len..];
    }
    escaped.push_str(rest);
    let config = strtime::Config::new().custom(strtime::PosixCustom::new()).lenient(true);
    strtime::BrokenDownTime::from(t).to_string_with_config(&config, &escaped).unwrap_or(escaped)
}

// ------------------------------------------------------------------------------------------------
// Values handed to the template

/// A JSON object that keeps its key order (Python dict semantics) inside the template.
#[derive(Debug)]
struct JsonMap(Vec<(Value, Value)>);

impl Object for JsonMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

fn ordered_map(entries: Vec<(Value, Value)>) -> Value {
    Value::from_object(JsonMap(entries))
}

/// serde_json → template value, without going through serde (see the module docs for why).
fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(f) = n.as_f64() {
                Value::from(f)
            } else {
                Value::from(n.to_string())
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::from(items.iter().map(json_to_value).collect::<Vec<_>>()),
        J::Object(map) => {
            ordered_map(map.iter().map(|(k, v)| (Value::from(k.as_str()), json_to_value(v))).collect())
        }
    }
}

fn message_to_value(m: &Message) -> Value {
    let mut e: Vec<(Value, Value)> = Vec::with_capacity(6);
    let mut put = |k: &str, v: Value| e.push((Value::from(k), v));
    put("role", Value::from(m.role.as_str()));
    put("content", Value::from(m.content.as_str()));
    if let Some(r) = &m.reasoning_content {
        put("reasoning_content", Value::from(r.as_str()));
        put("thinking", Value::from(r.as_str()));
    }
    if let Some(calls) = &m.tool_calls {
        let calls = calls
            .iter()
            .map(|c| {
                let mut f = Vec::with_capacity(3);
                if let Some(id) = &c.id {
                    f.push((Value::from("id"), Value::from(id.as_str())));
                }
                f.push((Value::from("type"), Value::from(c.kind.as_str())));
                let func = ordered_map(vec![
                    (Value::from("name"), Value::from(c.function.name.as_str())),
                    (Value::from("arguments"), json_to_value(&c.function.arguments)),
                ]);
                f.push((Value::from("function"), func));
                ordered_map(f)
            })
            .collect::<Vec<_>>();
        put("tool_calls", Value::from(calls));
    }
    if let Some(id) = &m.tool_call_id {
        put("tool_call_id", Value::from(id.as_str()));
    }
    if let Some(n) = &m.name {
        put("name", Value::from(n.as_str()));
    }
    ordered_map(e)
}

// ------------------------------------------------------------------------------------------------
// tojson, as transformers defines it: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
// sort_keys=False)

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn tojson_filter(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<String, Error> {
    if args.len() > 4 {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
        let kw: Option<Value> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(i).cloned()))
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().to_string(),
            ValueKind::Number | ValueKind::Bool => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")
                })?;
                " ".repeat(n.max(0) as usize)
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        }),
    };
    let (item_sep, key_sep) = match arg(2, "separators")? {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_string(), b.as_str().unwrap_or_default().to_string())
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let style = JsonStyle { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(out)
}

fn not_serializable(v: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: object of type {} is not JSON serializable", v.kind()),
    )
}

fn newline_indent(out: &mut String, style: &JsonStyle, level: usize) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, style: &JsonStyle, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone()).map_err(|_| not_serializable(v))?;
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, level + 1);
                write_json(out, item, style, level + 1)?;
            }
            newline_indent(out, style, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let k = json_key(&key)?;
                let val = v.get_item(&key)?;
                pairs.push((k, val));
            }
            if style.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, level + 1);
                write_json_str(out, k, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, val, style, level + 1)?;
            }
            newline_indent(out, style, level);
            out.push('}');
        }
        _ => return Err(not_serializable(v)),
    }
    Ok(())
}

/// Python's json.dumps converts non-string keys: ints and floats via repr, True → "true", None → "null".
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::None => "null".to_string(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => {
            python_float_repr(f64::try_from(key.clone()).map_err(|_| not_serializable(key))?)
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
            ))
        }
    })
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in [-4, 16),
/// otherwise `d.ddde±XX`; always a `.0` on integral fixed values.
pub(crate) fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(24);
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123.456, "123.456"),
            (1.5e300, "1.5e+300"),
            (-2.5e-10, "-2.5e-10"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (f64::INFINITY, "Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_known_dates() {
        let strftime_utc = |f: &str, secs: i64| strftime_utc(f, Timestamp::from_second(secs).unwrap());
        // 2024-07-26 12:34:56 UTC, a Friday (Llama 3.1's default "today")
        let t = 1_721_997_296;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S", t), "2024-07-26 12:34:56");
        assert_eq!(strftime_utc("%A %B %-d, %I%p %j %%", t), "Friday July 26, 12PM 208 %");
        assert_eq!(strftime_utc("%F %T %a %u %w", 0), "1970-01-01 00:00:00 Thu 4 4");
        assert_eq!(strftime_utc("%D %e|%-m|%Q", 951_782_400), "02/29/00 29|2|%Q");
        assert_eq!(
            strftime_utc("%c|%x|%X|%r|%Z %z|%s", t),
            "Fri Jul 26 12:34:56 2024|07/26/24|12:34:56|12:34:56 PM|UTC +0000|1721997296"
        );
        assert_eq!(strftime_utc("%_5d|%05e|%^a|%#p|%k|%l|%P|%C|%y", 0), "    1|00001|THU|am| 0|12|am|19|70");
    }

    #[test]
    fn strftime_keeps_what_glibc_does_not_know() {
        let t = Timestamp::from_second(1_721_997_296).unwrap();
        // jiff extensions glibc lacks, unknown conversions and E/O modifiers: verbatim, like glibc.
        for f in ["%Q", "%:Q", "%f", "%.f", "%3f", "%N", "%q", "%:z", "%::z", "%Ey", "%Od", "%v", "%-Q", "%+"]
        {
            assert_eq!(strftime_utc(f, t), f);
        }
        assert_eq!(strftime_utc("%%Q %%%Y", t), "%Q %2024");
        // Hostile formats never panic: trailing `%`, a lone flag, widths without a conversion, non-ASCII.
        let cases = [
            ("%", "%"),
            ("abc%", "abc%"),
            ("%-", "%-"),
            ("%_0^#", "%_0^#"),
            ("%5", "%5"),
            ("%é%Y", "%é2024"),
            ("日%d本%-m語%", "日26本7語%"),
            ("%\u{1F600}", "%\u{1F600}"),
            ("", ""),
        ];
        for (f, want) in cases {
            assert_eq!(strftime_utc(f, t), want, "{f:?}");
        }
        for f in ["%999d", "%-99999999999999999999Y", "%\0", "%%%", "%-%", "%%-"] {
            let _ = strftime_utc(f, t);
        }
        for t in [Timestamp::MIN, Timestamp::MAX, Timestamp::from_second(i64::from(i32::MIN)).unwrap()] {
            assert!(!strftime_utc("%c %y %G %j %s", t).is_empty());
        }
    }

    #[test]
    fn generation_tag_rewrite() {
        assert_eq!(
            strip_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }
}
