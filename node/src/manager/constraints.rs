//! Placement constraints against a node's record: the grammar is shared with the CLI
//! ([`coffer_api::rules::Constraint`]); what a node's fields are is the manager's. A
//! `node.id` is the API's decimal number (the CLI turns the hex forms people see into it).

use coffer_api::rules::{Constraint, ConstraintField};
use coffer_raft_store::model::{NodeRecord, NodeRole};

/// Whether `node` satisfies `c`.
pub(crate) fn matches(c: &Constraint, node: &NodeRecord) -> bool {
    let actual = match &c.field {
        ConstraintField::Id => Some(node.id.to_string()),
        ConstraintField::Hostname => Some(node.hostname.clone()),
        ConstraintField::Role => Some(match node.role {
            NodeRole::Manager => "manager".to_string(),
            NodeRole::Worker => "worker".to_string(),
        }),
        ConstraintField::Label(k) => node.labels.get(k).cloned(),
    };
    (actual.as_deref() == Some(c.value.as_str())) == c.equal
}
