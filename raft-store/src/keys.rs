//! Key scheme of the `sm` column family. Keys carry ids and names, never values.
//!
//! Ids are separated from what follows by a NUL byte so an id that is a prefix of another
//! never matches the other's records in a prefix scan.

use crate::NodeId;

pub(crate) const CLUSTER: &[u8] = b"cluster";
pub(crate) const NODE: &[u8] = b"node/";
pub(crate) const SECRET: &[u8] = b"secret/";
pub(crate) const SECRET_NAME: &[u8] = b"secret-name/";
pub(crate) const SECRET_VALUE: &[u8] = b"secret-value/";
pub(crate) const SERVICE: &[u8] = b"service/";
pub(crate) const SERVICE_NAME: &[u8] = b"service-name/";
pub(crate) const TASK: &[u8] = b"task/";
pub(crate) const AUTHORITY: &[u8] = b"authority/";
pub(crate) const API_TOKEN: &[u8] = b"api-token/";
pub(crate) const NODE_TASK: &[u8] = b"node-task/";
pub(crate) const ADMIN: &[u8] = b"admin/";
pub(crate) const RETIRING_CERT: &[u8] = b"retiring-cert/";
pub(crate) const UNLOCK_GEN: &[u8] = b"unlock-gen/";
pub(crate) const SERVICE_RUNTIME: &[u8] = b"service-runtime/";
pub(crate) const SERVICE_OPTIONS: &[u8] = b"service-options/";
pub(crate) const TASK_STATUS: &[u8] = b"task-status/";

fn join(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

pub(crate) fn node(id: NodeId) -> Vec<u8> {
    join(NODE, &id.to_be_bytes())
}

pub(crate) fn secret(id: &str) -> Vec<u8> {
    join(SECRET, id.as_bytes())
}

pub(crate) fn secret_name(name: &str) -> Vec<u8> {
    join(SECRET_NAME, name.as_bytes())
}

/// Prefix of every stored value of one secret.
pub(crate) fn secret_values(id: &str) -> Vec<u8> {
    let mut k = join(SECRET_VALUE, id.as_bytes());
    k.push(0);
    k
}

pub(crate) fn secret_value(id: &str, version: u32) -> Vec<u8> {
    let mut k = secret_values(id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn service(id: &str) -> Vec<u8> {
    join(SERVICE, id.as_bytes())
}

pub(crate) fn service_runtime(id: &str) -> Vec<u8> {
    join(SERVICE_RUNTIME, id.as_bytes())
}

pub(crate) fn service_options(id: &str) -> Vec<u8> {
    join(SERVICE_OPTIONS, id.as_bytes())
}

pub(crate) fn task_status(id: &str) -> Vec<u8> {
    join(TASK_STATUS, id.as_bytes())
}

pub(crate) fn service_name(name: &str) -> Vec<u8> {
    join(SERVICE_NAME, name.as_bytes())
}

pub(crate) fn task(id: &str) -> Vec<u8> {
    join(TASK, id.as_bytes())
}

/// Prefix of the index entries of one node's tasks.
pub(crate) fn node_tasks(node: NodeId) -> Vec<u8> {
    let mut k = join(NODE_TASK, &node.to_be_bytes());
    k.push(b'/');
    k
}

pub(crate) fn node_task(node: NodeId, task: &str) -> Vec<u8> {
    let mut k = node_tasks(node);
    k.extend_from_slice(task.as_bytes());
    k
}

pub(crate) fn authority(term: u64) -> Vec<u8> {
    join(AUTHORITY, &term.to_be_bytes())
}

pub(crate) fn api_token(id: &str) -> Vec<u8> {
    join(API_TOKEN, id.as_bytes())
}

pub(crate) fn unlock_gen(node: NodeId) -> Vec<u8> {
    join(UNLOCK_GEN, &node.to_be_bytes())
}

pub(crate) fn retiring_cert(node: NodeId) -> Vec<u8> {
    join(RETIRING_CERT, &node.to_be_bytes())
}

pub(crate) fn admin(name: &str) -> Vec<u8> {
    join(ADMIN, name.as_bytes())
}

/// The smallest key greater than every key that starts with `prefix` (for range ends).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; 9]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_overlap() {
        assert!(!secret_value("ab", 1).starts_with(&secret_values("a")));
        assert!(secret_value("a", 1).starts_with(&secret_values("a")));
        assert!(prefix_end(b"node/") > node(u64::MAX));
        assert!(prefix_end(b"node/") < secret("x"));
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
    }
}
