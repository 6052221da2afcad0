//! How the CLI shows things: tables for people, `--format json` for scripts (the wire
//! types as they are), node ids in a short fixed-width form, times as RFC 3339 or an age.

use std::collections::BTreeSet;

use clap::ValueEnum;
use coffer_api::cluster::NodeInfo;

use crate::cli::exit::CliError;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Local(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// One line of JSON (for event lines that scripts read as they come).
pub(crate) fn print_json_line(v: &serde_json::Value) {
    println!("{v}");
}

/// An enum's wire name (`drain`, `worker`, ...).
pub(crate) fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Width of a node id in tables: 12 of its 16 hex digits, as Docker shortens ids.
const SHORT_ID: usize = 12;

/// A node id in full: 16 lowercase hex digits.
pub(crate) fn node_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// A node id as tables show it: the first 12 hex digits (any unique prefix names it).
pub(crate) fn node_short(id: u64) -> String {
    node_hex(id)[..SHORT_ID].to_string()
}

/// An optional node id for a table, `-` when absent.
pub(crate) fn node_opt(id: Option<u64>) -> String {
    id.map(node_short).unwrap_or_else(|| "-".into())
}

/// How long ago `ms` was, roughly (`5s ago`, `3h ago`).
pub(crate) fn age(ms: u64) -> String {
    let now = coffer_api::time::now_millis();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Which node `name` means: the API's decimal id, a full or unique prefix of the hex form
/// the CLI shows, or a hostname only one node has.
pub(crate) fn resolve_node(nodes: &[NodeInfo], name: &str) -> Result<u64, CliError> {
    if let Some(n) = nodes.iter().find(|n| n.id.to_string() == name) {
        return Ok(n.id);
    }
    let lower = name.to_ascii_lowercase();
    if !lower.is_empty() && lower.len() <= 16 && lower.bytes().all(|c| c.is_ascii_hexdigit()) {
        let by_prefix: BTreeSet<u64> =
            nodes.iter().filter(|n| node_hex(n.id).starts_with(&lower)).map(|n| n.id).collect();
        match by_prefix.len() {
            1 => return Ok(*by_prefix.iter().next().unwrap_or(&0)),
            0 => {}
            _ => return Err(CliError::Local(format!("node id prefix {name:?} is ambiguous; give more digits"))),
        }
    }
    let by_host: Vec<u64> = nodes.iter().filter(|n| n.hostname == name).map(|n| n.id).collect();
    match by_host.as_slice() {
        [id] => Ok(*id),
        [] => Err(CliError::Local(format!("no node has id or hostname {name:?}"))),
        _ => Err(CliError::Local(format!("several nodes have hostname {name:?}; use the node id"))),
    }
}

/// A node's address for a table: a worker dials out only, so it has none to dial.
/// (Its address is where its join came from; `:0` stands for "no port".)
pub(crate) fn node_addr(addr: &str) -> &str {
    let addr = addr.strip_suffix(":0").unwrap_or(addr);
    if addr.is_empty() || addr == "0.0.0.0" {
        "-"
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_api::cluster::{Availability, NodeRole, NodeStatus, RaftRole};

    fn node(id: u64, hostname: &str) -> NodeInfo {
        NodeInfo {
            id,
            role: NodeRole::Worker,
            hostname: hostname.into(),
            addr: "0.0.0.0:0".into(),
            availability: Availability::Active,
            status: NodeStatus::Ready,
            raft: RaftRole::None,
            labels: Default::default(),
            cert_serial: String::new(),
            removed: false,
            joined_at_ms: 0,
            joined_at: String::new(),
        }
    }

    #[test]
    fn node_ids_are_fixed_width_and_resolve_by_prefix_as_docker_does() {
        assert_eq!(node_short(0x1234), "000000000000");
        assert_eq!(node_hex(0xdead_beef_0000_0001), "deadbeef00000001");
        let nodes = [node(0xdead_beef_0000_0001, "a"), node(0xdead_0000_0000_0002, "b"), node(42, "web")];
        assert_eq!(resolve_node(&nodes, "deadb").expect("unique prefix"), 0xdead_beef_0000_0001);
        assert_eq!(resolve_node(&nodes, "DEAD00").expect("case-insensitive"), 0xdead_0000_0000_0002);
        assert!(resolve_node(&nodes, "dead").is_err(), "ambiguous prefix");
        assert_eq!(resolve_node(&nodes, "42").expect("decimal id"), 42);
        assert_eq!(resolve_node(&nodes, "web").expect("hostname"), 42);
        assert!(resolve_node(&nodes, "nope").is_err());
    }
}
