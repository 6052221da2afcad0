//! The error every handler returns: a stable code and a message, rendered as the API's
//! error envelope with the status that fits the code.
//!
//! Internal failures are logged once, here, with their cause; the caller gets a generic
//! message (a storage error can name records, which is not the caller's business).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_api::error::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Logs `cause` and returns an error that does not disclose it.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "{what}");
        Self::new(ErrorCode::Internal, format!("{what} failed; see the manager's log"))
    }

    pub fn from_body(body: ErrorBody) -> Self {
        Self { code: body.error.code, message: body.error.message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<coffer_raft_store::StoreError> for ApiError {
    fn from(e: coffer_raft_store::StoreError) -> Self {
        Self::internal("reading the state", e)
    }
}
