//! `GET /v1/events`: committed changes to secrets (never values), services, tasks and
//! nodes, one JSON line per log entry, as a manager applies them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Secret,
    Service,
    Task,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Create,
    Update,
    Remove,
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub action: EventAction,
    /// The object's id (a node's as a number in decimal).
    pub id: String,
    /// The object's name, when the change names it (creations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One line of the stream: every change of one log entry (a line is whole or absent, so
/// the last index read means "everything up to here"), or, with `gone`, the last line of
/// a stream that cannot go on without a gap: relist, then resume from `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    /// The Raft log index of the entry; resume with `?since=` this.
    pub index: u64,
    /// When the answering manager applied it.
    pub at_ms: u64,
    /// The same instant in RFC 3339 (UTC).
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}
