//! The worker session: what a worker asks of managers, and what it gets back. Worker
//! certificates only; a worker learns only its own tasks, and receives values only by
//! redeeming a grant that the leader issued for one of its tasks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One secret file a task needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignedSecret {
    pub secret_id: String,
    pub secret_name: String,
    pub version: u32,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignedTask {
    pub task_id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u32,
    pub secrets: Vec<AssignedSecret>,
}

/// `GET /v1/worker/assignments?since=FINGERPRINT`: the worker's full assignment set,
/// answered at once if it differs from `since`, else when it changes (long poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    /// Opaque; send it back as `since`.
    pub fingerprint: String,
    pub tasks: Vec<AssignedTask>,
    /// Where to ask for grants (only the leader issues them).
    pub leader_addr: Option<String>,
    /// Every manager's address, to reconnect to another one.
    pub managers: Vec<String>,
    pub heartbeat_ms: u64,
}

/// `POST /v1/worker/grants` (leader only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantRequest {
    pub task_ids: Vec<String>,
}

/// A signed grant: opaque to the worker, redeemable at any manager by its node only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub task_id: String,
    /// base64 of the signed body.
    pub body: String,
    /// base64 Ed25519 signature over the body.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<Grant>,
}

/// `POST /v1/worker/redeem`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RedeemRequest {
    pub grant: Grant,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RedeemedSecret {
    pub secret_id: String,
    pub version: u32,
    /// The value, base64.
    pub data: String,
}

impl std::fmt::Debug for RedeemedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemedSecret")
            .field("secret_id", &self.secret_id)
            .field("version", &self.version)
            .field("data", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Redeemed {
    pub task_id: String,
    pub secrets: Vec<RedeemedSecret>,
}

/// `POST /v1/worker/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    pub leader_addr: Option<String>,
}

/// `GET /v1/services/{service}/tasks`: where a service's replicas run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskInfo {
    pub task_id: String,
    pub slot: u32,
    pub node_id: Option<u64>,
    pub node_hostname: Option<String>,
    pub secret_versions: Vec<(String, u32)>,
    pub updated_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskInfo>,
}
