//! Errors: [`ApiError`] is what a client sees (OpenAI's error shape), [`ServeError`] what
//! stops the server from starting.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An HTTP error in OpenAI's shape:
/// `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's error type (`invalid_request_error`, `rate_limit_error`, `server_error`).
    pub kind: &'static str,
    /// What went wrong, in plain words.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `queue_full`, ...), if any.
    pub code: Option<&'static str>,
}

/// The JSON body of an error (also sent as an SSE event when a stream fails midway).
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// 400: the request is wrong in `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// 400 on a request field that this server does not implement (rather than ignoring it).
    pub fn unsupported(param: &str, what: &str) -> Self {
        let mut e = Self::invalid(
            param,
            format!("`{param}`: {what} is not supported by this server"),
        );
        e.code = Some("unsupported_parameter");
        e
    }

    /// 400 where the request does not fit the model's context.
    pub fn context_exceeded(param: &str, message: String) -> Self {
        let mut e = Self::invalid(param, message);
        e.code = Some("context_length_exceeded");
        e
    }

    /// 404: the request names a model this server does not serve.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("the model `{asked}` does not exist; this server serves `{served}`"),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404 for a path that is not an endpoint.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("no endpoint {method} {path}"),
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// A body the server could not read (too large: 413; cut off: 400).
    pub fn body(status: StatusCode, message: String) -> Self {
        Self {
            status,
            kind: "invalid_request_error",
            message,
            param: None,
            code: None,
        }
    }

    /// 429: every slot is busy and the queue is full.
    pub fn queue_full(max_queue: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "the server is at capacity: every slot is busy and {max_queue} requests are \
                 already waiting (max_queue); retry later"
            ),
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 503: the server is shutting down and takes no new work.
    pub fn shutting_down() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the server is shutting down".into(),
            param: None,
            code: Some("shutting_down"),
        }
    }

    /// 500: the model or tokenizer failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The JSON body, for responses and for an SSE error event.
    pub fn body_json(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body_json())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Why the server could not start or stopped abnormally.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting out of its range.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The setting at fault.
        setting: &'static str,
        /// Why it is wrong.
        reason: String,
    },
    /// Binding the address or serving connections failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// The scheduler thread panicked (a bug).
    #[error("the scheduler thread panicked")]
    SchedulerPanicked,
}
