//! Secrets: create, list, inspect, rotate, relabel, remove. No response type here has a
//! field that could carry a value: values go in (base64, in a create or rotate request)
//! and come out only through a worker's grant redemption.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/secrets`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretCreate {
    /// `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`, unique among secrets.
    pub name: String,
    /// The value, base64 (standard alphabet, padded); 1 byte to 500 KiB once decoded.
    pub data: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreate")
            .field("name", &self.name)
            .field("data", &"[redacted]")
            .field("labels", &self.labels)
            .finish()
    }
}

/// `POST /v1/secrets/{secret}/rotate`: adds a version.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretRotate {
    /// The new value, base64; 1 byte to 500 KiB once decoded.
    pub data: String,
}

impl std::fmt::Debug for SecretRotate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretRotate { data: [redacted] }")
    }
}

/// `PUT /v1/secrets/{secret}/labels`: replaces the labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretLabels {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretVersionInfo {
    pub version: u32,
    pub created_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub created_at: String,
    /// Size of the value in bytes.
    pub size: u32,
}

/// What `inspect` and `ls` show of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub created_at: String,
    pub updated_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub updated_at: String,
    pub latest_version: u32,
    pub versions: Vec<SecretVersionInfo>,
    /// Names of the services that reference the secret.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// The reply to a create or a rotate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretVersionCreated {
    pub id: String,
    pub name: String,
    pub version: u32,
}
