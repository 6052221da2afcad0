//! The Docker Engine API's secrets, services, tasks and nodes (v1.41 and the versions the
//! docker CLI negotiates down to), on the manager's port, over the same mutual TLS: the
//! docker CLI and Swarm tooling work against Coffer unchanged.
//!
//! Each handler translates Docker's shapes to Coffer's and calls the same operation as the
//! native API (`http::secrets`, `http::services`, `http::nodes`): one path for validation,
//! authorization and proposals. Errors leave as Docker's `{"message": ...}` with Docker's
//! status codes; what the subset does not serve answers 501 and says so.
//!
//! Must never: return a secret value (Docker's API never does either), or accept a change
//! the native API would refuse.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use serde::Serialize;

use crate::http::auth::{AdminCaller, Operator};
use crate::http::error::ApiError;
use crate::local::ids::NodeHex;
use crate::manager::Manager;

pub(crate) mod events;
mod filters;
pub(crate) mod nodes;
pub(crate) mod secrets;
pub(crate) mod services;
pub(crate) mod shapes;

pub(crate) use filters::Filters;

/// The newest API version served; the docker CLI negotiates down to it.
pub const API_VERSION: &str = "1.41";
/// Secrets came with 1.25.
pub const MIN_API_VERSION: &str = "1.25";
const MAX_MINOR: u32 = 41;
const MIN_MINOR: u32 = 25;

type S = State<Arc<Manager>>;

/// The Docker routes, unversioned: [`unversion`] strips `/v1.NN` before routing.
pub(crate) fn routes() -> Router<Arc<Manager>> {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/swarm", get(swarm))
        .route("/secrets", get(secrets::list))
        .route("/secrets/create", post(secrets::create))
        .route("/secrets/{id}", get(secrets::inspect).delete(secrets::remove))
        .route("/secrets/{id}/update", post(secrets::update))
        .route("/services", get(services::list))
        .route("/services/create", post(services::create))
        .route("/services/{id}", get(services::inspect).delete(services::remove))
        .route("/services/{id}/update", post(services::update))
        .route("/tasks", get(nodes::list_tasks))
        .route("/tasks/{id}", get(nodes::inspect_task))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{id}/update", post(nodes::update))
        .route("/events", get(events::events))
        .route("/_coffer/unsupported-version/{v}", get(bad_version).post(bad_version).delete(bad_version))
        .layer(axum::middleware::from_fn(docker_errors))
}

/// Whether `path` (unversioned) is a resource of the Docker Engine API that Coffer does not
/// serve: it is answered 501 in Docker's shape rather than the native 404.
pub(crate) fn unserved(path: &str) -> bool {
    const ENGINE: &[&str] = &[
        "containers",
        "images",
        "networks",
        "volumes",
        "plugins",
        "configs",
        "build",
        "exec",
        "system",
        "distribution",
        "session",
        "auth",
        "commit",
        "events",
        "grpc",
        "swarm",
        "nodes",
        "services",
        "tasks",
        "secrets",
    ];
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    ENGINE.contains(&first) || first.starts_with("v1.")
}

/// Whether `tail` (a path without its `/v1.NN`) is one of Docker's: only those are
/// rewritten, so that no version prefix reaches a native or Raft route.
fn docker_path(tail: &str) -> bool {
    let first = tail.split('/').next().unwrap_or("");
    matches!(first, "_ping" | "version" | "info") || unserved(first)
}

/// Rewrites `/v1.NN/rest` to `/rest` before routing; a version this server does not speak
/// is routed to an answer that says so.
pub fn unversion<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v1.") else { return req };
    let Some((minor, tail)) = rest.split_once('/') else { return req };
    let Ok(minor) = minor.parse::<u32>() else { return req };
    if !docker_path(tail) {
        return req;
    }
    let new_path = if (MIN_MINOR..=MAX_MINOR).contains(&minor) {
        format!("/{tail}")
    } else {
        format!("/_coffer/unsupported-version/1.{minor}")
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

async fn bad_version(axum::extract::Path(v): axum::extract::Path<String>) -> Response {
    let minor: u32 = v.strip_prefix("1.").and_then(|m| m.parse().ok()).unwrap_or(0);
    let message = if minor > MAX_MINOR {
        format!("client version {v} is too new. Maximum supported API version is {API_VERSION}")
    } else {
        format!("client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version")
    };
    docker_error(StatusCode::BAD_REQUEST, message)
}

/// Docker's error body.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DockerErrorBody {
    pub message: String,
}

pub(crate) fn docker_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(DockerErrorBody { message: message.into() })).into_response()
}

/// What the Docker-compatible subset does not serve.
pub(crate) async fn not_implemented(method: Method, uri: Uri) -> Response {
    docker_error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{method} {} is not served: Coffer speaks the Docker API's secrets, services, tasks and nodes only",
            uri.path()
        ),
    )
}

/// Turns the native error envelope (from an extractor or a native operation) into Docker's
/// `{"message"}`, keeping the status.
async fn docker_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().is_success() || resp.status().is_redirection() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return docker_error(parts.status, "the error could not be read");
    };
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => e.error.message,
        Err(_) => match serde_json::from_slice::<DockerErrorBody>(&bytes) {
            Ok(_) => return Response::from_parts(parts, Body::from(bytes)),
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        },
    };
    let body = serde_json::to_vec(&DockerErrorBody { message }).unwrap_or_default();
    parts.headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// An error with Docker's wording and status.
pub(crate) fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    let code = match status.as_u16() {
        400 => ErrorCode::InvalidArgument,
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::PermissionDenied,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        501 => ErrorCode::FailedPrecondition,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    let e = ApiError::with_code(code, message.into());
    if status == StatusCode::NOT_IMPLEMENTED {
        return ApiError(crate::manager::error::OpError { code: ErrorCode::FailedPrecondition, ..e.0 });
    }
    e
}

fn ping_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert("swarm", HeaderValue::from_static("active/manager"));
    h.insert("cache-control", HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h
}

/// `/_ping`: answered to anyone (it says only which API this is), as Docker does; the CLI
/// asks it before anything else to learn the version.
#[utoipa::path(get, operation_id = "dockerPing", path = "/_ping", tag = "docker", responses((status = 200, description = "OK, with API-Version and OSType headers")))]
pub async fn ping(method: Method) -> Response {
    let mut resp = if method == Method::HEAD { StatusCode::OK.into_response() } else { "OK".into_response() };
    resp.headers_mut().extend(ping_headers());
    resp
}

#[utoipa::path(get, operation_id = "dockerVersion", path = "/version", tag = "docker", responses((status = 200, body = shapes::VersionInfo)))]
pub async fn version(_o: Operator) -> Json<shapes::VersionInfo> {
    let v = env!("CARGO_PKG_VERSION").to_string();
    Json(shapes::VersionInfo {
        platform: shapes::Named { name: "Coffer".into() },
        components: vec![shapes::Component { name: "Coffer".into(), version: v.clone() }],
        version: v,
        api_version: API_VERSION.into(),
        min_api_version: MIN_API_VERSION.into(),
        git_commit: String::new(),
        go_version: String::new(),
        os: "linux".into(),
        arch: docker_arch().into(),
        kernel_version: kernel_version(),
    })
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[utoipa::path(get, operation_id = "dockerInfo", path = "/info", tag = "docker", responses((status = 200, body = shapes::SystemInfo)))]
pub async fn info(State(m): S, _a: AdminCaller) -> Result<Json<shapes::SystemInfo>, ApiError> {
    let nodes: Vec<_> = m.reader.nodes()?.into_iter().filter(|n| !n.removed).collect();
    let managers: Vec<_> = nodes.iter().filter(|n| n.role == coffer_raft_store::model::NodeRole::Manager).collect();
    let me = nodes.iter().find(|n| n.id == m.id);
    let cluster_id = m.cluster()?.id;
    Ok(Json(shapes::SystemInfo {
        id: NodeHex(m.id).to_string(),
        name: me.map(|n| n.hostname.clone()).unwrap_or_default(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        operating_system: "Coffer".into(),
        os_type: "linux".into(),
        architecture: docker_arch().into(),
        kernel_version: kernel_version(),
        ncpu: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        swarm: shapes::SwarmInfo {
            node_id: NodeHex(m.id).to_string(),
            node_addr: m.advertise.clone(),
            local_node_state: "active".into(),
            control_available: true,
            error: String::new(),
            remote_managers: managers
                .iter()
                .map(|n| shapes::Peer { node_id: NodeHex(n.id).to_string(), addr: n.addr.clone() })
                .collect(),
            nodes: nodes.len(),
            managers: managers.len(),
            cluster: shapes::ClusterRef { id: cluster_id, spec: shapes::Named { name: "default".into() } },
        },
    }))
}

/// `/swarm`: the cluster. Join tokens are kept as hashes and shown only by `coffer
/// join-token --rotate`, so they are empty here. `/info` and `/swarm` name the managers
/// and the cluster: admin certificates only, as the native cluster views.
#[utoipa::path(get, operation_id = "dockerSwarm", path = "/swarm", tag = "docker", responses((status = 200, body = shapes::SwarmInspect)))]
pub async fn swarm(State(m): S, _a: AdminCaller) -> Result<Json<shapes::SwarmInspect>, ApiError> {
    let c = m.cluster()?;
    let at = coffer_api::time::rfc3339(c.created_at);
    Ok(Json(shapes::SwarmInspect {
        id: c.id,
        version: shapes::ObjectVersion { index: 1 },
        created_at: at.clone(),
        updated_at: at,
        spec: shapes::Named { name: "default".into() },
        join_tokens: shapes::JoinTokens { worker: String::new(), manager: String::new() },
    }))
}

/// Docker's `?filters=` of a list request, and nothing else it does not know.
pub(crate) fn query_filters(query: &Option<String>, allowed: &[&str]) -> Result<Filters, ApiError> {
    let mut pairs: BTreeMap<String, String> = BTreeMap::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            pairs.insert(k.into_owned(), v.into_owned());
        }
    }
    let f = match pairs.get("filters") {
        Some(raw) => Filters::parse(raw).map_err(|m| err(StatusCode::BAD_REQUEST, m))?,
        None => Filters::default(),
    };
    f.only(allowed).map_err(|m| err(StatusCode::BAD_REQUEST, m))?;
    Ok(f)
}

/// An object by full id or exact name (`exact`), or else by unique id prefix among `all`,
/// as Docker looks objects up.
pub(crate) fn find<T>(
    kind: &str,
    key: &str,
    exact: Option<T>,
    all: impl FnOnce() -> Result<Vec<T>, ApiError>,
    id: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    if let Some(x) = exact {
        return Ok(x);
    }
    let mut hits = all()?.into_iter().filter(|x| !key.is_empty() && id(x).starts_with(key));
    match (hits.next(), hits.next()) {
        (Some(x), None) => Ok(x),
        (Some(_), Some(_)) => Err(err(StatusCode::NOT_FOUND, format!("{kind} {key} is ambiguous (2 matches found)"))),
        _ => Err(err(StatusCode::NOT_FOUND, format!("{kind} {key} not found"))),
    }
}

/// `?version=`: the object's `Version.Index` an update is based on; Docker requires it.
pub(crate) fn query_version(query: &Option<String>, kind: &str) -> Result<u64, ApiError> {
    let raw = query_param(query, "version").unwrap_or_default();
    raw.parse().map_err(|_| {
        err(StatusCode::BAD_REQUEST, format!("invalid {kind} version '{raw}': the {kind}'s Version.Index is required"))
    })
}

/// Docker's words for a native refusal about the `kind` named `name`.
pub(crate) fn docker_wording(kind: &str, e: ApiError, name: &str) -> ApiError {
    match e.0.code {
        ErrorCode::AlreadyExists => err(StatusCode::CONFLICT, format!("{kind} {name} already exists")),
        ErrorCode::NotFound => err(StatusCode::NOT_FOUND, format!("{kind} {name} not found")),
        _ => e,
    }
}

/// A query parameter of a Docker request.
pub(crate) fn query_param(query: &Option<String>, name: &str) -> Option<String> {
    let q = query.as_ref()?;
    form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A boolean query parameter as Docker reads them (`1`, `true`, `True`...).
pub(crate) fn query_flag(query: &Option<String>, name: &str) -> bool {
    query_param(query, name).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(path: &str) -> String {
        let req = axum::http::Request::builder().uri(path).body(()).expect("request");
        unversion(req).uri().to_string()
    }

    #[test]
    fn only_dockers_paths_lose_their_version_prefix() {
        assert_eq!(rewritten("/v1.41/secrets?filters=%7B%7D"), "/secrets?filters=%7B%7D");
        assert_eq!(rewritten("/v1.25/_ping"), "/_ping");
        assert_eq!(rewritten("/v1.43/secrets"), "/_coffer/unsupported-version/1.43");
        assert_eq!(rewritten("/v1.12/nodes"), "/_coffer/unsupported-version/1.12");
        // Native and Raft routes are never reached through a Docker prefix.
        for path in ["/v1.41/v1/secrets", "/v1.41/raft/append", "/v1.41/healthz", "/v1/secrets", "/v1.x/secrets"] {
            let after = rewritten(path);
            assert!(after == path, "{path} became {after}");
        }
        assert!(unserved("/v1.41/raft/append") && unserved("/containers/json") && !unserved("/healthz"));
    }
}
