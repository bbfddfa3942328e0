//! Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}` with a matching HTTP
//! status, so OpenAI client libraries raise the right exception class and show the message.

use hyper::StatusCode;
use quire_engine::scheduler::Failure;
use serde_json::{json, Value};

/// An error answer. `param` names the offending request field (`"temperature"`, `"messages[2].role"`).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `rate_limit_error`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after_secs: Option<u64>,
}

/// `Result` of a request handler step.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after_secs: None }
    }

    /// 400 about the request as a whole (invalid JSON, unsupported feature).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 about one field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::bad_request(message).with_param(param).with_code("invalid_value")
    }

    /// 400: the prompt does not fit the context of a slot.
    pub fn context_length(param: &str, prompt_tokens: usize, n_ctx: usize) -> ApiError {
        ApiError::bad_request(format!(
            "the prompt is {prompt_tokens} tokens but this server's context holds {n_ctx} per request \
             (at least one token must be left to generate); shorten the prompt or restart with a larger --ctx"
        ))
        .with_param(param)
        .with_code("context_length_exceeded")
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).with_code("invalid_api_key")
    }

    /// 404: no such route (or model, for `/v1/models/{id}`).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    /// 405: known path, wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}"),
        )
        .with_code("method_not_allowed")
    }

    /// 408: the client did not send its request in time.
    pub fn request_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "timed out reading the request body",
        )
    }

    /// 413: body over `--max-body`.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this server's limit of {limit} bytes (--max-body)"),
        )
        .with_code("request_too_large")
    }

    /// 429: every slot busy and the queue full.
    pub fn queue_full(capacity: usize) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the server is busy: all slots are generating and the queue of {capacity} is full; retry later"),
        )
        .with_code("queue_full");
        e.retry_after_secs = Some(1);
        e
    }

    /// 503 while the model loads.
    pub fn loading() -> ApiError {
        let mut e =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model is still loading")
                .with_code("model_loading");
        e.retry_after_secs = Some(1);
        e
    }

    /// 503 after SIGINT/SIGTERM.
    pub fn shutting_down() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
            .with_code("shutting_down")
    }

    /// 500: our fault. The message is logged; the client gets it too, since it never holds secrets.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A generation that ended with the scheduler's `Event::Failed`: running past `--timeout` (`timeout`: its
    /// value) is a 504 with code `timeout`, so clients can tell it from a broken server; anything else a 500.
    pub fn generation_failed(failure: &Failure, timeout: Option<std::time::Duration>) -> ApiError {
        match failure {
            Failure::TimedOut { .. } => {
                let limit = timeout.map_or(0.0, |t| t.as_secs_f64());
                let message = format!("{failure}: over this server's limit of {limit} s (--timeout)");
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message).with_code("timeout")
            }
            Failure::Inference(_) => ApiError::internal(format!("generation failed: {failure}")),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)?;
        if let Some(p) = &self.param {
            write!(f, " (param {p})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_openai() {
        let e = ApiError::invalid_param("temperature", "temperature must be in [0, 2]");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let v = e.to_json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert!(v["error"]["message"].as_str().unwrap().contains("temperature"));
        let q = ApiError::queue_full(4);
        assert_eq!(q.status.as_u16(), 429);
        assert_eq!(q.retry_after_secs, Some(1));
        assert_eq!(q.to_json()["error"]["param"], Value::Null);
    }
}
