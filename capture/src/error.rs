//! The one place where what went wrong becomes an HTTP answer.
//!
//! Stages return their own typed errors; they convert into [`CaptureError`], and only
//! [`CaptureError::status`] and its `IntoResponse` decide status codes and bodies.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::budget::BudgetError;
use crate::decode::DecodeError;
use crate::parse::ParseError;
use crate::produce::ProduceError;
use crate::token::TokenError;
use crate::v1::V1Error;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body was not received in time")]
    BodyTimeout,
    #[error("could not read request body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("no valid event in request: {0}")]
    NoValidEvent(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    V1(#[from] V1Error),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    Memory(#[from] BudgetError),
    #[error("server is overloaded, retry later")]
    Overloaded,
    #[error("this capture instance is over its global event rate, retry later")]
    RateLimited,
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "5";

impl CaptureError {
    pub(crate) fn status(&self) -> StatusCode {
        use CaptureError::*;
        match self {
            Memory(e) | Decode(DecodeError::Memory(e)) | Parse(ParseError::Memory(e)) => match e {
                BudgetError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BudgetError::Exhausted => StatusCode::SERVICE_UNAVAILABLE,
            },
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Decode(DecodeError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            BodyRead(_) | Decode(_) | Parse(_) | NoValidEvent(_) => StatusCode::BAD_REQUEST,
            Token(_) | V1(V1Error::MissingToken) => StatusCode::UNAUTHORIZED,
            V1(V1Error::Parse(ParseError::Memory(e))) => match e {
                BudgetError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BudgetError::Exhausted => StatusCode::SERVICE_UNAVAILABLE,
            },
            V1(_) => StatusCode::BAD_REQUEST,
            Produce(ProduceError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Produce(_) | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Stable snake_case code for clients and dashboards.
    pub(crate) fn code(&self) -> &'static str {
        use CaptureError::*;
        match self {
            BodyTooLarge { .. } => "payload_too_large",
            BodyTimeout => "request_timeout",
            BodyRead(_) => "body_read_error",
            Memory(e) => e.code(),
            Decode(e) => e.code(),
            Parse(e) => e.code(),
            NoValidEvent(_) => "no_valid_event",
            Token(e) => e.code(),
            V1(V1Error::MissingToken) => "missing_api_key",
            V1(V1Error::Parse(e)) => e.code(),
            V1(V1Error::Shape) => "invalid_payload_shape",
            Produce(ProduceError::TooLarge { .. }) => "event_too_large",
            Produce(_) => "service_unavailable",
            Overloaded => "overloaded",
            RateLimited => "rate_limited",
        }
    }
}

impl IntoResponse for CaptureError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({"status": status.as_u16(), "code": self.code(), "error": self.to_string()});
        let mut response = (status, Json(body)).into_response();
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}
