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
    /// What each task runs on workers with a container runtime (`--runtime docker`); without
    /// an image, workers write the task's files only.
    #[serde(default, flatten)]
    pub run: RunSpec,
}

/// What a service's tasks run, for workers with a container runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSpec {
    /// The container image, as the local engine knows it (no registry is asked).
    #[serde(default)]
    pub image: Option<String>,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's command (its arguments).
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` environment entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Where the container sees the task's secrets directory (read-only); defaults to
    /// `/run/secrets`.
    #[serde(default)]
    pub secrets_mount: Option<String>,
    /// What a running container is told when one of its secrets changes: `none` (the file
    /// is replaced in place; the default), `signal=SIGHUP` (any signal name), or `restart`.
    #[serde(default)]
    pub on_secret_change: Option<String>,
}

impl RunSpec {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
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
    /// Replaces the image (an empty string removes it: files only).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub secrets_mount: Option<String>,
    #[serde(default)]
    pub on_secret_change: Option<String>,
}

impl ServiceUpdate {
    /// Whether the update changes what the service runs.
    pub fn changes_run(&self) -> bool {
        self.image.is_some()
            || self.command.is_some()
            || self.args.is_some()
            || self.env.is_some()
            || self.secrets_mount.is_some()
            || self.on_secret_change.is_some()
    }
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
    /// What its tasks run; absent for a service of files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
}

/// What a service's tasks run, as stored (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub secrets_mount: String,
    /// `none`, `restart` or `signal=NAME`.
    pub on_secret_change: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceInfo>,
}
