//! The OpenAPI 3 document, generated from the handlers' annotations and the `api` crate's
//! types, so it cannot drift from the code. Served at `/v1/openapi.json`; a copy is
//! checked in at `api/openapi.json` and a test fails when that copy is stale.

use utoipa::OpenApi;

use crate::{routes, secrets_api, services_api, tokens_api, worker_api};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Coffer API", description = "Clustered secret store. Authenticate with an admin client \
        certificate from the cluster CA, or with `Authorization: Bearer <API token>` where noted."),
    paths(
        secrets_api::create, secrets_api::list, secrets_api::inspect, secrets_api::rotate,
        secrets_api::set_labels, secrets_api::remove,
        services_api::create, services_api::list, services_api::inspect, services_api::update,
        services_api::remove,
        tokens_api::create, tokens_api::list, tokens_api::revoke,
        worker_api::service_tasks, worker_api::assignments, worker_api::heartbeat, worker_api::grants,
        worker_api::redeem,
        routes::status, routes::list_nodes, routes::inspect_node, routes::update_node, routes::remove_node,
        routes::promote, routes::demote, routes::rotate_token,
    ),
    tags(
        (name = "secrets", description = "Secrets; values never come back out of this API"),
        (name = "services", description = "Services and the secrets they mount"),
        (name = "tokens", description = "API tokens (admin certificate only)"),
        (name = "worker", description = "The worker session (worker certificates only)"),
        (name = "cluster", description = "Nodes, join tokens and cluster status (admin certificate only)"),
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
}
