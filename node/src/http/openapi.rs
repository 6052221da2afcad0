//! The OpenAPI 3 document, generated from the handlers' annotations and the `api` crate's
//! types, so it cannot drift from the code. Served at `/v1/openapi.json`; a copy is
//! checked in at `api/openapi.json` and a test fails when that copy is stale.

use utoipa::OpenApi;

use crate::http::{admins, autolock, docker, events, nodes, secrets, services, snapshot, task_status, tokens, worker};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Coffer API", description = "Clustered secret store. Authenticate with an admin client \
        certificate from the cluster CA, or with `Authorization: Bearer <API token>` where noted."),
    paths(
        secrets::create, secrets::list, secrets::inspect, secrets::rotate, secrets::set_labels, secrets::remove,
        services::create, services::list, services::inspect, services::update, services::remove,
        tokens::create, tokens::list, tokens::revoke,
        worker::service_tasks, worker::assignments, worker::heartbeat, worker::grants, worker::redeem,
        task_status::report,
        nodes::status, nodes::digest, nodes::compact, nodes::list_nodes, nodes::inspect_node, nodes::update_node, nodes::remove_node,
        nodes::promote, nodes::demote, nodes::rotate_token,
        admins::issue, admins::list, admins::revoke,
        snapshot::save,
        events::events,
        autolock::update, autolock::rotate, autolock::unlock,
        docker::ping, docker::version, docker::info, docker::swarm,
        docker::secrets::create, docker::secrets::list, docker::secrets::inspect, docker::secrets::update,
        docker::secrets::remove,
        docker::services::create, docker::services::list, docker::services::inspect, docker::services::update,
        docker::services::remove,
        docker::nodes::list, docker::nodes::inspect, docker::nodes::update, docker::nodes::remove,
        docker::nodes::list_tasks, docker::nodes::inspect_task, docker::events::events,
    ),
    tags(
        (name = "secrets", description = "Secrets; values never come back out of this API"),
        (name = "services", description = "Services and the secrets they mount"),
        (name = "tokens", description = "API tokens (admin certificate only)"),
        (name = "worker", description = "The worker session (worker certificates only)"),
        (name = "cluster", description = "Nodes, join tokens and cluster status (admin certificate only)"),
        (name = "events", description = "Committed changes to secrets (never values), services, tasks and nodes, \
            resumable by Raft index"),
        (name = "docker", description = "The Docker Engine API v1.41's secrets, services, tasks and nodes, for the \
            docker CLI and Swarm tooling: every path also answers under `/v1.NN/` (25 <= NN <= 41). Docker's field \
            names and `{\"message\"}` errors; other Engine paths answer 501."),
    )
)]
pub struct ApiDoc;

/// The document as served and checked in.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when `api/openapi.json` differs from what the code generates. Refresh with
    /// `COFFER_UPDATE_OPENAPI=1 cargo test -p coffer-node openapi`.
    #[test]
    fn checked_in_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
        let generated = document() + "\n";
        if std::env::var_os("COFFER_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write api/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "api/openapi.json is stale; run: COFFER_UPDATE_OPENAPI=1 cargo test -p coffer-node openapi"
        );
        let doc: serde_json::Value = serde_json::from_str(&generated).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in ["/v1/secrets", "/v1/secrets/{secret}/rotate", "/v1/services/{service}", "/v1/tokens", "/v1/nodes"]
        {
            assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
        }
    }

    /// What the OpenAPI 3.1 specification requires of a document and validators check:
    /// the version, unique operation ids, every `$ref` resolving, every templated path
    /// parameter declared `in: path` and required, and a description on every response.
    #[test]
    fn the_document_is_valid_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let mut errors = Vec::new();
        let mut ids = std::collections::BTreeMap::new();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            let templated: Vec<&str> =
                path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            for (method, op) in item.as_object().expect("path item") {
                let at = format!("{} {path}", method.to_uppercase());
                match op["operationId"].as_str() {
                    Some(id) => {
                        if let Some(other) = ids.insert(id.to_string(), at.clone()) {
                            errors.push(format!("operationId {id:?} of {at} repeats that of {other}"));
                        }
                    }
                    None => errors.push(format!("{at} has no operationId")),
                }
                let params: Vec<&serde_json::Value> =
                    op["parameters"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
                for name in &templated {
                    let declared =
                        params.iter().any(|p| p["in"] == "path" && p["name"] == *name && p["required"] == true);
                    if !declared {
                        errors.push(format!(
                            "{at}: path parameter {name:?} is not declared as a required path parameter"
                        ));
                    }
                }
                for p in params.iter().filter(|p| p["in"] == "path") {
                    if !templated.iter().any(|t| p["name"] == *t) {
                        errors.push(format!("{at}: path parameter {} is not in the path", p["name"]));
                    }
                }
                for (status, resp) in op["responses"].as_object().into_iter().flatten() {
                    if !resp["description"].is_string() {
                        errors.push(format!("{at}: response {status} has no description"));
                    }
                }
            }
        }
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let target = r.strip_prefix("#/").map(|p| p.split('/').fold(&doc, |v, seg| &v[seg]));
            if target.is_none_or(|t| t.is_null()) {
                errors.push(format!("$ref {r} does not resolve"));
            }
        }
        assert!(errors.is_empty(), "api/openapi.json is not valid OpenAPI 3.1:\n{}", errors.join("\n"));
    }
}
