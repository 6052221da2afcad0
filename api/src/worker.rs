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
    /// What the task runs, for a worker with a container runtime; absent: files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::services::RunInfo>,
}

/// What a worker observes of one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskRunState {
    /// Placed; the worker has not reported on it yet, or prepares it.
    Pending,
    /// Its files are in place and its container is being started.
    Starting,
    /// Its container runs.
    Running,
    /// Its files are in place and nothing runs here (no image, or a worker without a
    /// container runtime).
    Ready,
    /// Its container exited with `code`; the worker restarts it after a backoff.
    Exited { code: i64 },
    /// The worker could not prepare or start it.
    Failed { message: String },
}

impl std::fmt::Display for TaskRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pending => f.write_str("pending"),
            Self::Starting => f.write_str("starting"),
            Self::Running => f.write_str("running"),
            Self::Ready => f.write_str("ready"),
            Self::Exited { code } => write!(f, "exited {code}"),
            Self::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

/// One task's state, as its worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatusEntry {
    pub task_id: String,
    pub status: TaskRunState,
}

/// `POST /v1/worker/status`: the states of the worker's tasks (those that changed, or all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusReport {
    pub tasks: Vec<TaskStatusEntry>,
}

/// The answer to a [`StatusReport`]: how many states changed (a report of an unchanged
/// state, or about a task no longer on the worker, changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusRecorded {
    pub changed: usize,
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
    /// What its worker last reported (`pending` until it does).
    #[serde(default = "pending")]
    pub status: TaskRunState,
    /// When its worker reported it; absent while `pending` without a report.
    #[serde(default)]
    pub status_at_ms: Option<u64>,
}

fn pending() -> TaskRunState {
    TaskRunState::Pending
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskInfo>,
}
