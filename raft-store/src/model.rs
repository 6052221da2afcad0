//! The replicated state (DESIGN.md §3) as stored records, and the commands that change it.
//!
//! These are storage types: they are versioned by [`crate::codec`] and change only by
//! appending fields at the end of a new format version. Wire types live in the `api` crate
//! and are converted by hand in `node`; nothing here derives anything "for the wire".
//!
//! Every value that derives from a secret (a secret's value, the CA key, the cluster key
//! that seals secret values) is held in [`SealedBytes`] or [`SecretBytes`], whose `Debug`
//! is redacted. Secret values arrive here already sealed by the proposer with the cluster
//! key; this crate seals everything once more at rest with the manager's own data key.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::NodeId;

/// Milliseconds since the Unix epoch, chosen by the proposer (so apply stays deterministic).
pub type Millis = u64;

/// Bytes that are already ciphertext (e.g. a secret value sealed with the cluster key).
/// Not secret in themselves, but never interesting to print either.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBytes(pub Vec<u8>);

impl fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBytes({} bytes)", self.0.len())
    }
}

/// Plaintext key material that is part of the replicated state (e.g. the cluster key that
/// seals secret values). Redacted, zeroized on drop; at rest it is sealed like every record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeRole {
    Manager,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    Active,
    Drain,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Ready,
    Down,
}

/// Cluster-wide settings that every manager must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub node_cert_validity_secs: u64,
    pub grant_ttl_secs: u64,
    pub worker_heartbeat_ms: u64,
    pub worker_missed_heartbeats: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_cert_validity_secs: 90 * 24 * 3600,
            grant_ttl_secs: 30,
            worker_heartbeat_ms: 2000,
            worker_missed_heartbeats: 3,
        }
    }
}

/// The cluster's identity and trust roots. Exactly one, written by `InitCluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    pub created_at: Millis,
    pub ca_cert_pem: String,
    /// The root CA's private key, PEM, sealed by the proposer.
    pub ca_key: SealedBytes,
    /// The key that seals secret values inside commands and records (cluster-wide).
    pub value_key: SecretBytes,
    /// SHA-256 of the current worker join token; compared in constant time by `node`.
    pub worker_token_hash: [u8; 32],
    /// SHA-256 of the current manager join token.
    pub manager_token_hash: [u8; 32],
    pub settings: ClusterSettings,
    pub autolock: bool,
    /// The unlock material under autolock (wrapped, never the unlock key itself).
    pub wrapped_unlock: Option<SealedBytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub role: NodeRole,
    pub hostname: String,
    pub addr: String,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    /// Serial of the node's current certificate (hex); a renewal replaces it.
    pub cert_serial: String,
    /// Managers: public key that verifies the grants this node signs as leader.
    pub grant_public_key: Option<Vec<u8>>,
    /// A removed node stays recorded so its certificate is refused until it expires.
    pub removed: bool,
    pub joined_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionMeta {
    pub version: u32,
    pub created_at: Millis,
    /// Plaintext size in bytes, as the proposer stated it.
    pub size: u32,
}

/// A secret's metadata. Its values are stored apart (one record per version), so listing
/// and inspecting secrets never reads a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub versions: Vec<SecretVersionMeta>,
}

impl SecretRecord {
    pub fn latest_version(&self) -> Option<u32> {
        self.versions.last().map(|v| v.version)
    }
}

/// How a service mounts a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub secret_id: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// `None`: follow the newest version.
    pub pinned_version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub replicas: u32,
    /// Placement constraints, already validated, e.g. `node.labels.zone==a`.
    pub constraints: Vec<String>,
    pub secrets: Vec<SecretRef>,
    pub labels: BTreeMap<String, String>,
}

/// What a service runs besides its secrets' files: the container a worker's runtime starts
/// for each task, and the Docker API's spec of the service as its client last sent it
/// (what Coffer does not act on, such as ports or resources, is kept and shown back).
/// Stored apart from [`ServiceSpec`], whose encoding older logs fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRuntime {
    pub image: Option<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// The Docker `ServiceSpec` (JSON), without what the service's own fields say.
    pub docker_spec: Option<String>,
}

/// What a service's running containers are told when one of their secrets changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnSecretChange {
    /// Nothing: the file is replaced in place and the program reads it again itself.
    #[default]
    Nothing,
    /// This signal (a name such as `SIGHUP`) is sent to the container.
    Signal(String),
    /// The container is restarted.
    Restart,
}

/// Coffer's own options for what a service runs (Docker's are in [`ServiceRuntime`]).
/// Stored apart from it, whose encoding older logs fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// Where a container sees its task's secrets directory; `/run/secrets` when `None`.
    pub secrets_mount: Option<String>,
    pub on_secret_change: OnSecretChange,
}

/// What a worker last reported of a task it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedState {
    /// The worker has the task and prepares it (grants, files).
    Pending,
    /// Its files are in place and its container is being created or started.
    Starting,
    /// Its container runs.
    Running,
    /// Its files are in place and nothing is to run here (no image, or a worker without a
    /// container runtime: an external orchestrator runs it).
    Ready,
    /// Its container exited with this code; the worker restarts it after a backoff.
    Exited(i64),
    /// The worker could not prepare or start it (the engine's or the host's message).
    Failed(String),
}

/// A task's last reported state, by the node it was placed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusRecord {
    pub node_id: NodeId,
    pub state: ObservedState,
    pub at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub name: String,
    pub spec: ServiceSpec,
    /// Bumped by every update; updates name the version they expect.
    pub spec_version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Running,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service_id: String,
    pub slot: u32,
    pub node_id: Option<NodeId>,
    pub desired: TaskState,
    /// `(secret id, version)` pairs this task was given.
    pub secret_versions: Vec<(String, u32)>,
    pub spec_version: u64,
    pub updated_at: Millis,
}

/// Who may sign grants in a leader term, and the key that verifies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantAuthority {
    pub term: u64,
    pub node_id: NodeId,
    pub public_key: Vec<u8>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenScope {
    ReadOnly,
    ReadWrite,
}

/// An API token for orchestration tooling: only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    /// SHA-256 of the token's secret part; compared in constant time by `node`.
    pub hash: [u8; 32],
    pub created_at: Millis,
    pub revoked: bool,
}

/// An admin client credential: a named certificate the cluster accepts for administration
/// while it is the current one of its name and not revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCredentialRecord {
    /// The certificate's CN.
    pub name: String,
    /// The serial of the one certificate of this name that is accepted (hex).
    pub serial_hex: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked: bool,
}

/// A node's previous certificate, still accepted for a short grace period after a renewal
/// (its pooled connections move to the new one meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringCert {
    pub serial_hex: String,
    pub until: Millis,
}

/// A replicated command. Variants are only ever appended (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    InitCluster(ClusterRecord),
    SetSettings(ClusterSettings),
    SetJoinTokenHash {
        role: NodeRole,
        hash: [u8; 32],
    },
    /// Records a joined node, or replaces what is known of it (role, availability, status,
    /// labels, certificate serial).
    PutNode(NodeRecord),
    RemoveNode {
        id: NodeId,
        at: Millis,
    },
    /// `size` is the plaintext size, for `inspect`; the value is sealed by the proposer.
    CreateSecret {
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
        value: SealedBytes,
        size: u32,
        at: Millis,
    },
    RotateSecret {
        id: String,
        value: SealedBytes,
        size: u32,
        at: Millis,
    },
    SetSecretLabels {
        id: String,
        labels: BTreeMap<String, String>,
        at: Millis,
    },
    RemoveSecret {
        id: String,
    },
    CreateService {
        id: String,
        name: String,
        spec: ServiceSpec,
        at: Millis,
    },
    UpdateService {
        id: String,
        expected_version: u64,
        spec: ServiceSpec,
        at: Millis,
    },
    RemoveService {
        id: String,
    },
    PutTask(TaskRecord),
    RemoveTask {
        id: String,
    },
    SetGrantAuthority(GrantAuthority),
    CreateApiToken(ApiTokenRecord),
    RevokeApiToken {
        id: String,
    },
    /// Changes some fields of a node. Refused for a removed node, so that no decision
    /// made on an older read (the scheduler's, a renewal's) can bring it back.
    UpdateNode {
        id: NodeId,
        status: Option<NodeStatus>,
        availability: Option<Availability>,
        cert_serial: Option<String>,
        at: Millis,
    },
    /// An operator's change to a node, all of it or nothing: availability, and labels added
    /// and removed (labels are set by operators, never by the node itself: what placement
    /// can trust). Refused for a removed node. Appended last, so that entries of older logs
    /// keep their encoding.
    SetNodeSpec {
        id: NodeId,
        availability: Option<Availability>,
        add: BTreeMap<String, String>,
        remove: Vec<String>,
        at: Millis,
    },
    /// Issues (or re-issues, replacing the accepted serial) an admin credential.
    PutAdminCredential(AdminCredentialRecord),
    /// Revokes an admin credential; refused for the last one that is not revoked.
    RevokeAdminCredential {
        name: String,
    },
    /// A node's certificate was renewed: `serial` is its certificate from now on, and the
    /// one it replaces is accepted until `previous_until`, then refused. Refused for a
    /// removed node.
    RenewNodeCert {
        id: NodeId,
        serial: String,
        previous_until: Millis,
        at: Millis,
    },
    /// Turns autolock on or off. `wrapped_unlock`, when given, is a new unlock key (with its
    /// generation) sealed with the cluster value key: every manager re-wraps its own store's
    /// data key under a key derived from it when it applies this. Turning autolock off keeps
    /// the last one, so that generations keep growing.
    SetAutolock {
        enabled: bool,
        wrapped_unlock: Option<SealedBytes>,
    },
    /// Manager `node`'s store is now sealed under unlock key `generation` (0: under its key
    /// file): what `cluster status` shows of who still needs an older unlock key.
    SetUnlockGeneration {
        node: NodeId,
        generation: u64,
    },
    /// `CreateService`, and what the service runs, in one commit.
    CreateServiceWithRuntime {
        id: String,
        name: String,
        spec: ServiceSpec,
        runtime: ServiceRuntime,
        at: Millis,
    },
    /// `UpdateService`, replacing what the service runs, in one commit.
    UpdateServiceWithRuntime {
        id: String,
        expected_version: u64,
        spec: ServiceSpec,
        runtime: ServiceRuntime,
        at: Millis,
    },
    /// Commands proposed together (the leader's group commit): one log entry, one fsync,
    /// applied in order, each with its own outcome ([`Applied::Batch`]); a refused one
    /// changes nothing and holds back none of the others.
    Batch(Vec<Command>),
    /// `CreateServiceWithRuntime`, with Coffer's runtime options, in one commit. Appended
    /// after `Batch`, so that entries of older logs keep their encoding.
    CreateServiceWithOptions {
        id: String,
        name: String,
        spec: ServiceSpec,
        runtime: ServiceRuntime,
        options: RuntimeOptions,
        at: Millis,
    },
    /// `UpdateServiceWithRuntime`, replacing Coffer's runtime options too, in one commit.
    UpdateServiceWithOptions {
        id: String,
        expected_version: u64,
        spec: ServiceSpec,
        runtime: ServiceRuntime,
        options: RuntimeOptions,
        at: Millis,
    },
    /// What worker `node` observes of its tasks. A report about a task that is not placed
    /// on `node` (any more) is skipped: a worker reports only on its own tasks.
    ReportTaskStatus {
        node: NodeId,
        reports: Vec<(String, ObservedState)>,
        at: Millis,
    },
}

impl Command {
    /// Whether applying this can change which secret versions a node's tasks need.
    pub fn affects_placement(&self) -> bool {
        if let Command::Batch(cmds) = self {
            return cmds.iter().any(Command::affects_placement);
        }
        matches!(
            self,
            Command::PutNode(_)
                | Command::RemoveNode { .. }
                | Command::UpdateNode { .. }
                | Command::SetNodeSpec { .. }
                | Command::RotateSecret { .. }
                | Command::RemoveSecret { .. }
                | Command::CreateService { .. }
                | Command::UpdateService { .. }
                | Command::RemoveService { .. }
                | Command::CreateServiceWithRuntime { .. }
                | Command::UpdateServiceWithRuntime { .. }
                | Command::CreateServiceWithOptions { .. }
                | Command::UpdateServiceWithOptions { .. }
                | Command::PutTask(_)
                | Command::RemoveTask { .. }
        )
    }

    /// A name for logs and metrics; never includes a value.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::InitCluster(_) => "init_cluster",
            Command::SetSettings(_) => "set_settings",
            Command::SetJoinTokenHash { .. } => "set_join_token_hash",
            Command::PutNode(_) => "put_node",
            Command::RemoveNode { .. } => "remove_node",
            Command::CreateSecret { .. } => "create_secret",
            Command::RotateSecret { .. } => "rotate_secret",
            Command::SetSecretLabels { .. } => "set_secret_labels",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::CreateService { .. } => "create_service",
            Command::UpdateService { .. } => "update_service",
            Command::RemoveService { .. } => "remove_service",
            Command::PutTask(_) => "put_task",
            Command::RemoveTask { .. } => "remove_task",
            Command::SetGrantAuthority(_) => "set_grant_authority",
            Command::CreateApiToken(_) => "create_api_token",
            Command::RevokeApiToken { .. } => "revoke_api_token",
            Command::UpdateNode { .. } => "update_node",
            Command::SetNodeSpec { .. } => "set_node_spec",
            Command::PutAdminCredential(_) => "put_admin_credential",
            Command::RevokeAdminCredential { .. } => "revoke_admin_credential",
            Command::RenewNodeCert { .. } => "renew_node_cert",
            Command::SetAutolock { .. } => "set_autolock",
            Command::SetUnlockGeneration { .. } => "set_unlock_generation",
            Command::CreateServiceWithRuntime { .. } => "create_service_with_runtime",
            Command::UpdateServiceWithRuntime { .. } => "update_service_with_runtime",
            Command::Batch(_) => "batch",
            Command::CreateServiceWithOptions { .. } => "create_service_with_options",
            Command::UpdateServiceWithOptions { .. } => "update_service_with_options",
            Command::ReportTaskStatus { .. } => "report_task_status",
        }
    }
}

/// What kind of object an apply error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Cluster,
    Node,
    Secret,
    SecretVersion,
    Service,
    Task,
    GrantAuthority,
    ApiToken,
    AdminCredential,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Node => "node",
            ObjectKind::Secret => "secret",
            ObjectKind::SecretVersion => "secret version",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::GrantAuthority => "grant authority",
            ObjectKind::ApiToken => "api token",
            ObjectKind::AdminCredential => "admin credential",
        })
    }
}

/// A command that was committed but refused by the state machine. Deterministic: every
/// manager refuses it the same way, and a refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {name:?} already exists")]
    NameTaken { kind: ObjectKind, name: String },
    #[error("{kind} {id} already exists")]
    IdTaken { kind: ObjectKind, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: ObjectKind, id: String },
    #[error("secret is used by services {services:?}")]
    SecretInUse { services: Vec<String> },
    #[error("service changed meanwhile: expected spec version {expected}, found {found}")]
    VersionConflict { expected: u64, found: u64 },
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    #[error("the cluster is not initialized")]
    NotInitialized,
    #[error("grant authority for term {term} is stale: term {newer} already has one")]
    StaleAuthority { term: u64, newer: u64 },
    #[error("node {0} was removed")]
    NodeRemoved(NodeId),
    #[error("{0:?} is the last admin credential that is not revoked; issue another first")]
    LastAdminCredential(String),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Membership changes, blank entries, and commands that return nothing.
    Done,
    /// A secret version was created (by create or rotate).
    SecretVersion { id: String, version: u32 },
    /// A service spec was stored with this version.
    ServiceVersion { id: String, version: u64 },
    /// The outcome of each command of a [`Command::Batch`], in order.
    Batch(Vec<Result<Applied, ApplyError>>),
}

/// The state machine's reply to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Result<Applied, ApplyError>);
