//! Routing, authentication, CORS, body limits and the endpoint handlers.
//!
//! Unknown model names: a request naming a model other than the one loaded is served anyway, with a
//! warning in the log. There is exactly one model per server, and OpenAI clients and integrations
//! routinely send a hard-coded name (`gpt-4o-mini`, an older file name); refusing them with 404 would break
//! them for no benefit. `GET /v1/models/{id}` does answer 404 for other names, since that asks a question.
//!
//! Authentication: with `--api-key`, every endpoint requires `Authorization: Bearer KEY` except `/health`
//! (load balancers probe it without credentials), CORS preflights (browsers never send credentials on
//! them) and the static chat page at `/` (it holds no data; every API call it makes carries the key).

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use quire_engine::chat::RenderOptions;
use quire_engine::generate::{Engine, GenerateParams, PromptError, Thinking, Trigger};
use quire_engine::reasoning::ReasoningSplit;
use quire_engine::tools::ToolCallSplit;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::batch;
use crate::config;
use crate::errors::{ApiError, ApiResult};
use crate::metrics::Snapshot;
use crate::openai::{self, Answer, GrammarRequest, PromptInput, ResponseMeta, SamplingRequest, UsageCounts};
use crate::request_log::RequestLog;
use crate::sse::{BoxError, ChatSse, CompletionSse, EventStream, PendingLogprobs, PlainText, StreamFormat};
use crate::state::{unix_now, AppState, LoadState, Ready};
use quire_engine::sampler::TokenLogprob;
use quire_engine::scheduler::{self, Event, Priority, SubmitError, Usage};

/// Body type of every response.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The chat page: server/web's sources bundled into one file by scripts/build-web.sh.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// Where a request goes. The `endpoint` names double as log fields and metrics labels.
#[derive(Clone, Debug, PartialEq)]
enum Route {
    Page,
    Health,
    Metrics,
    Models,
    Model(String),
    Chat,
    Completions,
    Generate,
    Stream,
    Files,
    File(String),
    FileContent(String),
    Batches,
    Batch(String),
    BatchCancel(String),
    BatchItems(String),
    BatchReview(String, String),
    BatchExport(String),
    Templates,
    TemplateRender,
    Preflight,
    WrongMethod(&'static str),
    NotFound,
}

impl Route {
    fn resolve(method: &Method, path: &str) -> Route {
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        // Clients configured with a base URL without `/v1` call the bare paths; accept both.
        let api = path.strip_prefix("/v1").filter(|p| p.starts_with('/')).unwrap_or(path);
        let (route, allowed): (Route, &'static str) = match api {
            "/" | "/index.html" => (Route::Page, "GET"),
            "/health" => (Route::Health, "GET"),
            "/metrics" => (Route::Metrics, "GET"),
            "/models" => (Route::Models, "GET"),
            p if p.starts_with("/models/") => (Route::Model(p["/models/".len()..].to_string()), "GET"),
            "/chat/completions" => (Route::Chat, "POST"),
            "/completions" => (Route::Completions, "POST"),
            "/generate" => (Route::Generate, "POST"),
            "/stream" => (Route::Stream, "GET, POST"),
            "/files" => (Route::Files, "GET, POST"),
            "/batches" => (Route::Batches, "GET, POST"),
            "/templates" => (Route::Templates, "GET"),
            "/templates/render" => (Route::TemplateRender, "POST"),
            p => match Route::resource(p) {
                Some(r) => r,
                None => return Route::NotFound,
            },
        };
        if method == Method::OPTIONS {
            return Route::Preflight;
        }
        let ok = allowed.split(", ").any(|m| m == method.as_str());
        if ok {
            route
        } else {
            Route::WrongMethod(allowed)
        }
    }

    /// `/files/{id}`, `/files/{id}/content`, `/batches/{id}`, `/batches/{id}/cancel`.
    fn resource(p: &str) -> Option<(Route, &'static str)> {
        let id = |rest: &str| (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string());
        if let Some(rest) = p.strip_prefix("/files/") {
            if let Some(f) = rest.strip_suffix("/content") {
                return id(f).map(|f| (Route::FileContent(f), "GET"));
            }
            return id(rest).map(|f| (Route::File(f), "GET, DELETE"));
        }
        let rest = p.strip_prefix("/batches/")?;
        if let Some(b) = rest.strip_suffix("/cancel") {
            return id(b).map(|b| (Route::BatchCancel(b), "POST"));
        }
        if let Some(b) = rest.strip_suffix("/items") {
            return id(b).map(|b| (Route::BatchItems(b), "GET"));
        }
        if let Some(b) = rest.strip_suffix("/export") {
            return id(b).map(|b| (Route::BatchExport(b), "GET"));
        }
        if let Some((b, item)) = rest.split_once("/items/") {
            let item = item.strip_suffix("/review")?;
            let custom_id = percent_encoding::percent_decode_str(item).decode_utf8().ok()?.into_owned();
            return Some((Route::BatchReview(id(b)?, custom_id), "POST")).filter(|_| !item.is_empty());
        }
        id(rest).map(|b| (Route::Batch(b), "GET"))
    }

    fn endpoint(&self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::Models => "/v1/models",
            Route::Model(_) => "/v1/models/{id}",
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Generate => "/generate",
            Route::Stream => "/stream",
            Route::Files => "/v1/files",
            Route::File(_) => "/v1/files/{id}",
            Route::FileContent(_) => "/v1/files/{id}/content",
            Route::Batches => "/v1/batches",
            Route::Batch(_) => "/v1/batches/{id}",
            Route::BatchCancel(_) => "/v1/batches/{id}/cancel",
            Route::BatchItems(_) => "/v1/batches/{id}/items",
            Route::BatchReview(..) => "/v1/batches/{id}/items/{custom_id}/review",
            Route::BatchExport(_) => "/v1/batches/{id}/export",
            Route::Templates => "/v1/templates",
            Route::TemplateRender => "/v1/templates/render",
            Route::Preflight => "OPTIONS",
            Route::WrongMethod(_) | Route::NotFound => "other",
        }
    }

    fn needs_auth(&self) -> bool {
        !matches!(self, Route::Health | Route::Page | Route::Preflight)
    }
}

/// Serve one request. Never fails: every error becomes an OpenAI-style error response.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<ResponseBody> {
    let route = Route::resolve(req.method(), req.uri().path());
    let log = RequestLog::new(
        state.next_request_id(),
        req.method().as_str(),
        route.endpoint(),
        state.metrics.clone(),
    );
    let mut resp = match dispatch(&state, &route, req, &log).await {
        Ok(r) => r,
        Err(e) => {
            log.set_error(&e.message);
            error_response(&e)
        }
    };
    log.set_status(resp.status().as_u16());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&log.id()) {
        h.insert("x-request-id", v);
    }
    if let Some(origin) = &state.cfg.cors {
        add_cors(h, origin);
    }
    resp
}

async fn dispatch(
    state: &Arc<AppState>,
    route: &Route,
    req: Request<Incoming>,
    log: &RequestLog,
) -> ApiResult<Response<ResponseBody>> {
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if !config::host_allowed(&state.cfg.host, &state.cfg.allowed_hosts, host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!(
                "host '{}' is not allowed: this server listens on a loopback address and answers only \
                 localhost names (a web page could otherwise reach it through DNS rebinding); \
                 start it with --allowed-hosts NAME to accept another",
                host.unwrap_or_default()
            ),
        )
        .with_code("host_not_allowed"));
    }
    if route.needs_auth() {
        check_auth(state.cfg.api_key.as_deref(), req.headers())?;
    }
    match route {
        Route::Page => Ok(text_response(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML)),
        Route::Health => Ok(health(state)),
        Route::Metrics => Ok(metrics(state)),
        Route::Models => {
            Ok(json_response(StatusCode::OK, &json!({ "object": "list", "data": [model_card(state)] })))
        }
        Route::Model(id) if *id == state.cfg.model_name => {
            Ok(json_response(StatusCode::OK, &model_card(state)))
        }
        Route::Model(id) => Err(ApiError::not_found(format!(
            "model '{id}' does not exist; this server serves '{}'",
            state.cfg.model_name
        ))
        .with_param("model")
        .with_code("model_not_found")),
        Route::Preflight => Ok(preflight(state, req.headers())),
        Route::WrongMethod(allowed) => {
            let mut resp =
                error_response(&ApiError::method_not_allowed(req.method().as_str(), req.uri().path()));
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            Ok(resp)
        }
        Route::NotFound => {
            Err(ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.uri().path())))
        }
        Route::Chat => {
            let ready = state.ready()?;
            let body = read_body(state, req).await?;
            chat(state, ready, &body, log, Priority::Interactive).await
        }
        Route::Completions => {
            let ready = state.ready()?;
            let body = read_body(state, req).await?;
            completions(state, ready, &body, log, Priority::Interactive).await
        }
        Route::Generate | Route::Stream => {
            let ready = state.ready()?;
            let map = if req.method() == Method::GET {
                openai::query_to_object(req.uri().query().unwrap_or(""))?
            } else {
                openai::parse_json_object(&read_body(state, req).await?)?
            };
            simple(state, ready, &openai::parse_simple(&map)?, *route == Route::Stream, log).await
        }
        Route::Files if req.method() == Method::POST => batch::api::create_file(state, req).await,
        Route::Files => batch::api::list_files(state, req.uri().query().unwrap_or("")),
        Route::File(id) if req.method() == Method::DELETE => batch::api::delete_file(state, id),
        Route::File(id) => batch::api::get_file(state, id),
        Route::FileContent(id) => batch::api::file_content(state, id).await,
        Route::Batches if req.method() == Method::POST => {
            let body = read_body(state, req).await?;
            batch::api::create_batch(state, &body).await
        }
        Route::Batches => batch::api::list_batches(state, req.uri().query().unwrap_or("")),
        Route::Batch(id) => batch::api::get_batch(state, id),
        Route::BatchCancel(id) => batch::api::cancel_batch(state, id),
        Route::BatchItems(id) => batch::review::list_items(state, id, req.uri().query().unwrap_or("")),
        Route::BatchReview(id, custom_id) => {
            let body = read_body(state, req).await?;
            batch::review::set_review(state, id, custom_id, &body)
        }
        Route::BatchExport(id) => batch::review::export(state, id, req.uri().query().unwrap_or("")),
        Route::Templates => {
            let data: Vec<Value> = state.templates.all().iter().map(|t| t.to_json()).collect();
            Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": data})))
        }
        Route::TemplateRender => {
            let body = read_body(state, req).await?;
            render_template(state, &body)
        }
    }
}

/// `POST /v1/templates/render`: `{"template": id, "values": {field: value}}` → the request body it makes
/// (`messages` and the template's settings); the page's template forms use it, so a template renders the
/// same in the chat page as in a batch.
fn render_template(state: &AppState, body: &[u8]) -> ApiResult<Response<ResponseBody>> {
    let v = openai::parse_json_object(body)?;
    let id = v
        .get("template")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_param("template", "'template' (a template's id) is required"))?;
    let t = state
        .templates
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no template '{id}'")).with_param("template"))?;
    let values = match v.get("values") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ApiError::invalid_param("values", "'values' must be an object")),
    };
    let partial = v.get("partial").and_then(Value::as_bool).unwrap_or(false);
    let rendered = if partial { t.render_preview(&values) } else { t.render_body(&values) };
    let body = rendered.map_err(|e| ApiError::invalid_param("values", e))?;
    Ok(json_response(StatusCode::OK, &body))
}

// ---------------------------------------------------------------------------------------------------------
// Plumbing: responses, auth, CORS, body

fn full(b: impl Into<Bytes>) -> ResponseBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<ResponseBody> {
    text_response(status, "application/json", v.to_string())
}

/// The error as JSON, with `Retry-After` when it has one, and `Connection: close` when the request body
/// may not have been read to its end (the connection cannot be reused then).
pub fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let mut r = json_response(e.status, &e.to_json());
    let h = r.headers_mut();
    if let Some(s) = e.retry_after_secs {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if matches!(e.status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Bearer token check, in constant time so response timing does not leak how much of a guess was right.
fn check_auth(key: Option<&str>, headers: &HeaderMap) -> ApiResult<()> {
    let Some(key) = key else { return Ok(()) };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing API key: send it as 'Authorization: Bearer <key>' (this server was started with --api-key)",
        ));
    };
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match token {
        Some(t) if bool::from(t.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
        None => Err(ApiError::unauthorized("the Authorization header must be 'Bearer <key>'")),
    }
}

fn add_cors(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
    }
}

/// `OPTIONS`: with `--cors`, a preflight answer allowing our methods and the headers the browser asked
/// for; without it, just `Allow` (the browser then refuses the cross-origin call, as intended).
fn preflight(state: &AppState, req_headers: &HeaderMap) -> Response<ResponseBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, OPTIONS"));
    if state.cfg.cors.is_some() {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        let asked = req_headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            asked.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    r
}

/// The request body, at most `--max-body` bytes, within the read timeout. An oversized body is drained up
/// to four times the limit before the 413 goes out, so that clients which send the whole body before
/// reading (curl, most libraries) see the answer instead of a connection reset.
async fn read_body(state: &AppState, req: Request<Incoming>) -> ApiResult<Bytes> {
    let limit = state.cfg.max_body_bytes;
    let drain_limit = limit.saturating_mul(4);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let read = async {
        let mut body = req.into_body();
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("error reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                total = total.saturating_add(data.len());
                if total <= limit {
                    buf.extend_from_slice(&data);
                } else if total > drain_limit {
                    break;
                }
            }
        }
        if total > limit {
            Err(ApiError::body_too_large(limit))
        } else {
            Ok(Bytes::from(buf))
        }
    };
    tokio::time::timeout(state.cfg.read_timeout, read).await.map_err(|_| ApiError::request_timeout())?
}

// ---------------------------------------------------------------------------------------------------------
// Informational endpoints

fn health(state: &AppState) -> Response<ResponseBody> {
    if state.is_shutting_down() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "shutting_down" }));
    }
    if state.scheduler_lost.load(std::sync::atomic::Ordering::Acquire) {
        // Requests vanished inside the engine (its worker died): this process will not serve again; say
        // so, so that a supervisor restarts it.
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "error", "message": "the scheduler stopped; restart the server" }),
        );
    }
    match state.load_state() {
        LoadState::Ready(_) => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        LoadState::Loading => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "loading" })),
        LoadState::Failed(m) => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "error", "message": m }))
        }
    }
}

fn metrics(state: &AppState) -> Response<ResponseBody> {
    let text = state.metrics.render(&Snapshot {
        model_name: &state.cfg.model_name,
        loaded: matches!(state.load_state(), LoadState::Ready(_)),
        scheduler: state.scheduler_stats(),
        queue_capacity: state.cfg.queue_capacity,
        open_connections: state.open_connections.load(std::sync::atomic::Ordering::Relaxed),
        batch_pending: state.batches.as_ref().map(|b| b.pending_requests()),
    });
    text_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
}

fn model_card(state: &AppState) -> Value {
    let mut card = json!({
        "id": state.cfg.model_name,
        "object": "model",
        "created": state.started_unix,
        "owned_by": "quire",
    });
    if let LoadState::Ready(r) = state.load_state() {
        card["context_length"] = json!(r.n_ctx);
    }
    card
}

// ---------------------------------------------------------------------------------------------------------
// Generation

/// See the module doc: any model name is served, with a warning.
fn check_model(state: &AppState, requested: Option<&str>) {
    if let Some(m) = requested {
        if m != state.cfg.model_name {
            tracing::warn!(
                "request names model '{m}'; serving '{}', the only model here",
                state.cfg.model_name
            );
        }
    }
}

/// Render/tokenize off the async threads: a long prompt takes milliseconds of CPU. A panic in the engine
/// becomes a 500, not a dead connection task.
async fn tokenize<F>(ready: &Arc<Ready>, job: F) -> ApiResult<Vec<u32>>
where
    F: FnOnce(&Engine) -> ApiResult<Vec<u32>> + Send + 'static,
{
    let engine = ready.engine.clone();
    tokio::task::spawn_blocking(move || job(&engine))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer crashed: {e}")))?
}

fn chat_prompt(
    ready: &Arc<Ready>,
    messages: Vec<quire_engine::chat::Message>,
    opts: RenderOptions,
) -> impl std::future::Future<Output = ApiResult<Vec<u32>>> + '_ {
    tokenize(ready, move |e| {
        // The template raises on conversations it does not accept (e.g. a tool reply with no call): the
        // client's input, so a 400.
        e.chat_tokens(&messages, &opts).map_err(|err| {
            ApiError::invalid_param("messages", format!("cannot apply the chat template: {err:#}"))
        })
    })
}

fn text_prompt(
    ready: &Arc<Ready>,
    text: String,
) -> impl std::future::Future<Output = ApiResult<Vec<u32>>> + '_ {
    tokenize(ready, move |e| {
        e.tokenizer.encode(&text).map_err(|err| ApiError::internal(format!("cannot tokenize: {err:#}")))
    })
}

/// Hand a prompt to the scheduler, which checks it (length, token ids) and enforces `--timeout` from now,
/// queue wait included; events arrive on the returned channel.
fn submit(
    state: &AppState,
    ready: &Ready,
    prompt: Vec<u32>,
    params: GenerateParams,
    prompt_param: &str,
    log: &RequestLog,
    priority: Priority,
) -> ApiResult<UnboundedReceiver<Event>> {
    log.set_prompt_tokens(prompt.len());
    let (tx, rx) = unbounded_channel();
    let request = scheduler::Request {
        prompt,
        params,
        // Batch work waits behind people by design: no deadline (its job's own window applies).
        deadline: state
            .cfg
            .timeout
            .filter(|_| priority == Priority::Interactive)
            .map(|t| std::time::Instant::now() + t),
        priority,
        // Runs on the scheduler's thread. A failed send means the receiver (response body or waiting
        // handler) is gone, i.e. the client left: stop generating.
        on_event: Box::new(move |ev| {
            if tx.send(ev).is_ok() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }),
    };
    ready.scheduler.submit(request).map_err(|e| match e {
        SubmitError::QueueFull { capacity } => ApiError::queue_full(capacity),
        SubmitError::Prompt(PromptError::TooLong { prompt_tokens, n_ctx }) => {
            ApiError::context_length(prompt_param, prompt_tokens, n_ctx)
        }
        SubmitError::Prompt(PromptError::Empty) => {
            ApiError::invalid_param(prompt_param, "the prompt is empty after tokenization")
        }
        SubmitError::BadToken(m) => ApiError::invalid_param(prompt_param, m),
        SubmitError::Invalid(m) => ApiError::bad_request(m),
        SubmitError::ShuttingDown => ApiError::shutting_down(),
    })?;
    Ok(rx)
}

/// Wait for a whole generation (non-streaming responses). The scheduler ends it with a failure at
/// `--timeout`; a client that leaves drops `rx` with this future, which cancels at the next event.
async fn collect(
    state: &AppState,
    mut rx: UnboundedReceiver<Event>,
    log: &RequestLog,
) -> ApiResult<(String, Usage, Vec<TokenLogprob>)> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => {
                log.first_token();
                text.push_str(&t);
            }
            Event::Logprob(lp) => logprobs.push(lp),
            Event::Done(u) => {
                log.set_usage(
                    u.prompt_tokens,
                    u.cached_tokens,
                    u.completion_tokens,
                    openai::finish_reason(u.finish),
                );
                return Ok((text, u, logprobs));
            }
            Event::Failed(f) => return Err(ApiError::generation_failed(&f, state.cfg.timeout)),
        }
    }
    state.scheduler_lost.store(true, std::sync::atomic::Ordering::Release);
    Err(ApiError::internal("the scheduler dropped the request before it finished"))
}

/// A non-streamed OpenAI answer: the whole generation in `shape` (`logprobs`: the request asked for them;
/// `thinking`: split the reasoning off the answer).
async fn whole_answer(
    state: &AppState,
    rx: UnboundedReceiver<Event>,
    log: &RequestLog,
    logprobs: bool,
    thinking: Option<Thinking>,
    tools: bool,
    shape: impl FnOnce(&Answer) -> Value,
) -> ApiResult<Response<ResponseBody>> {
    let (text, usage, lps) = collect(state, rx, log).await?;
    let (reasoning, text) = match thinking {
        Some(t) => {
            let (r, a) = ReasoningSplit::split(&text, t.started);
            (Some(r), a)
        }
        None => (None, text),
    };
    let (text, tool_calls) = if tools { ToolCallSplit::split(&text) } else { (text, Vec::new()) };
    let answer = Answer {
        text: &text,
        finish: openai::finish_reason(usage.finish),
        usage: UsageCounts::from(&usage),
        logprobs: logprobs.then_some(&lps[..]),
        reasoning: reasoning.as_deref(),
        tool_calls: &tool_calls,
    };
    Ok(json_response(StatusCode::OK, &shape(&answer)))
}

/// Engine parameters for `prompt`: the sampling settings, the compiled grammar (compiled off the async
/// threads: a new schema takes milliseconds, and a model's first grammar builds its token trie) and whether
/// the model may reason first (`may_think`: its template lets it and the request did not say no).
/// `constraint_after`: the grammar applies only after a trigger ([`GenerateParams::constraint_after`]).
async fn engine_params(
    ready: &Arc<Ready>,
    sampling: &SamplingRequest,
    prompt: &[u32],
    may_think: bool,
    constraint_after: Option<Trigger>,
) -> ApiResult<GenerateParams> {
    let mut params = sampling.to_params(prompt.len(), ready.n_ctx);
    params.thinking = ready.engine.thinking(prompt, may_think);
    params.constraint_after = constraint_after;
    if let Some(g) = sampling.grammar.clone() {
        let engine = ready.engine.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let grammars = engine.grammars().map_err(|e| ApiError::internal(format!("{e:#}")))?;
            grammars.compile(&g.spec).map_err(|e| {
                ApiError::invalid_param(g.param, format!("cannot use '{}': {e:#}", g.param))
                    .with_code("invalid_grammar")
            })
        })
        .await
        .map_err(|e| ApiError::internal(format!("the grammar compiler crashed: {e}")))??;
        params.constraint = Some(compiled);
    }
    Ok(params)
}

fn stream_response<F: StreamFormat>(
    state: &AppState,
    rx: UnboundedReceiver<Event>,
    format: F,
    content_type: &'static str,
    log: &RequestLog,
) -> Response<ResponseBody> {
    let body = EventStream::new(rx, format, state, log.clone());
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn chat(
    state: &AppState,
    ready: Arc<Ready>,
    body: &[u8],
    log: &RequestLog,
    priority: Priority,
) -> ApiResult<Response<ResponseBody>> {
    let req = openai::parse_chat(&openai::parse_json_object(body)?)?;
    check_model(state, req.model.as_deref());
    let may_think = ready.engine.template.can_think() && req.render.enable_thinking != Some(false);
    let prompt = chat_prompt(&ready, req.messages, req.render).await?;
    // Tools: the calls' grammar, from the first token (`required`, a named function) or after each
    // `<tool_call>` the model writes (`auto`; a vocabulary without that token decodes freely).
    let mut sampling = req.sampling.clone();
    let mut after = None;
    if let Some(tools) = &req.tools {
        let (spec, lazy) = tools.grammar();
        let trigger = ready.engine.tokenizer.token_to_id(quire_engine::tools::OPEN);
        if !lazy || trigger.is_some() {
            sampling.grammar = Some(GrammarRequest { spec, param: "tools" });
            // `parallel_tool_calls: false`: the reply ends with its first call
            after = trigger.filter(|_| lazy).map(|token| Trigger { token, repeat: tools.parallel });
        }
    }
    let mut params = engine_params(&ready, &sampling, &prompt, may_think, after).await?;
    if let Some(text) = req.prediction.clone() {
        params.prediction = text_prompt(&ready, text).await?;
    }
    let thinking = params.thinking;
    let rx = submit(state, &ready, prompt, params, "messages", log, priority)?;
    let meta = ResponseMeta {
        id: format!("chatcmpl-{}", log.id()),
        created: unix_now(),
        model: state.cfg.model_name.clone(),
    };
    if req.stream {
        let logprobs = PendingLogprobs::new(req.sampling.logprobs.is_some());
        let reasoning = thinking.map(|t| ReasoningSplit::new(t.started));
        let tools = req.tools.is_some().then(ToolCallSplit::new);
        let format = ChatSse { meta, include_usage: req.include_usage, logprobs, reasoning, tools, calls: 0 };
        return Ok(stream_response(state, rx, format, "text/event-stream", log));
    }
    let logprobs = req.sampling.logprobs.is_some();
    let tools = req.tools.is_some();
    whole_answer(state, rx, log, logprobs, thinking, tools, |a| openai::chat_completion(&meta, a)).await
}

async fn completions(
    state: &AppState,
    ready: Arc<Ready>,
    body: &[u8],
    log: &RequestLog,
    priority: Priority,
) -> ApiResult<Response<ResponseBody>> {
    let req = openai::parse_completion(&openai::parse_json_object(body)?)?;
    check_model(state, req.model.as_deref());
    let prompt = match req.prompt {
        PromptInput::Text(t) => text_prompt(&ready, t).await?,
        PromptInput::Tokens(ids) => ids,
    };
    let params = engine_params(&ready, &req.sampling, &prompt, false, None).await?;
    let rx = submit(state, &ready, prompt, params, "prompt", log, priority)?;
    let meta = ResponseMeta {
        id: format!("cmpl-{}", log.id()),
        created: unix_now(),
        model: state.cfg.model_name.clone(),
    };
    if req.stream {
        let logprobs = PendingLogprobs::new(req.sampling.logprobs.is_some());
        let format = CompletionSse { meta, include_usage: req.include_usage, logprobs };
        return Ok(stream_response(state, rx, format, "text/event-stream", log));
    }
    let logprobs = req.sampling.logprobs.is_some();
    whole_answer(state, rx, log, logprobs, None, false, |a| openai::text_completion(&meta, a)).await
}

/// What a batch request may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchEndpoint {
    Chat,
    Completions,
}

impl BatchEndpoint {
    pub fn from_url(url: &str) -> Option<BatchEndpoint> {
        match url.trim_end_matches('/') {
            "/v1/chat/completions" => Some(BatchEndpoint::Chat),
            "/v1/completions" => Some(BatchEndpoint::Completions),
            _ => None,
        }
    }

    pub fn url(self) -> &'static str {
        match self {
            BatchEndpoint::Chat => "/v1/chat/completions",
            BatchEndpoint::Completions => "/v1/completions",
        }
    }
}

/// One request of a batch job, through the very code of its endpoint, behind interactive requests: the
/// response's status and JSON body, as a non-streamed call would get them (`request_id`: the id its log line
/// and its response's `id` carry).
pub async fn batch_request(
    state: &AppState,
    ready: Arc<Ready>,
    endpoint: BatchEndpoint,
    body: &Value,
    request_id: String,
) -> (StatusCode, Value) {
    let log = RequestLog::new(request_id, "BATCH", "batch", state.metrics.clone());
    let run = async {
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::invalid_param(
                "stream",
                "a batch request cannot stream; leave 'stream' out",
            ));
        }
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = match endpoint {
            BatchEndpoint::Chat => chat(state, ready, &bytes, &log, Priority::Batch).await?,
            BatchEndpoint::Completions => completions(state, ready, &bytes, &log, Priority::Batch).await?,
        };
        let status = resp.status();
        let body =
            resp.into_body().collect().await.map_err(|e| ApiError::internal(e.to_string()))?.to_bytes();
        let v = serde_json::from_slice(&body).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((status, v))
    };
    let (status, v) = match run.await {
        Ok(r) => r,
        Err(e) => {
            log.set_error(&e.message);
            (e.status, e.to_json())
        }
    };
    log.set_status(status.as_u16());
    (status, v)
}

/// `/generate` → `{"result": text, "finish_reason", "usage"}`; `/stream` → the text as a chunked plain-text body.
async fn simple(
    state: &AppState,
    ready: Arc<Ready>,
    req: &openai::SimpleRequest,
    stream: bool,
    log: &RequestLog,
) -> ApiResult<Response<ResponseBody>> {
    let prompt = if req.raw {
        text_prompt(&ready, req.prompt.clone()).await?
    } else {
        let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
        chat_prompt(&ready, req.messages(), opts).await.map_err(|e| e.with_param("prompt"))?
    };
    let may_think = !req.raw && ready.engine.template.can_think();
    let params = engine_params(&ready, &req.sampling, &prompt, may_think, None).await?;
    let params_thinking = params.thinking;
    let rx = submit(state, &ready, prompt, params, "prompt", log, Priority::Interactive)?;
    if stream {
        return Ok(stream_response(state, rx, PlainText, "text/plain; charset=utf-8", log));
    }
    let (text, usage, _) = collect(state, rx, log).await?;
    // A reasoning model's thinking goes apart from the result (a constrained result is then parseable).
    let (reasoning, text) = match params_thinking {
        Some(t) => ReasoningSplit::split(&text, t.started),
        None => (String::new(), text),
    };
    let mut v = json!({
        "result": text,
        "finish_reason": openai::finish_reason(usage.finish),
        "usage": UsageCounts::from(&usage).to_json(),
    });
    if !reasoning.is_empty() {
        v["reasoning"] = json!(reasoning);
    }
    Ok(json_response(StatusCode::OK, &v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| Route::resolve(&m, p);
        assert_eq!(r(Method::POST, "/v1/chat/completions"), Route::Chat);
        assert_eq!(r(Method::POST, "/chat/completions"), Route::Chat);
        assert_eq!(r(Method::POST, "/v1/completions/"), Route::Completions);
        assert_eq!(r(Method::GET, "/v1/models"), Route::Models);
        assert_eq!(r(Method::GET, "/v1/models/abc"), Route::Model("abc".into()));
        assert_eq!(r(Method::GET, "/"), Route::Page);
        assert_eq!(r(Method::GET, "/stream"), Route::Stream);
        assert_eq!(r(Method::POST, "/stream"), Route::Stream);
        assert_eq!(r(Method::GET, "/v1/chat/completions"), Route::WrongMethod("POST"));
        assert_eq!(r(Method::DELETE, "/health"), Route::WrongMethod("GET"));
        assert_eq!(r(Method::OPTIONS, "/v1/chat/completions"), Route::Preflight);
        assert_eq!(r(Method::GET, "/v1"), Route::NotFound);
        assert_eq!(r(Method::GET, "/etc/passwd"), Route::NotFound);
        assert_eq!(r(Method::POST, "/v1/files"), Route::Files);
        assert_eq!(r(Method::DELETE, "/v1/files/file-1"), Route::File("file-1".into()));
        assert_eq!(r(Method::GET, "/v1/files/file-1/content"), Route::FileContent("file-1".into()));
        assert_eq!(r(Method::POST, "/v1/batches/b1/cancel"), Route::BatchCancel("b1".into()));
        assert_eq!(r(Method::GET, "/v1/batches/b1"), Route::Batch("b1".into()));
        assert_eq!(r(Method::DELETE, "/v1/batches/b1"), Route::WrongMethod("GET"));
        assert_eq!(r(Method::GET, "/v1/files/a/b"), Route::NotFound);
        assert!(!Route::Health.needs_auth() && Route::Metrics.needs_auth() && Route::NotFound.needs_auth());
    }

    #[test]
    fn bearer_auth() {
        let mut h = HeaderMap::new();
        assert!(check_auth(None, &h).is_ok());
        assert_eq!(check_auth(Some("k1"), &h).unwrap_err().status, StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k2"));
        assert!(check_auth(Some("k1"), &h).unwrap_err().message.contains("invalid"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  k1 "));
        assert!(check_auth(Some("k1"), &h).is_ok());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert!(check_auth(Some("k1"), &h).is_err());
        // a prefix of the key, or the key and more, is not the key
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        assert!(check_auth(Some("k1"), &h).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k12"));
        assert!(check_auth(Some("k1"), &h).is_err());
    }
}
