//! API tokens: credentials for orchestration tooling that cannot hold a client
//! certificate. Sent as `Authorization: Bearer <token>`; only a hash is stored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// List and inspect.
    ReadOnly,
    /// Everything an admin may do through the API but manage tokens.
    ReadWrite,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenCreate {
    pub name: String,
    pub scope: TokenScope,
}

/// The new token, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenCreated {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub token: String,
}

impl std::fmt::Debug for ApiTokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenCreated")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("token", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenInfo {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub created_at: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenList {
    pub tokens: Vec<ApiTokenInfo>,
}
