//! Tool calls in Qwen's format: the model writes `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`
//! (several in a row for parallel calls). [`ToolCallSplit`] separates a streamed reply into text and parsed
//! calls; [`call_grammar`] is the grammar that makes such a block valid for the given tools, so that
//! arguments always match their function's JSON Schema.

use serde_json::{json, Map, Value};

use crate::grammar::GrammarSpec;

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// One parsed call: the function's name and its arguments as JSON text (OpenAI sends a string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// A piece of a reply: text for `content`, or a complete call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ParsedCall),
}

/// Splits streamed reply text into text and tool calls. A block that does not parse as a call (or is never
/// closed) comes back as text, unchanged: nothing the model wrote is lost.
#[derive(Clone, Debug, Default)]
pub struct ToolCallSplit {
    held: String,
    in_call: bool,
    calls: usize,
    /// A call just closed: the newline Qwen writes after it (often the next token) is not content.
    after_call: bool,
}

impl ToolCallSplit {
    pub fn new() -> ToolCallSplit {
        ToolCallSplit::default()
    }

    /// How many calls were parsed so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.after_call && !self.in_call && !self.held.is_empty() {
                self.after_call = false;
                if self.held.starts_with('\n') {
                    self.held.remove(0);
                }
            }
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { break };
                let body = self.held[OPEN.len()..end].to_string();
                let raw = self.held[..end + CLOSE.len()].to_string();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                match parse_call(&body) {
                    Some(call) => {
                        self.calls += 1;
                        out.push(Piece::Call(call));
                        self.after_call = true;
                    }
                    None => out.push(Piece::Text(raw)),
                }
            } else if let Some(at) = self.held.find(OPEN) {
                let before: String = self.held.drain(..at).collect();
                push_text(&mut out, before);
                self.in_call = true;
            } else {
                let keep = partial_suffix(&self.held, OPEN);
                let cut = self.held.len() - keep;
                let text: String = self.held.drain(..cut).collect();
                push_text(&mut out, text);
                break;
            }
        }
        out
    }

    /// The rest, at the end of the reply: an unclosed block or a held-back tail, as text.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.in_call = false;
        let mut out = Vec::new();
        push_text(&mut out, std::mem::take(&mut self.held));
        out
    }

    /// A whole reply: its text (calls removed, trimmed when there were calls) and its calls.
    pub fn split(text: &str) -> (String, Vec<ParsedCall>) {
        let mut s = ToolCallSplit::new();
        let mut pieces = s.push(text);
        pieces.extend(s.finish());
        let (mut content, mut calls) = (String::new(), Vec::new());
        for p in pieces {
            match p {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call(c) => calls.push(c),
            }
        }
        if !calls.is_empty() {
            content = content.trim().to_string();
        }
        (content, calls)
    }
}

fn push_text(out: &mut Vec<Piece>, text: String) {
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
}

/// `{"name": "...", "arguments": {...}}` (arguments may also be a JSON-encoded string).
fn parse_call(body: &str) -> Option<ParsedCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => serde_json::to_string(a).ok()?,
    };
    Some(ParsedCall { name, arguments })
}

/// Length of the longest tail of `text` that is a proper prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// A function the model may call: its name and the JSON Schema of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub name: String,
    pub parameters: Value,
}

/// How the reply must use tool-call blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallGrammar {
    /// The body after an opening `<tool_call>` the model chose to write (`tool_choice: "auto"`): the call's
    /// JSON and the closing tag.
    Body,
    /// The whole reply is calls (`"required"` or a named function): one, or several when `parallel`.
    Reply { parallel: bool },
}

/// The grammar of a tool-call block for `functions`: the JSON is `{"name": <one of them>, "arguments":
/// <that function's parameters>}`. Each function is its own `%json` rule, with the parameters' `$defs` (and
/// `definitions`) lifted to that rule's root, where their `#/$defs/…` references point.
pub fn call_grammar(functions: &[Function], kind: CallGrammar) -> GrammarSpec {
    let mut rules = String::new();
    let mut names = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let mut params = f.parameters.clone();
        let mut schema = Map::new();
        for key in ["$defs", "definitions"] {
            if let Some(defs) = params.as_object_mut().and_then(|p| p.remove(key)) {
                schema.insert(key.into(), defs);
            }
        }
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), json!({"name": {"const": f.name}, "arguments": params}));
        schema.insert("required".into(), json!(["name", "arguments"]));
        schema.insert("additionalProperties".into(), json!(false));
        schema.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
        rules += &format!("fn_{i}: %json {}\n", Value::Object(schema));
        names.push(format!("fn_{i}"));
    }
    let body = format!("call_json: {}\n{rules}", names.join(" | "));
    let lark = match kind {
        CallGrammar::Body => format!("start: \"\\n\" call_json \"\\n{CLOSE}\"\n{body}"),
        CallGrammar::Reply { parallel } => {
            let more = if parallel { " (\"\\n\" call)*" } else { "" };
            format!("start: call{more}\ncall: \"{OPEN}\\n\" call_json \"\\n{CLOSE}\"\n{body}")
        }
    };
    GrammarSpec::Lark(lark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_calls_from_text_whole_and_streamed() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = ToolCallSplit::split(text);
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![
                ParsedCall { name: "weather".into(), arguments: "{\"city\":\"Paris\"}".into() },
                ParsedCall { name: "time".into(), arguments: "{}".into() },
            ]
        );
        let mut s = ToolCallSplit::new();
        let mut pieces = Vec::new();
        for c in text.chars() {
            pieces.extend(s.push(&c.to_string()));
        }
        pieces.extend(s.finish());
        let streamed_calls: Vec<_> = pieces
            .iter()
            .filter_map(|p| if let Piece::Call(c) = p { Some(c.clone()) } else { None })
            .collect();
        assert_eq!(streamed_calls, calls);
        let streamed_text: String = pieces
            .iter()
            .filter_map(|p| if let Piece::Text(t) = p { Some(t.as_str()) } else { None })
            .collect();
        assert_eq!(streamed_text, "Let me check.\n", "no newline between or after the calls");
    }

    #[test]
    fn what_is_not_a_call_stays_text() {
        for text in
            ["plain <tool_ text", "<tool_call>not json</tool_call>", "<tool_call>{\"name\": \"a\"", "a < b"]
        {
            let (content, calls) = ToolCallSplit::split(text);
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content, text);
        }
    }
}
