//! Placement constraints: `node.id==X`, `node.hostname==X`, `node.role==manager|worker`,
//! `node.labels.K==V`, and the same with `!=`. Parsed when a service is written (a bad
//! constraint is refused then, not discovered by the scheduler); evaluated by the scheduler.

use coffer_raft_store::model::{NodeRecord, NodeRole};

use crate::api_error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    Hostname,
    Role,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub field: Field,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// # Errors
    /// A message saying what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::invalid(format!(
                "constraint {:?} {why}; use node.id, node.hostname, node.role or node.labels.KEY with == or !=",
                text.chars().take(80).collect::<String>()
            ))
        };
        let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("!=") {
            (l, r, false)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else {
            return Err(bad("has no == or !="));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(bad("has no single value"));
        }
        let field = match lhs {
            "node.id" => {
                value.parse::<u64>().map_err(|_| bad("compares node.id with something that is not a node id"))?;
                Field::Id
            }
            "node.hostname" => Field::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(bad("compares node.role with something other than manager or worker"));
                }
                Field::Role
            }
            other => match other.strip_prefix("node.labels.") {
                Some(k) if !k.is_empty() => Field::Label(k.to_string()),
                _ => return Err(bad("names an unknown attribute")),
            },
        };
        Ok(Self { field, equal, value: value.to_string() })
    }

    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &NodeRecord) -> bool {
        let actual = match &self.field {
            Field::Id => Some(node.id.to_string()),
            Field::Hostname => Some(node.hostname.clone()),
            Field::Role => Some(match node.role {
                NodeRole::Manager => "manager".to_string(),
                NodeRole::Worker => "worker".to_string(),
            }),
            Field::Label(k) => node.labels.get(k).cloned(),
        };
        (actual.as_deref() == Some(self.value.as_str())) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms_and_refuses_others() {
        let c = Constraint::parse("node.labels.zone==eu-1").expect("label");
        assert_eq!(c, Constraint { field: Field::Label("zone".into()), equal: true, value: "eu-1".into() });
        assert!(!Constraint::parse("node.role!=manager").expect("role").equal);
        Constraint::parse("node.id==42").expect("id");
        Constraint::parse("node.hostname==web-1").expect("hostname");
        for bad in [
            "node.role==boss",
            "node.id==abc",
            "node.labels.==x",
            "node.color==red",
            "zone=eu",
            "node.hostname==",
            "a==b==c",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
