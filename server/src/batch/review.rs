//! Review of a batch's texts before they are published (an extension of the Batch API, behind the web
//! page's Batch view): each request's prompt beside its result, an editor's verdict (`approved`,
//! `needs_changes`, `rejected`) and edited text, kept in SQLite so that every editor sees the same state and
//! a reload loses nothing; the approved texts exported as JSONL, CSV or a zip of Markdown files.
//!
//! `GET /v1/batches/{id}/items?offset=&limit=&review=`, `POST /v1/batches/{id}/items/{custom_id}/review`
//! (`{"status", "text"}`), `GET /v1/batches/{id}/export?format=jsonl|csv|zip&review=approved|all`.

use std::collections::HashMap;
use std::io::{BufReader, Write};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::input::{self, Item};
use super::service::Batches;
use super::store::{BatchRow, Review};
use crate::errors::{ApiError, ApiResult};
use crate::routes::{json_response, BatchEndpoint, ResponseBody};
use crate::state::{unix_now, AppState};

/// The verdicts an editor can give (`pending`: none yet).
pub const VERDICTS: [&str; 4] = ["pending", "approved", "needs_changes", "rejected"];

/// One request of the input file, as the review shows it.
struct Input {
    custom_id: String,
    line: usize,
    row: Option<usize>,
    template: Option<String>,
    /// The last user message (chat) or the prompt (completions).
    prompt: String,
}

fn batches(state: &AppState) -> ApiResult<&Batches> {
    state.batches.as_deref().ok_or_else(|| {
        ApiError::not_found("the batch API is off on this server: start it with --data-dir DIR")
            .with_code("batches_off")
    })
}

fn store_error(e: anyhow::Error) -> ApiError {
    ApiError::internal(format!("the batch store failed: {e:#}"))
}

fn batch_row(b: &Batches, id: &str) -> ApiResult<BatchRow> {
    b.store
        .batch(id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no batch with id '{id}'")).with_param("batch_id"))
}

/// The batch's requests in file order.
fn inputs(b: &Batches, batch: &BatchRow) -> ApiResult<Vec<Input>> {
    let endpoint = BatchEndpoint::from_url(&batch.endpoint).unwrap_or(BatchEndpoint::Chat);
    let f = std::fs::File::open(b.store.file_path(&batch.input_file_id))
        .map_err(|e| ApiError::internal(format!("cannot read the batch's input file: {e}")))?;
    let mut out = Vec::new();
    for (n, l) in input::lines(BufReader::new(f), b.limits.max_line_bytes) {
        let Ok(l) = l else { break };
        if l.trim().is_empty() {
            continue;
        }
        match input::parse(n, &l, Some(endpoint)) {
            Ok(Item::Run(line)) => {
                let prompt = match line.body.get("messages").and_then(Value::as_array) {
                    Some(m) => m
                        .iter()
                        .rev()
                        .find(|m| m["role"] == "user")
                        .map(|m| message_text(&m["content"]))
                        .unwrap_or_default(),
                    None => line.body.get("prompt").map(message_text).unwrap_or_default(),
                };
                let (template, row) = line.origin.map_or((None, None), |(t, r)| (Some(t), Some(r)));
                out.push(Input { custom_id: line.custom_id, line: n, row, template, prompt });
            }
            Ok(Item::Bad(bad)) => out.push(Input {
                custom_id: bad.custom_id,
                line: n,
                row: None,
                template: None,
                prompt: String::new(),
            }),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// A message's text: a string, or the text parts of a content array.
fn message_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// The generated text of an output line, or why there is none.
fn result_text(ok: bool, line: &Value) -> (Option<String>, Option<String>) {
    let body = &line["response"]["body"];
    if ok {
        let choice = &body["choices"][0];
        let text = choice["message"]["content"].as_str().or_else(|| choice["text"].as_str());
        return (Some(text.unwrap_or_default().to_string()), None);
    }
    let msg = line["error"]["message"].as_str().or_else(|| body["error"]["message"].as_str());
    (None, Some(msg.unwrap_or("the request failed").to_string()))
}

fn item_json(i: &Input, result: Option<(bool, Value)>, review: Option<&Review>) -> Value {
    let (state, text, error, provenance) = match &result {
        None => ("queued", None, None, Value::Null),
        Some((ok, line)) => {
            let (text, error) = result_text(*ok, line);
            (if *ok { "completed" } else { "failed" }, text, error, line["quire"].clone())
        }
    };
    json!({
        "custom_id": i.custom_id, "line": i.line, "row": i.row, "template": i.template, "prompt": i.prompt,
        "state": state, "text": text, "error": error, "quire": provenance,
        "review": review.map_or_else(
            || json!({"status": "pending", "text": null, "updated_at": null}),
            |r| json!({"status": r.status, "text": r.text, "updated_at": r.updated_at}),
        ),
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

fn review_filter(query: &str, default: &str) -> ApiResult<String> {
    let f = query_param(query, "review").unwrap_or_else(|| default.to_string());
    if f == "all" || VERDICTS.contains(&f.as_str()) {
        Ok(f)
    } else {
        Err(ApiError::invalid_param(
            "review",
            format!("review must be all or one of {}", VERDICTS.join(", ")),
        ))
    }
}

fn verdict<'a>(reviews: &'a HashMap<String, Review>, id: &str) -> &'a str {
    reviews.get(id).map_or("pending", |r| r.status.as_str())
}

/// `GET /v1/batches/{id}/items`: a page of requests with their results and reviews, and the counts of
/// each verdict over the whole batch.
pub fn list_items(state: &AppState, id: &str, query: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let batch = batch_row(b, id)?;
    let num =
        |k: &str, default: usize, max: usize| -> ApiResult<usize> {
            match query_param(query, k) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    ApiError::invalid_param(k, format!("{k} must be an integer from 0 to {max}"))
                }),
            }
        };
    let (offset, limit) = (num("offset", 0, usize::MAX)?, num("limit", 50, 500)?.max(1));
    let filter = review_filter(query, "all")?;
    let reviews = b.store.reviews(id).map_err(store_error)?;
    let all = inputs(b, &batch)?;
    let mut counts: HashMap<&str, usize> = VERDICTS.iter().map(|v| (*v, 0)).collect();
    for i in &all {
        *counts.entry(verdict(&reviews, &i.custom_id)).or_default() += 1;
    }
    let shown: Vec<&Input> =
        all.iter().filter(|i| filter == "all" || verdict(&reviews, &i.custom_id) == filter).collect();
    let mut data = Vec::new();
    for i in shown.iter().skip(offset).take(limit) {
        let result = b.store.result(id, &i.custom_id).map_err(store_error)?;
        data.push(item_json(i, result, reviews.get(&i.custom_id)));
    }
    let v = json!({
        "object": "list", "data": data, "total": shown.len(), "offset": offset,
        "has_more": offset + limit < shown.len(), "review_counts": counts, "batch": batch.to_json(),
    });
    Ok(json_response(StatusCode::OK, &v))
}

/// `POST /v1/batches/{id}/items/{custom_id}/review`: `status` (a verdict) and/or `text` (the edited text;
/// `null` goes back to the model's). Only a finished request can be reviewed.
pub fn set_review(
    state: &AppState,
    id: &str,
    custom_id: &str,
    body: &[u8],
) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let batch = batch_row(b, id)?;
    let v = crate::openai::parse_json_object(body)?;
    let all = inputs(b, &batch)?;
    let item = all.iter().find(|i| i.custom_id == custom_id).ok_or_else(|| {
        ApiError::not_found(format!("batch '{id}' has no request '{custom_id}'")).with_param("custom_id")
    })?;
    let result = b.store.result(id, custom_id).map_err(store_error)?;
    if result.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!("request '{custom_id}' has not run yet: there is nothing to review"),
        ));
    }
    let old = b.store.reviews(id).map_err(store_error)?.remove(custom_id);
    let status = match v.get("status") {
        None => old.as_ref().map_or("pending".to_string(), |r| r.status.clone()),
        Some(Value::String(s)) if VERDICTS.contains(&s.as_str()) => s.clone(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "status",
                format!("status must be one of {}", VERDICTS.join(", ")),
            ))
        }
    };
    let text = match v.get("text") {
        None => old.as_ref().and_then(|r| r.text.clone()),
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid_param("text", "text must be a string or null")),
    };
    let review = Review { status, text, updated_at: unix_now() };
    b.store.set_review(id, custom_id, &review).map_err(store_error)?;
    let reviews = b.store.reviews(id).map_err(store_error)?;
    Ok(json_response(StatusCode::OK, &item_json(item, result, reviews.get(custom_id))))
}

/// `GET /v1/batches/{id}/export`: the reviewed texts (edited where edited) as a download.
pub fn export(state: &AppState, id: &str, query: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let batch = batch_row(b, id)?;
    let filter = review_filter(query, "approved")?;
    let format = query_param(query, "format").unwrap_or_else(|| "jsonl".into());
    let reviews = b.store.reviews(id).map_err(store_error)?;
    let mut rows = Vec::new();
    for i in inputs(b, &batch)? {
        if filter != "all" && verdict(&reviews, &i.custom_id) != filter {
            continue;
        }
        let Some((ok, line)) = b.store.result(id, &i.custom_id).map_err(store_error)? else { continue };
        let (Some(model_text), _) = result_text(ok, &line) else { continue };
        let review = reviews.get(&i.custom_id);
        let edited = review.and_then(|r| r.text.clone());
        rows.push(json!({
            "custom_id": i.custom_id, "row": i.row, "template": i.template,
            "review": verdict(&reviews, &i.custom_id), "edited": edited.is_some(),
            "text": edited.unwrap_or(model_text), "prompt": i.prompt, "quire": line["quire"],
        }));
    }
    let name = format!("{id}_{filter}");
    let (bytes, content_type, ext) = match format.as_str() {
        "jsonl" => {
            let mut out = Vec::new();
            for r in &rows {
                out.extend(r.to_string().into_bytes());
                out.push(b'\n');
            }
            (out, "application/jsonl", "jsonl")
        }
        "csv" => {
            (to_csv(&rows).map_err(|e| ApiError::internal(e.to_string()))?, "text/csv; charset=utf-8", "csv")
        }
        "zip" => (to_zip(&rows).map_err(|e| ApiError::internal(e.to_string()))?, "application/zip", "zip"),
        _ => return Err(ApiError::invalid_param("format", "format must be jsonl, csv or zip")),
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

fn to_csv(rows: &[Value]) -> csv::Result<Vec<u8>> {
    // a BOM first: Excel then reads the file as UTF-8 (Chinese text stays readable)
    let mut w = csv::Writer::from_writer(b"\xef\xbb\xbf".to_vec());
    w.write_record(["custom_id", "row", "template", "review", "edited", "text"])?;
    for r in rows {
        let s = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        w.write_record([s("custom_id"), s("row"), s("template"), s("review"), s("edited"), s("text")])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// A file name from a custom_id: path separators, control and reserved characters replaced.
fn file_name(id: &str) -> String {
    let s: String =
        id.chars().map(|c| if c.is_control() || "/\\:*?\"<>|".contains(c) { '_' } else { c }).collect();
    let s = s.trim_start_matches('.').trim();
    if s.is_empty() {
        "item".into()
    } else {
        s.chars().take(100).collect()
    }
}

fn to_zip(rows: &[Value]) -> zip::result::ZipResult<Vec<u8>> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut used = std::collections::HashSet::new();
    for r in rows {
        let base = file_name(r["custom_id"].as_str().unwrap_or_default());
        let mut name = format!("{base}.md");
        let mut k = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}-{k}.md");
            k += 1;
        }
        z.start_file(name, opts)?;
        let q = &r["quire"];
        let mut front = vec![format!("custom_id: {}", r["custom_id"])];
        for (k, v) in [
            ("template", &r["template"]),
            ("row", &r["row"]),
            ("model", &q["model"]),
            ("model_sha256", &q["model_sha256"]),
            ("seed", &q["seed"]),
        ] {
            if !v.is_null() {
                front.push(format!("{k}: {v}"));
            }
        }
        front.push(format!("review: {}", r["review"]));
        front.push(format!("edited: {}", r["edited"]));
        write!(z, "---\n{}\n---\n\n{}\n", front.join("\n"), r["text"].as_str().unwrap_or_default())?;
    }
    Ok(z.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_name("sku-1"), "sku-1");
        assert_eq!(file_name("保温杯"), "保温杯");
        assert_eq!(file_name("..."), "item");
        assert_eq!(file_name("a\nb"), "a_b");
    }

    #[test]
    fn csv_keeps_commas_quotes_and_chinese() {
        let rows =
            [json!({"custom_id": "a", "row": 1, "template": "t", "review": "approved", "edited": true,
                           "text": "Kettle, \"1.7 L\"\n保温"})];
        let out = to_csv(&rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut r = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[5], "Kettle, \"1.7 L\"\n保温");
        assert_eq!(&rec[4], "true");
    }
}
