//! Cluster membership, join and status: the wire types of `coffer manager join`,
//! `coffer node ...`, `coffer join-token ...` and `coffer cluster status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The role a node joins as, or holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Manager,
    Worker,
}

/// `POST /v1/join`: sent by a node that holds a join token, with a CSR for a key it made
/// itself. Accepted without a client certificate; the token is the credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub token: String,
    pub role: NodeRole,
    pub csr_pem: String,
    /// `host:port` other nodes dial this node at (managers), or informational (workers).
    pub advertise_addr: String,
    pub hostname: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"[redacted]")
            .field("role", &self.role)
            .field("advertise_addr", &self.advertise_addr)
            .field("hostname", &self.hostname)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub node_id: u64,
    pub cluster_id: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// `POST /v1/renew`: a node renews its certificate with its current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewResponse {
    pub cert_pem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Active,
    Drain,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Down,
}

/// A manager's place in Raft membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Leader,
    Voter,
    Learner,
    /// A manager recorded in the cluster but not (or no longer) in Raft membership.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub id: u64,
    pub role: NodeRole,
    pub hostname: String,
    pub addr: String,
    pub availability: Availability,
    pub status: NodeStatus,
    pub raft: RaftRole,
    pub labels: BTreeMap<String, String>,
    pub cert_serial: String,
    pub removed: bool,
    pub joined_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub joined_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// `PATCH /v1/nodes/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeUpdate {
    #[serde(default)]
    pub availability: Option<Availability>,
    /// Labels to set (admin only): what `node.labels.K==V` constraints place on. A node
    /// cannot set its own labels, which is what makes them safe to place secrets by.
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
}

/// `POST /v1/join-tokens/{role}/rotate`: the new token, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    pub role: NodeRole,
    pub token: String,
}

impl std::fmt::Debug for JoinTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenResponse").field("role", &self.role).field("token", &"[redacted]").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// Last log index the leader knows this member has (leader's view; `None` elsewhere).
    pub matched_index: Option<u64>,
    pub reachable: Option<bool>,
    /// Waiting for `coffer cluster unlock` (asked of the member when the status is made;
    /// `None` when it did not answer).
    #[serde(default)]
    pub locked: Option<bool>,
    /// The unlock key generation this member's store is sealed under (autolock), as it last
    /// recorded it; behind the cluster's, it still needs the previous unlock key.
    #[serde(default)]
    pub unlock_generation: Option<u64>,
}

/// `GET /v1/cluster/status`, answered by the manager asked (each reports its own view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Whether autolock is on, and the generation of the current unlock key (0: none yet).
    #[serde(default)]
    pub autolock: bool,
    #[serde(default)]
    pub unlock_generation: u64,
    /// `true` when a leader is known and this manager has applied what it knows committed
    /// (within 100 entries: applying trails committing by a few under load).
    pub healthy: bool,
}

/// `GET /v1/cluster/digest`: a digest of this manager's applied state. Two managers at the
/// same applied index must show the same digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateDigestInfo {
    pub node_id: u64,
    /// The index of the last entry applied (none before the first).
    pub applied_index: Option<u64>,
    /// SHA-256 of the state-machine records in key order, lowercase hex.
    pub sha256: String,
    /// How many records the state holds.
    pub records: u64,
}

/// `POST /v1/cluster/compact`: this manager built a Raft snapshot of its applied state and
/// purged its log up to it (but for the last `raft.keep_after_snapshot` entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Compacted {
    pub node_id: u64,
    /// The last log index the snapshot holds.
    pub snapshot_index: u64,
    /// The last log index purged (none if the log was too short to purge anything).
    pub purged_index: Option<u64>,
}

/// `POST /v1/admins`: issue (or re-issue) an admin credential for an operator's key. The
/// key stays with the operator: only its CSR is sent. Re-issuing a name replaces the
/// certificate the cluster accepts for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminIssue {
    pub name: String,
    pub csr_pem: String,
    /// Validity in seconds; defaults to 30 days.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// The issued admin certificate, with the CA that checks the managers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminIssued {
    pub name: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
    pub expires_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub expires_at: String,
}

/// An admin credential as `coffer admin ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminInfo {
    pub name: String,
    pub serial: String,
    pub created_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub created_at: String,
    pub expires_at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub expires_at: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminList {
    pub admins: Vec<AdminInfo>,
}

/// `POST /v1/unlock`: the unlock key, for a manager that restarted locked (autolock).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnlockRequest {
    /// `COFFER-KEY-1-...`
    pub key: String,
}

impl std::fmt::Debug for UnlockRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockRequest").field("key", &"[redacted]").finish()
    }
}

/// `PATCH /v1/cluster/autolock`: turn autolock on or off for every manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AutolockUpdate {
    pub enabled: bool,
}

/// A new unlock key (autolock turned on, or the key rotated): shown once, stored nowhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnlockKeyIssued {
    /// `COFFER-KEY-1-...`; `None` when autolock was turned off.
    pub key: Option<String>,
    pub generation: u64,
}

impl std::fmt::Debug for UnlockKeyIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockKeyIssued").field("generation", &self.generation).finish_non_exhaustive()
    }
}
