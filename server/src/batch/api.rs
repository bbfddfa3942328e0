//! `/v1/files` and `/v1/batches` as OpenAI defines them, so the official clients work unmodified.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::input;
use super::service::Batches;
use super::store::{BatchRow, FileRow, Status};
use crate::errors::{ApiError, ApiResult};
use crate::routes::{json_response, BatchEndpoint, ResponseBody};
use crate::sse::BoxError;
use crate::state::{unix_now, AppState};

fn batches(state: &AppState) -> ApiResult<&Batches> {
    state.batches.as_deref().ok_or_else(|| {
        ApiError::not_found("the batch API is off on this server: start it with --data-dir DIR")
            .with_code("batches_off")
    })
}

fn store_error(e: anyhow::Error) -> ApiError {
    ApiError::internal(format!("the batch store failed: {e:#}"))
}

fn random_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{:024x}", n & ((1u128 << 96) - 1))
}

fn no_file(id: &str) -> ApiError {
    ApiError::not_found(format!("no file with id '{id}'")).with_param("file_id")
}

/// `POST /v1/files`: multipart `purpose` (`batch`, or `user_data` for the rows of a template) and `file`.
/// The file goes to disk as it arrives (never whole in memory), over `--max-upload` is a 413, and a batch
/// file is validated before it is accepted.
pub async fn create_file(state: &AppState, req: Request<Incoming>) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let limit = b.max_upload;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + (64 << 10)) {
        // Read (and drop) what the client sends first, up to twice the limit: clients that write the whole
        // body before reading the answer (most do) see the 413 instead of a reset connection.
        let mut body = req.into_body();
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > limit.saturating_mul(2) {
                break;
            }
        }
        return Err(upload_too_large(limit));
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            ApiError::bad_request("send the file as multipart/form-data with the fields 'purpose' and 'file'")
        })?;
    let mut form = multer::Multipart::new(http_body_util::BodyDataStream::new(req.into_body()), boundary);
    let id = random_id("file-");
    let path = b.store.file_path(&id);
    let (mut purpose, mut upload) = (None, None);
    let result: ApiResult<()> = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            match field.name() {
                Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
                Some("file") => {
                    let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                    let mut f = tokio::fs::File::create(&path)
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    let mut bytes = 0u64;
                    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                        bytes += chunk.len() as u64;
                        if bytes > limit {
                            return Err(upload_too_large(limit));
                        }
                        f.write_all(&chunk).await.map_err(|e| ApiError::internal(e.to_string()))?;
                    }
                    f.sync_all().await.map_err(|e| ApiError::internal(e.to_string()))?;
                    upload = Some((name, bytes));
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let fail = |e: ApiError| {
        let _ = std::fs::remove_file(&path);
        Err(e)
    };
    if let Err(e) = result {
        return fail(e);
    }
    let purpose = match purpose.as_deref() {
        Some(p @ ("batch" | "user_data")) => p.to_string(),
        Some(p) => {
            return fail(ApiError::invalid_param(
                "purpose",
                format!("purpose '{p}' is not supported here; use 'batch' (a batch file) or 'user_data' (rows for a template)"),
            ))
        }
        None => return fail(ApiError::invalid_param("purpose", "the form has no 'purpose' field")),
    };
    let Some((filename, bytes)) = upload else {
        return fail(ApiError::invalid_param("file", "the form has no 'file' field"));
    };
    if purpose == "batch" {
        let limits = b.limits;
        let p = path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p).map_err(|e| input::FileError(e.to_string()))?;
            input::validate(std::io::BufReader::new(f), None, &limits)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = checked {
            return fail(
                ApiError::invalid_param("file", format!("not a usable batch file: {e}"))
                    .with_code("invalid_file"),
            );
        }
    }
    let row = FileRow { id, filename, purpose, bytes, created_at: unix_now() };
    b.store.add_file(&row).map_err(store_error)?;
    Ok(json_response(StatusCode::OK, &row.to_json()))
}

fn upload_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the file is larger than this server's upload limit of {limit} bytes (--max-upload)"),
    )
    .with_code("file_too_large")
}

fn multipart_error(e: multer::Error) -> ApiError {
    ApiError::bad_request(format!("cannot read the multipart form: {e}"))
}

/// `GET /v1/files`.
pub fn list_files(state: &AppState, query: &str) -> ApiResult<Response<ResponseBody>> {
    let purpose = query_param(query, "purpose");
    let files = batches(state)?.store.files(purpose.as_deref()).map_err(store_error)?;
    let data: Vec<Value> = files.iter().map(FileRow::to_json).collect();
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": data, "has_more": false})))
}

/// `GET /v1/files/{id}`.
pub fn get_file(state: &AppState, id: &str) -> ApiResult<Response<ResponseBody>> {
    let f = batches(state)?.store.file(id).map_err(store_error)?.ok_or_else(|| no_file(id))?;
    Ok(json_response(StatusCode::OK, &f.to_json()))
}

/// `DELETE /v1/files/{id}`.
pub fn delete_file(state: &AppState, id: &str) -> ApiResult<Response<ResponseBody>> {
    if !batches(state)?.store.delete_file(id).map_err(store_error)? {
        return Err(no_file(id));
    }
    Ok(json_response(StatusCode::OK, &json!({"id": id, "object": "file", "deleted": true})))
}

/// `GET /v1/files/{id}/content`: the bytes, streamed from disk.
pub async fn file_content(state: &AppState, id: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    b.store.file(id).map_err(store_error)?.ok_or_else(|| no_file(id))?;
    let file = std::fs::File::open(b.store.file_path(id)).map_err(|_| no_file(id))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        loop {
            let mut buf = vec![0u8; 64 << 10];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed_unsync());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    Ok(r)
}

/// A response body fed by a channel of chunks.
struct ChannelBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|c| c.map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BoxError)))
    }
}

fn batch_json(b: &Batches, row: &BatchRow) -> Value {
    let mut v = row.to_json();
    let info = b.queue_info(row);
    if !info.is_null() {
        v["quire"] = info;
    }
    v
}

/// `POST /v1/batches`: `input_file_id`, `endpoint`, `completion_window` ("24h"), `metadata`; extension
/// `template`: a template's id, `input_file_id` then being its rows (`purpose=user_data`, CSV or JSONL),
/// rendered now into the batch's input file (a row the template cannot use is a 400 naming it).
pub async fn create_batch(state: &AppState, body: &[u8]) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let v = crate::openai::parse_json_object(body)?;
    let str_field = |k: &str| -> ApiResult<String> {
        match v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::invalid_param(k, format!("'{k}' must be a string"))),
            None => Err(ApiError::invalid_param(k, format!("'{k}' is required"))),
        }
    };
    let input_file_id = str_field("input_file_id")?;
    let endpoint = str_field("endpoint")?;
    let endpoint = BatchEndpoint::from_url(&endpoint).ok_or_else(|| {
        ApiError::invalid_param(
            "endpoint",
            format!("endpoint '{endpoint}' is not one of /v1/chat/completions, /v1/completions"),
        )
    })?;
    let window = str_field("completion_window")?;
    if window != "24h" {
        return Err(ApiError::invalid_param("completion_window", "completion_window must be \"24h\""));
    }
    let metadata = match v.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(m)) if m.len() <= 16 && m.values().all(Value::is_string) => {
            Value::Object(m.clone())
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "metadata",
                "metadata must be an object of at most 16 string values",
            ))
        }
    };
    let file = b
        .store
        .file(&input_file_id)
        .map_err(store_error)?
        .ok_or_else(|| no_file(&input_file_id).with_param("input_file_id"))?;
    let (input_file_id, metadata) = match v.get("template") {
        None | Some(Value::Null) => {
            if file.purpose != "batch" {
                return Err(ApiError::invalid_param(
                    "input_file_id",
                    format!(
                        "file '{}' has purpose '{}', not 'batch' (rows for a template need 'template')",
                        file.id, file.purpose
                    ),
                ));
            }
            (input_file_id, metadata)
        }
        Some(Value::String(t)) => {
            if endpoint != BatchEndpoint::Chat {
                return Err(ApiError::invalid_param(
                    "endpoint",
                    "a template makes /v1/chat/completions requests",
                ));
            }
            let rendered = render_template_batch(state, b, t, &file).await?;
            let mut metadata = match metadata {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            for (k, val) in [("template", t.clone()), ("data_file_id", file.id.clone())] {
                if metadata.len() < 16 {
                    metadata.entry(k).or_insert(Value::String(val));
                }
            }
            (rendered, Value::Object(metadata))
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "template",
                "'template' must be a template's id (GET /v1/templates)",
            ))
        }
    };
    let now = unix_now();
    let row = BatchRow {
        id: random_id("batch_"),
        input_file_id,
        endpoint: endpoint.url().to_string(),
        completion_window: window,
        metadata,
        status: Status::Validating,
        created_at: now,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        cancelling_at: None,
        cancelled_at: None,
        expires_at: now + 24 * 3600,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        total: 0,
        completed: 0,
        failed: 0,
    };
    b.store.add_batch(&row).map_err(store_error)?;
    b.wake();
    Ok(json_response(StatusCode::OK, &batch_json(b, &row)))
}

/// Renders template `id` over the rows in `data` into a new batch input file; its id.
async fn render_template_batch(state: &AppState, b: &Batches, id: &str, data: &FileRow) -> ApiResult<String> {
    let template = state.templates.get(id).ok_or_else(|| {
        let ids: Vec<&str> = state.templates.all().iter().map(|t| t.id.as_str()).collect();
        ApiError::invalid_param(
            "template",
            format!("no template '{id}' (this server has: {})", ids.join(", ")),
        )
    })?;
    let template =
        crate::templates::Template::parse(&template.id, &template.source).map_err(ApiError::internal)?;
    if data.purpose != "user_data" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!(
                "file '{}' has purpose '{}': a template's rows are uploaded with purpose 'user_data'",
                data.id, data.purpose
            ),
        ));
    }
    let out_id = random_id("file-");
    let (src, dst) = (b.store.file_path(&data.id), b.store.file_path(&out_id));
    let (filename, max_rows) = (data.filename.clone(), b.limits.max_requests);
    let rendered = tokio::task::spawn_blocking(move || -> Result<(usize, u64), input::FileError> {
        let text =
            std::fs::read(&src).map_err(|e| input::FileError(format!("cannot read the data file: {e}")))?;
        let format = super::data::Format::of(&filename, &text[..text.len().min(64)]);
        let rows = super::data::read_rows(&text[..], format, max_rows)?;
        let f = std::fs::File::create(&dst).map_err(|e| input::FileError(e.to_string()))?;
        let mut w = std::io::BufWriter::new(f);
        let n = super::data::write_requests(&template, &rows, &mut w)?;
        let f = w.into_inner().map_err(|e| input::FileError(e.to_string()))?;
        f.sync_all().map_err(|e| input::FileError(e.to_string()))?;
        Ok((n, f.metadata().map(|m| m.len()).unwrap_or(0)))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let (_, bytes) = match rendered {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(b.store.file_path(&out_id));
            return Err(ApiError::invalid_param("input_file_id", format!("{}: {e}", data.filename))
                .with_code("invalid_file"));
        }
    };
    let stem = data.filename.rsplit_once('.').map_or(data.filename.as_str(), |(s, _)| s);
    let row = FileRow {
        id: out_id.clone(),
        filename: format!("{stem}.{id}.requests.jsonl"),
        purpose: "batch".into(),
        bytes,
        created_at: unix_now(),
    };
    b.store.add_file(&row).map_err(store_error)?;
    Ok(out_id)
}

fn no_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("no batch with id '{id}'")).with_param("batch_id")
}

/// `GET /v1/batches/{id}`.
pub fn get_batch(state: &AppState, id: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let row = b.store.batch(id).map_err(store_error)?.ok_or_else(|| no_batch(id))?;
    Ok(json_response(StatusCode::OK, &batch_json(b, &row)))
}

/// `GET /v1/batches?limit=&after=`: newest first.
pub fn list_batches(state: &AppState, query: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let limit = match query_param(query, "limit") {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid_param("limit", "limit must be an integer from 1 to 100"))?,
    };
    let after = query_param(query, "after");
    let (rows, more) = b.store.batches(limit, after.as_deref()).map_err(store_error)?;
    let data: Vec<Value> = rows.iter().map(|r| batch_json(b, r)).collect();
    let v = json!({
        "object": "list", "data": data, "has_more": more,
        "first_id": rows.first().map(|r| &r.id), "last_id": rows.last().map(|r| &r.id),
    });
    Ok(json_response(StatusCode::OK, &v))
}

/// `POST /v1/batches/{id}/cancel`: a validating or running batch stops; what finished stays in its files.
pub fn cancel_batch(state: &AppState, id: &str) -> ApiResult<Response<ResponseBody>> {
    let b = batches(state)?;
    let row = b.store.batch(id).map_err(store_error)?.ok_or_else(|| no_batch(id))?;
    let moved = b
        .store
        .set_status(id, Status::Cancelling, &[Status::Validating, Status::InProgress], unix_now())
        .map_err(store_error)?;
    if !moved && !matches!(row.status, Status::Cancelling | Status::Cancelled) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!(
                "batch '{id}' is {}: only a validating or in_progress batch can be cancelled",
                row.status.name()
            ),
        ));
    }
    b.stop_if_running(id);
    let row = b.store.batch(id).map_err(store_error)?.ok_or_else(|| no_batch(id))?;
    Ok(json_response(StatusCode::OK, &batch_json(b, &row)))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}
