//! The error every handler returns: an operation's refusal ([`OpError`]) rendered as the
//! API's error envelope, with the status that fits its code. The only HTTP error type of
//! the crate; everything below `http` returns its own errors, converted here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use coffer_api::rules::RuleError;

use crate::manager::error::OpError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub OpError);

impl CodedError for ApiError {
    fn with_code(code: ErrorCode, message: String) -> Self {
        Self(OpError { code, message })
    }
}

impl ApiError {
    /// Logs `cause` and answers without disclosing it.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        Self(OpError::internal(what, cause))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.0.code, self.0.message))).into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        Self(e)
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        Self(e.into())
    }
}

impl From<coffer_raft_store::StoreError> for ApiError {
    fn from(e: coffer_raft_store::StoreError) -> Self {
        Self(e.into())
    }
}

impl From<crate::manager::values::ValueError> for ApiError {
    fn from(e: crate::manager::values::ValueError) -> Self {
        Self(e.into())
    }
}

impl From<crate::manager::grants::Refusal> for ApiError {
    fn from(e: crate::manager::grants::Refusal) -> Self {
        Self(e.into())
    }
}
