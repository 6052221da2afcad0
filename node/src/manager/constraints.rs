//! Placement constraints against a node's record: the grammar is shared with the CLI
//! ([`coffer_api::rules::Constraint`]); what a node's fields are is the manager's.

use coffer_api::rules::{parse_node_id, Constraint, ConstraintField};
use coffer_raft_store::model::{NodeRecord, NodeRole};

/// Whether `node` satisfies `c`.
pub(crate) fn matches(c: &Constraint, node: &NodeRecord) -> bool {
    if c.field == ConstraintField::Id {
        return (parse_node_id(&c.value) == Some(node.id)) == c.equal;
    }
    let actual = match &c.field {
        ConstraintField::Id => None,
        ConstraintField::Hostname => Some(node.hostname.clone()),
        ConstraintField::Role => Some(match node.role {
            NodeRole::Manager => "manager".to_string(),
            NodeRole::Worker => "worker".to_string(),
        }),
        ConstraintField::Label(k) => node.labels.get(k).cloned(),
    };
    (actual.as_deref() == Some(c.value.as_str())) == c.equal
}
