//! The error model of the API: every failure is `{"error": {"code": ..., "message": ...}}`
//! with an HTTP status that fits the code. Codes are stable: scripts branch on them;
//! messages are for people and may change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range.
    InvalidArgument,
    /// No credentials, or credentials this cluster does not accept.
    Unauthenticated,
    /// Valid credentials without the role this endpoint needs.
    PermissionDenied,
    NotFound,
    /// A name that must be unique is taken.
    AlreadyExists,
    /// The secret is referenced by services; remove the references first.
    SecretInUse,
    /// The object changed meanwhile; read it again and retry.
    Conflict,
    /// The cluster is not in a state that allows this (e.g. removing the last manager).
    FailedPrecondition,
    /// The request body is over the limit.
    PayloadTooLarge,
    /// No leader is known right now; retry.
    Unavailable,
    /// Only the leader does this (issuing grants); the message names the leader.
    NotLeader,
    /// The manager is sealed (autolock) and waits for `coffer cluster unlock`.
    Locked,
    /// The unlock key given does not open this manager (or came too soon after a wrong one).
    UnlockFailed,
    Internal,
    /// The changes asked for (`/v1/events?since=`) are no longer kept on this manager:
    /// relist, then resume from a later index.
    Gone,
    /// This caller sent more than its share of a bounded kind of request: slow down.
    TooManyRequests,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::SecretInUse | ErrorCode::Conflict | ErrorCode::FailedPrecondition => {
                409
            }
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable | ErrorCode::Locked => 503,
            ErrorCode::UnlockFailed => 403,
            ErrorCode::NotLeader => 421,
            ErrorCode::Internal => 500,
            ErrorCode::Gone => 410,
            ErrorCode::TooManyRequests => 429,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { error: ErrorDetail { code, message: message.into() } }
    }
}

/// An error that carries a stable [`ErrorCode`] and a message for people: the server's
/// operation and HTTP errors and the shared input rules' errors all build themselves through
/// it, so every refusal, wherever it is decided, names one of the codes above.
pub trait CodedError: Sized {
    fn with_code(code: ErrorCode, message: String) -> Self;

    fn invalid(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::InvalidArgument, message.into())
    }

    fn unauthenticated(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::Unauthenticated, message.into())
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::PermissionDenied, message.into())
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::NotFound, message.into())
    }

    fn precondition(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::FailedPrecondition, message.into())
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::Unavailable, message.into())
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::Conflict, message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::SecretInUse, "secret db_password is used by services [\"api\"]");
        let json = serde_json::to_value(&body).expect("serialize");
        assert_eq!(json["error"]["code"], "secret_in_use");
        assert_eq!(ErrorCode::SecretInUse.http_status(), 409);
        let back: ErrorBody = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, body);
        assert!(serde_json::from_str::<ErrorBody>(r#"{"error":{"code":"no_such_code","message":""}}"#).is_err());
    }
}
