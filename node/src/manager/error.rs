//! Why a manager operation did not happen: a stable code (the API's, since an operation's
//! refusal crosses managers when it is forwarded and reaches the caller unchanged) and a
//! message for people. `http` turns it into a response; nothing here knows about HTTP.

use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use coffer_api::rules::RuleError;
use coffer_raft_store::model::{ApplyError, ObjectKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl CodedError for OpError {
    fn with_code(code: ErrorCode, message: String) -> Self {
        Self { code, message }
    }
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Logs `cause` and returns an error that does not disclose it: a storage error can
    /// name records, which is not the caller's business.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "{what}");
        Self::new(ErrorCode::Internal, format!("{what} failed; see the manager's log"))
    }

    /// The refusal another manager (the leader) answered with.
    pub fn from_body(body: ErrorBody) -> Self {
        Self { code: body.error.code, message: body.error.message }
    }
}

impl From<coffer_raft_store::StoreError> for OpError {
    fn from(e: coffer_raft_store::StoreError) -> Self {
        Self::internal("reading the state", e)
    }
}

impl From<RuleError> for OpError {
    fn from(e: RuleError) -> Self {
        Self { code: e.code, message: e.message }
    }
}

/// A refusal of the state machine, as the API reports it.
impl From<ApplyError> for OpError {
    fn from(e: ApplyError) -> Self {
        let code = match &e {
            ApplyError::NameTaken { .. } | ApplyError::IdTaken { .. } | ApplyError::AlreadyInitialized => {
                ErrorCode::AlreadyExists
            }
            ApplyError::NotFound { kind, .. } if *kind != ObjectKind::Cluster => ErrorCode::NotFound,
            ApplyError::NotFound { .. } | ApplyError::NotInitialized | ApplyError::LastAdminCredential(_) => {
                ErrorCode::FailedPrecondition
            }
            ApplyError::SecretInUse { services } => {
                return Self::new(
                    ErrorCode::SecretInUse,
                    format!(
                        "the secret is used by services {}; remove the references first \
                         (coffer service update SERVICE --secret-rm SECRET)",
                        services.join(", ")
                    ),
                )
            }
            ApplyError::VersionConflict { .. } | ApplyError::StaleAuthority { .. } => ErrorCode::Conflict,
            ApplyError::NodeRemoved(_) => ErrorCode::NotFound,
        };
        Self::new(code, e.to_string())
    }
}
