//! Every error the API answers: `{"error": {"code", "message"}}` with the
//! HTTP status that fits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use warden_proto::control::ErrorKind;

use crate::daemon::DaemonError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn rate_limited(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
    }

    /// The status of a daemon's refusal.
    pub fn from_kind(kind: Option<ErrorKind>, message: String) -> ApiError {
        let (status, code) = match kind {
            Some(ErrorKind::BadRequest) => (StatusCode::BAD_REQUEST, "bad_request"),
            Some(ErrorKind::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            Some(ErrorKind::Refused) => (StatusCode::CONFLICT, "refused"),
            Some(ErrorKind::Unauthorized) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Some(ErrorKind::Forbidden) => (StatusCode::FORBIDDEN, "forbidden"),
            // The request was valid and the daemon tried: the operation
            // itself failed (an agent that cannot start, an unwritable log).
            Some(ErrorKind::Failed) | None => (StatusCode::UNPROCESSABLE_ENTITY, "failed"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "daemon_unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warden\""),
            );
        }
        r
    }
}
