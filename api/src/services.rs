//! Services: replicas, placement constraints, and the secrets they mount.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a service mounts a secret; the CLI's `source=NAME[,target=T][,uid=U][,gid=G][,mode=0440]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretRefSpec {
    /// Name of the secret.
    pub source: String,
    /// File name under the task's secrets directory; defaults to the secret's name. A
    /// relative path without `..`.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// File mode; defaults to 0400 (Swarm: 0444; ours sit on the host, see README).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Pin a version; by default the service follows the newest.
    #[serde(default)]
    pub version: Option<u32>,
}

/// `POST /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceCreate {
    pub name: String,
    /// Defaults to 1.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// `node.id==X`, `node.hostname==X`, `node.role==manager|worker`, `node.labels.K==V`,
    /// and the same with `!=`.
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<SecretRefSpec>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `PATCH /v1/services/{service}`: what to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceUpdate {
    /// The spec version the change is based on; a concurrent change makes it fail with
    /// `conflict`. Absent: apply to whatever is current.
    #[serde(default)]
    pub expected_version: Option<u64>,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub constraints: Option<Vec<String>>,
    #[serde(default)]
    pub secret_add: Vec<SecretRefSpec>,
    /// Secret names whose references are removed.
    #[serde(default)]
    pub secret_rm: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretRefInfo {
    pub secret_id: String,
    pub secret_name: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    pub replicas: u32,
    pub constraints: Vec<String>,
    pub secrets: Vec<SecretRefInfo>,
    pub labels: BTreeMap<String, String>,
    pub spec_version: u64,
    pub created_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub created_at: String,
    pub updated_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceInfo>,
}
