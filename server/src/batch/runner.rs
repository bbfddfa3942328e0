//! Runs a batch's requests through the scheduler, behind interactive traffic, several at a time, and turns
//! each into its output line in OpenAI's format.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::input::{BadLine, Item, Line};
use super::provenance::{seed_for, ModelInfo};
use crate::errors::ApiError;
use crate::routes;
use crate::state::{AppState, Ready};

/// A finished request: its output line, for the output file (`ok`) or the error file.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub custom_id: String,
    pub line: usize,
    pub ok: bool,
    pub json: Value,
    pub completion_tokens: usize,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    /// `stop` was set: the requests in flight were dropped (they run again next time), no line was lost.
    Stopped,
}

/// Runs `items` at most `parallel` at a time, calling `done` with each outcome as it finishes (in finishing
/// order). When `stop` turns true, no new item starts and those in flight are abandoned.
pub async fn run(
    state: Arc<AppState>,
    ready: Arc<Ready>,
    model: Arc<ModelInfo>,
    items: impl Iterator<Item = Item>,
    parallel: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut done: impl FnMut(Outcome),
) -> RunEnd {
    let mut items = items.peekable();
    let mut running = JoinSet::new();
    // the sender gone (nobody can stop the run any more): stop watching it
    let mut watching = true;
    loop {
        if *stop.borrow() {
            running.abort_all();
            return RunEnd::Stopped;
        }
        while running.len() < parallel.max(1) {
            let Some(item) = items.next() else { break };
            let (state, ready, model) = (state.clone(), ready.clone(), model.clone());
            running.spawn(async move { run_one(&state, ready, &model, item).await });
        }
        if running.is_empty() {
            return RunEnd::Finished;
        }
        tokio::select! {
            joined = running.join_next() => match joined {
                Some(Ok(Some(outcome))) => done(outcome),
                // the server is shutting down: the request runs again at the next start
                Some(Ok(None)) => {}
                Some(Err(e)) if e.is_panic() => {
                    // run_one does not panic; if it ever does, the request runs again next time
                    tracing::error!("a batch request crashed: {e}");
                }
                _ => {}
            },
            changed = stop.changed(), if watching => watching = changed.is_ok(),
        }
    }
}

/// One request, or the error line of one that cannot run; `None` when the server is shutting down (it did
/// not run: it runs again at the next start). A full queue (interactive traffic) is waited out, never an
/// error of the request.
pub async fn run_one(state: &AppState, ready: Arc<Ready>, model: &ModelInfo, item: Item) -> Option<Outcome> {
    let request_id = state.next_request_id();
    Some(match item {
        Item::Bad(BadLine { line, custom_id, error }) => Outcome {
            json: error_line(&request_id, &custom_id, line, &error),
            custom_id,
            line,
            ok: false,
            completion_tokens: 0,
        },
        Item::Run(Line { line, custom_id, endpoint, mut body, origin }) => {
            if body.get("seed").is_none_or(Value::is_null) {
                body["seed"] = json!(seed_for(&custom_id));
            }
            let (status, response) = loop {
                let (status, response) =
                    routes::batch_request(state, ready.clone(), endpoint, &body, request_id.clone()).await;
                match status {
                    StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(Duration::from_millis(500)).await,
                    StatusCode::SERVICE_UNAVAILABLE if state.is_shutting_down() => return None,
                    _ => break (status, response),
                }
            };
            let completion_tokens =
                response.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
            let stamp = model.stamp(&body, origin.as_ref().map(|(t, r)| (t.as_str(), *r)));
            Outcome {
                json: output_line(&request_id, &custom_id, status, response, stamp),
                custom_id,
                line,
                ok: status.is_success(),
                completion_tokens,
            }
        }
    })
}

/// A request that ran (whatever its status): `response` as the endpoint answered.
pub fn output_line(
    request_id: &str,
    custom_id: &str,
    status: StatusCode,
    body: Value,
    stamp: Value,
) -> Value {
    json!({
        "id": format!("batch_req_{request_id}"),
        "custom_id": custom_id,
        "response": {"status_code": status.as_u16(), "request_id": request_id, "body": body},
        "error": null,
        "quire": stamp,
    })
}

/// A line that could not run: no response, the error with its line number.
pub fn error_line(request_id: &str, custom_id: &str, line: usize, e: &ApiError) -> Value {
    json!({
        "id": format!("batch_req_{request_id}"),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": e.code.unwrap_or("invalid_request"), "message": e.message, "param": e.param, "line": line},
    })
}
