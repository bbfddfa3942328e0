//! A batch input file, as OpenAI defines it: one JSON object per line, `{"custom_id", "method": "POST",
//! "url": "/v1/chat/completions" | "/v1/completions", "body": {…}}`.
//!
//! Two kinds of problem. A line that cannot run (invalid JSON, another method or url, a body that is not an
//! object) becomes an error line for its `custom_id` and never stops the batch; so does a body the endpoint
//! refuses, when it runs. What makes the whole file unusable fails it at validation, naming the lines: not
//! text, no request in it, a line without a string `custom_id`, a duplicate `custom_id`, over the limits.
//! Validation reads the file once, line by line: memory grows with the number of ids, not the file's size.

use std::collections::HashMap;
use std::io::BufRead;

use serde_json::Value;

use crate::errors::ApiError;
use crate::routes::BatchEndpoint;

/// What one file may hold (OpenAI's are 50,000 requests and 200 MB).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_requests: usize,
    pub max_bytes: u64,
    /// Longest line, in bytes (one request body).
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_requests: 50_000, max_bytes: 200 << 20, max_line_bytes: 4 << 20 }
    }
}

/// One line that can run.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// 1-based line number in the file.
    pub line: usize,
    pub custom_id: String,
    pub endpoint: BatchEndpoint,
    pub body: Value,
    /// The template and data row it was rendered from (the line's `quire` extension field), for provenance.
    pub origin: Option<(String, usize)>,
}

/// One line that cannot run: its error line says why.
#[derive(Clone, Debug)]
pub struct BadLine {
    pub line: usize,
    pub custom_id: String,
    pub error: ApiError,
}

/// A line of the file, parsed.
#[derive(Clone, Debug)]
pub enum Item {
    Run(Line),
    Bad(BadLine),
}

impl Item {
    pub fn custom_id(&self) -> &str {
        match self {
            Item::Run(l) => &l.custom_id,
            Item::Bad(b) => &b.custom_id,
        }
    }
}

/// Why a whole file was refused (each message names its lines).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// What validation found: the number of requests (runnable or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub requests: usize,
    /// Lines that will become error lines without running.
    pub bad_lines: usize,
}

/// Reads `input` through, line by line, checking everything that fails a whole file. `endpoint`: the batch's
/// endpoint, which every line's url must name (`None`: either one, for a file not yet in a batch).
pub fn validate(
    input: impl BufRead,
    endpoint: Option<BatchEndpoint>,
    limits: &Limits,
) -> Result<Summary, FileError> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut summary = Summary { requests: 0, bad_lines: 0 };
    let mut problems = Vec::new();
    let mut bytes = 0u64;
    for (n, line) in lines(input, limits.max_line_bytes) {
        let line = line?;
        bytes += line.len() as u64 + 1;
        if bytes > limits.max_bytes {
            return Err(FileError(format!("the file is over the limit of {} bytes", limits.max_bytes)));
        }
        if line.trim().is_empty() {
            continue;
        }
        summary.requests += 1;
        if summary.requests > limits.max_requests {
            return Err(FileError(format!(
                "the file has more than {} requests (line {n})",
                limits.max_requests
            )));
        }
        match parse(n, &line, endpoint) {
            Ok(item) => {
                if matches!(item, Item::Bad(_)) {
                    summary.bad_lines += 1;
                }
                if let Some(first) = ids.insert(item.custom_id().to_string(), n) {
                    problems.push(format!(
                        "line {n}: custom_id '{}' is already used on line {first}",
                        item.custom_id()
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
        if problems.len() >= 20 {
            break;
        }
    }
    if !problems.is_empty() {
        return Err(FileError(problems.join("; ")));
    }
    if summary.requests == 0 {
        return Err(FileError("the file holds no request: a batch file has one JSON object per line".into()));
    }
    Ok(summary)
}

/// The file's lines with their 1-based numbers (`\r\n` endings accepted); an invalid UTF-8 or overlong line
/// is a file error.
pub fn lines<R: BufRead>(
    mut input: R,
    max: usize,
) -> impl Iterator<Item = (usize, Result<String, FileError>)> {
    let mut n = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        n += 1;
        let mut buf = Vec::new();
        match std::io::Read::take(&mut input, max as u64 + 1).read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) if buf.len() > max && !buf.ends_with(b"\n") => {
                done = true;
                Some((n, Err(FileError(format!("line {n} is longer than {max} bytes")))))
            }
            Ok(_) => {
                while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                    buf.pop();
                }
                match String::from_utf8(buf) {
                    Ok(s) => Some((n, Ok(s))),
                    Err(_) => {
                        done = true;
                        Some((n, Err(FileError(format!("line {n} is not UTF-8 text")))))
                    }
                }
            }
            Err(e) => {
                done = true;
                Some((n, Err(FileError(format!("cannot read line {n}: {e}")))))
            }
        }
    })
}

/// One non-empty line: a request that can run, or one whose error line says why. `Err`: the line has no
/// usable `custom_id` (a file error).
pub fn parse(n: usize, text: &str, endpoint: Option<BatchEndpoint>) -> Result<Item, String> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let Some(id) = custom_id_of_broken_line(text) else {
                return Err(format!("line {n} is not JSON ({e}) and names no custom_id"));
            };
            let error =
                ApiError::bad_request(format!("line {n} is not valid JSON: {e}")).with_code("invalid_json");
            return Ok(Item::Bad(BadLine { line: n, custom_id: id, error }));
        }
    };
    let Some(obj) = v.as_object() else {
        return Err(format!("line {n} is not a JSON object"));
    };
    let custom_id = match obj.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(format!("line {n}: custom_id is empty")),
        Some(_) => return Err(format!("line {n}: custom_id must be a string")),
        None => return Err(format!("line {n} has no custom_id")),
    };
    let bad = |error: ApiError| Ok(Item::Bad(BadLine { line: n, custom_id: custom_id.clone(), error }));
    match obj.get("method").and_then(Value::as_str) {
        Some(m) if m.eq_ignore_ascii_case("POST") => {}
        other => {
            return bad(ApiError::invalid_param(
                "method",
                format!("line {n}: method must be \"POST\", not {}", describe(other)),
            ))
        }
    }
    let url = obj.get("url").and_then(Value::as_str);
    let endpoint = match (url.and_then(BatchEndpoint::from_url), endpoint) {
        (Some(e), None) => e,
        (Some(e), Some(want)) if e == want => e,
        (_, want) => {
            let must = match want {
                Some(w) => format!("\"{}\", this batch's endpoint", w.url()),
                None => "\"/v1/chat/completions\" or \"/v1/completions\"".to_string(),
            };
            return bad(ApiError::invalid_param(
                "url",
                format!("line {n}: url must be {must}, not {}", describe(url)),
            )
            .with_code("invalid_url"));
        }
    };
    match obj.get("body") {
        Some(body @ Value::Object(_)) => {
            let origin = obj.get("quire").and_then(|q| {
                Some((q.get("template")?.as_str()?.to_string(), q.get("row")?.as_u64()? as usize))
            });
            Ok(Item::Run(Line {
                line: n,
                custom_id: custom_id.clone(),
                endpoint,
                body: body.clone(),
                origin,
            }))
        }
        _ => bad(ApiError::invalid_param("body", format!("line {n}: body must be a JSON object"))),
    }
}

fn describe(s: Option<&str>) -> String {
    s.map_or_else(|| "missing".to_string(), |s| format!("\"{s}\""))
}

/// `"custom_id": "…"` in a line that is not JSON, so its error line can still name it.
fn custom_id_of_broken_line(text: &str) -> Option<String> {
    let at = text.find("\"custom_id\"")? + "\"custom_id\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let id = &rest[..end];
    (!id.is_empty() && !id.contains('\\')).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: Option<BatchEndpoint> = Some(BatchEndpoint::Chat);

    fn check(text: &str) -> Result<Summary, FileError> {
        validate(text.as_bytes(), CHAT, &Limits::default())
    }

    fn line(id: &str, url: &str) -> String {
        format!(r#"{{"custom_id": "{id}", "method": "POST", "url": "{url}", "body": {{"messages": []}}}}"#)
    }

    #[test]
    fn good_and_bad_lines() {
        let text = [
            line("a", "/v1/chat/completions"),
            String::new(),
            line("b", "/v1/completions"),
            r#"{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": [1]}"#.into(),
            r#"{"custom_id": "d", "method": "GET", "url": "/v1/chat/completions", "body": {}}"#.into(),
            r#"{"custom_id": "e", "method": "POST", "url": "/v1/chat/completions", "body": {"#.into(),
        ]
        .join("\r\n");
        assert_eq!(check(&text).unwrap(), Summary { requests: 5, bad_lines: 4 });
        let items: Vec<Item> = lines(text.as_bytes(), Limits::default().max_line_bytes)
            .filter_map(|(n, l)| {
                let l = l.unwrap();
                (!l.trim().is_empty()).then(|| parse(n, &l, CHAT).unwrap())
            })
            .collect();
        let Item::Run(first) = &items[0] else { panic!() };
        assert_eq!((first.line, first.custom_id.as_str()), (1, "a"));
        let errs: Vec<(usize, String, Option<String>)> = items[1..]
            .iter()
            .map(|i| match i {
                Item::Bad(b) => (b.line, b.custom_id.clone(), b.error.param.clone()),
                Item::Run(_) => panic!("{i:?}"),
            })
            .collect();
        assert_eq!(
            errs,
            vec![
                (3, "b".into(), Some("url".into())),
                (4, "c".into(), Some("body".into())),
                (5, "d".into(), Some("method".into())),
                (6, "e".into(), None),
            ]
        );
    }

    #[test]
    fn whole_file_problems_name_their_lines() {
        let e = |t: &str| check(t).unwrap_err().0;
        assert!(e("").contains("no request"));
        assert!(e("\n\n").contains("no request"));
        assert!(e("name,price\nbottle,3\n").contains("line 1 is not JSON"));
        assert!(e(r#"[{"custom_id": "a"}]"#).contains("line 1 is not a JSON object"));
        let dup = [
            line("a", "/v1/chat/completions"),
            line("b", "/v1/chat/completions"),
            line("a", "/v1/chat/completions"),
        ]
        .join("\n");
        assert_eq!(e(&dup), "line 3: custom_id 'a' is already used on line 1");
        assert!(e(r#"{"method": "POST"}"#).contains("line 1 has no custom_id"));
        assert!(e(r#"{"custom_id": 5}"#).contains("must be a string"));
        // a file of bad lines is still a batch: each gets its error line
        let only_bad = r#"{"custom_id": "x", "url": "/v1/embeddings", "method": "POST", "body": {}}"#;
        assert_eq!(check(only_bad).unwrap(), Summary { requests: 1, bad_lines: 1 });
        let mut bad_utf8 = line("a", "/v1/chat/completions").into_bytes();
        bad_utf8.extend(b"\n\xff\xfe\n");
        assert!(validate(&bad_utf8[..], CHAT, &Limits::default())
            .unwrap_err()
            .0
            .contains("line 2 is not UTF-8"));
        let small = Limits { max_requests: 2, max_bytes: 1 << 20, max_line_bytes: 200 };
        let three = [
            line("a", "/v1/chat/completions"),
            line("b", "/v1/chat/completions"),
            line("c", "/v1/chat/completions"),
        ]
        .join("\n");
        assert!(validate(three.as_bytes(), CHAT, &small)
            .unwrap_err()
            .0
            .contains("more than 2 requests (line 3)"));
        let long = format!(r#"{{"custom_id": "a", "body": "{}"}}"#, "x".repeat(300));
        assert!(validate(long.as_bytes(), CHAT, &small)
            .unwrap_err()
            .0
            .contains("line 1 is longer than 200 bytes"));
        let tiny = Limits { max_bytes: 100, ..small };
        assert!(validate(three.as_bytes(), CHAT, &tiny).unwrap_err().0.contains("over the limit"));
    }
}
