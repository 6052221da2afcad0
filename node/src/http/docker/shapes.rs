//! Docker Engine API v1.41 shapes, as far as the docker CLI and Swarm tooling read them.
//! Field names are Docker's (PascalCase, `ID`); times are RFC 3339.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ObjectVersion {
    pub index: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct VersionInfo {
    pub platform: Named,
    pub components: Vec<Component>,
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub git_commit: String,
    pub go_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Peer {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub addr: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterRef {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: Named,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInfo {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_addr: String,
    pub local_node_state: String,
    pub control_available: bool,
    pub error: String,
    pub remote_managers: Vec<Peer>,
    pub nodes: usize,
    pub managers: usize,
    pub cluster: ClusterRef,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SystemInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub server_version: String,
    pub operating_system: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    pub kernel_version: String,
    #[serde(rename = "NCPU")]
    pub ncpu: usize,
    pub swarm: SwarmInfo,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: String,
    pub updated_at: String,
    pub spec: Named,
    pub join_tokens: JoinTokens,
}

/// `201 {"ID": ...}` of a create.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdResponse {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Warnings", skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// A secret's spec, as sent to create or update (`Data` is base64; never sent back, and
/// never printed: `Debug` redacts it).
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SecretSpecIn {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub driver: Option<serde_json::Value>,
    #[serde(default)]
    pub templating: Option<serde_json::Value>,
}

impl std::fmt::Debug for SecretSpecIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpecIn")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &self.data.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SecretSpecOut {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Secret {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: String,
    pub updated_at: String,
    pub spec: SecretSpecOut,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub role: String,
    pub availability: String,
}

/// A node's spec as sent to `/nodes/{id}/update`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpecIn {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub availability: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Platform {
    pub architecture: String,
    #[serde(rename = "OS")]
    pub os: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Engine {
    pub engine_version: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    pub hostname: String,
    pub platform: Platform,
    pub engine: Engine,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    pub state: String,
    pub addr: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    pub leader: bool,
    pub reachability: String,
    pub addr: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: String,
    pub updated_at: String,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    pub timestamp: String,
    pub state: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: String,
    pub updated_at: String,
    pub labels: BTreeMap<String, String>,
    /// The service's task template.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub slot: u32,
    #[serde(rename = "NodeID", skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    pub status: TaskStatus,
    pub desired_state: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    pub running_tasks: u64,
    pub desired_tasks: u64,
    pub completed_tasks: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: String,
    pub updated_at: String,
    /// Docker's `ServiceSpec`: what Coffer acts on (name, labels, replicas, placement
    /// constraints, secrets, image, command, environment) from Coffer's state, the rest
    /// as the client last sent it.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    #[schema(value_type = Object)]
    pub endpoint: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_status: Option<ServiceStatus>,
}

/// `POST /services/{id}/update`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpdateResponse {
    #[serde(rename = "Warnings")]
    pub warnings: Option<Vec<String>>,
}
