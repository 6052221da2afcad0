//! `GET /v1/events`: committed changes to secrets (never values), services, tasks and
//! nodes, one JSON object per line, as a manager applies them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Secret,
    Service,
    Task,
    Node,
    /// The last line of a stream that cannot go on without a gap (the manager installed
    /// a snapshot, or this client fell too far behind): relist, then resume from `index`.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Create,
    Update,
    Remove,
    /// With [`EventKind::Gone`].
    Relist,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    /// The Raft log index the change was applied at; resume with `?since=` this.
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub action: EventAction,
    /// The object's id (a node's as a number in decimal).
    pub id: String,
    /// The object's name, when the change names it (creations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the answering manager applied it.
    pub at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub at: String,
}
