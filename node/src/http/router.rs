//! The routes of a manager's one HTTPS port, and the layers every request passes: a tracing
//! span per request (method, route, caller, request id; never a value or a token), body
//! limits, and the error envelope for paths and methods the router does not know.
//!
//! Every handler names the caller role it needs in its signature ([`crate::http::auth`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use coffer_api::error::CodedError;
use tracing::Instrument;

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::{
    admins, autolock, health, join, nodes, raft, secrets, services, snapshot, task_status, tokens, worker,
};
use crate::local::ids::NodeHex;
use crate::manager::Manager;
use crate::trust::pki::Role;

/// Raft batches and snapshots can exceed the API's body limit.
const RAFT_BODY_LIMIT: usize = 64 << 20;

pub fn router(m: Arc<Manager>) -> Router {
    let limit = m.config.max_body_bytes;
    let raft = Router::new()
        .route("/raft/append", post(raft::append))
        .route("/raft/vote", post(raft::vote))
        .route("/raft/propose", post(raft::propose))
        .route("/raft/propose-batch", post(raft::propose_batch))
        .route("/raft/read-index", post(raft::read_index))
        .route("/raft/applied", post(raft::applied))
        .route("/raft/heartbeat", post(worker::forwarded_heartbeat))
        .route("/raft/grants", post(worker::relayed_grants))
        .route("/raft/op", post(raft::op))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT))
        .route("/raft/snapshot", post(raft::snapshot))
        .layer(axum::middleware::from_fn(trace_raft));
    let api = Router::new()
        .route("/v1/ca", get(join::ca))
        .route("/v1/join", post(join::join))
        .route("/v1/renew", post(join::renew))
        .route("/v1/cluster/status", get(nodes::status))
        .route("/v1/cluster/digest", get(nodes::digest))
        .route("/v1/cluster/compact", post(nodes::compact))
        .route("/v1/nodes", get(nodes::list_nodes))
        .route("/v1/nodes/{id}", get(nodes::inspect_node).patch(nodes::update_node).delete(nodes::remove_node))
        .route("/v1/nodes/{id}/promote", post(nodes::promote))
        .route("/v1/nodes/{id}/demote", post(nodes::demote))
        .route("/v1/join-tokens/{role}", get(nodes::show_token))
        .route("/v1/join-tokens/{role}/rotate", post(nodes::rotate_token))
        .route("/v1/secrets", post(secrets::create).get(secrets::list))
        .route("/v1/secrets/{secret}", get(secrets::inspect).delete(secrets::remove))
        .route("/v1/secrets/{secret}/rotate", post(secrets::rotate))
        .route("/v1/secrets/{secret}/labels", put(secrets::set_labels))
        .route("/v1/services", post(services::create).get(services::list))
        .route("/v1/services/{service}", get(services::inspect).patch(services::update).delete(services::remove))
        .route("/v1/services/{service}/tasks", get(worker::service_tasks))
        .route("/v1/worker/assignments", get(worker::assignments))
        .route("/v1/worker/heartbeat", post(worker::heartbeat))
        .route("/v1/worker/grants", post(worker::grants))
        .route("/v1/worker/redeem", post(worker::redeem))
        .route("/v1/worker/status", post(task_status::report))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/admins", post(admins::issue).get(admins::list))
        .route("/v1/admins/{name}", delete(admins::revoke))
        .route("/v1/snapshot", get(snapshot::save))
        .route("/v1/events", get(crate::http::events::events))
        .route("/v1/cluster/autolock", axum::routing::patch(autolock::update))
        .route("/v1/cluster/unlock-key/rotate", post(autolock::rotate))
        .route("/v1/unlock", post(autolock::unlock))
        .route(
            "/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], crate::http::openapi::document()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(m.clone(), guard_body))
        .layer(axum::middleware::from_fn_with_state(m.clone(), trace_request));
    // The Docker Engine API's subset, under the same layers (body limits, tracing).
    let docker = crate::http::docker::routes()
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(m.clone(), guard_body))
        .layer(axum::middleware::from_fn_with_state(m.clone(), trace_request));
    raft.merge(api)
        .merge(docker)
        .fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            if crate::http::docker::unserved(uri.path()) {
                return crate::http::docker::not_implemented(method, uri).await;
            }
            ApiError::not_found("no such endpoint").into_response()
        })
        .method_not_allowed_fallback(|| async {
            ApiError::with_code(
                coffer_api::error::ErrorCode::InvalidArgument,
                "this endpoint does not take that method".into(),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(m)
}

/// A request id from the caller (`x-request-id`, if it is a short token of safe
/// characters), else a new one: this process's random prefix and a counter, so that making
/// one costs no system call.
fn request_id(req: &Request) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(given) = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| {
        !v.is_empty() && v.len() <= 64 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    }) {
        return given.to_string();
    }
    let prefix = PREFIX.get_or_init(|| crate::local::ids::random_hex(4));
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Who is calling, for the log: the certificate's role and node id, `token` for a bearer
/// token (never the token), `anonymous` otherwise.
fn caller_of(req: &Request) -> (&'static str, Option<u64>) {
    match req.extensions().get::<Caller>().and_then(|c| c.0.as_ref()) {
        Some(id) => (id.role.word(), id.node_id),
        None if req.headers().contains_key(axum::http::header::AUTHORIZATION) => ("token", None),
        None => ("anonymous", None),
    }
}

/// Runs a request inside its span, logs its outcome at debug level (failures of the
/// server at warn), and counts its time in `coffer_http_request_seconds`.
async fn trace_request(State(m): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let id = request_id(&req);
    let (role, node_id) = caller_of(&req);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = route.as_deref().unwrap_or("-"),
        request_id = %id,
        caller = role,
        node_id = node_id.map(|n| tracing::field::display(NodeHex(n))),
        operator = tracing::field::Empty,
    );
    let started = Instant::now();
    let method = req.method().clone();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    m.metrics.requests.observe(method.as_str(), route.unwrap_or_else(|| "-".to_owned()), elapsed);
    let elapsed_ms = elapsed.as_millis() as u64;
    span.in_scope(|| {
        if resp.status().is_server_error() {
            tracing::warn!(status, elapsed_ms, "answered");
        } else {
            tracing::debug!(status, elapsed_ms, "answered");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Raft RPC between managers (thousands a second under load) runs in a debug-level span,
/// and costs nothing at all unless debug logging is on.
async fn trace_raft(req: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let (_, node_id) = caller_of(&req);
    let span = tracing::debug_span!(
        "raft_request",
        route = route.as_deref().unwrap_or("-"),
        node_id = node_id.map(|n| tracing::field::display(NodeHex(n))),
    );
    next.run(req).instrument(span).await
}

/// API bodies are bounded before they are read: a declared length over the limit is
/// answered 413 at once, and a body from anyone but a manager must keep coming (no pause
/// over `body_idle_timeout_ms`, at least `body_min_bytes_per_sec` after a first second), or
/// reading it fails. A client cannot hold a connection open by promising a body it never
/// sends.
async fn guard_body(State(m): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let limit = m.config.max_body_bytes;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut resp = ApiError::with_code(
            coffer_api::error::ErrorCode::PayloadTooLarge,
            format!("request body is over this endpoint's limit of {limit} bytes"),
        )
        .into_response();
        if req.version() == axum::http::Version::HTTP_11 {
            // The body was not read: the connection cannot carry another request.
            resp.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    let manager = req.extensions().get::<Caller>().and_then(|c| c.0.as_ref()).is_some_and(|c| c.role == Role::Manager);
    if manager {
        return next.run(req).await;
    }
    let l = &m.config.limits;
    let pace = Pace { idle: Duration::from_millis(l.body_idle_timeout_ms), min_rate: l.body_min_bytes_per_sec.max(1) };
    let (parts, body) = req.into_parts();
    let guarded = axum::body::Body::from_stream(pace.guard(body.into_data_stream()));
    next.run(Request::from_parts(parts, guarded)).await
}

/// How a request body must arrive.
#[derive(Debug, Clone, Copy)]
struct Pace {
    idle: Duration,
    min_rate: u64,
}

/// Grace before the rate counts: a body's first bytes may take a round trip or two.
const BODY_GRACE: Duration = Duration::from_secs(1);

impl Pace {
    /// `body`, failing once it pauses too long or falls behind the rate.
    fn guard<S>(self, body: S) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Send + Unpin + 'static,
    {
        let started = tokio::time::Instant::now();
        futures_util::stream::unfold((body, 0u64, false), move |(mut body, received, done)| async move {
            if done {
                return None;
            }
            let behind = started + BODY_GRACE + Duration::from_secs_f64(received as f64 / self.min_rate as f64);
            let deadline = (tokio::time::Instant::now() + self.idle).min(behind.max(started + BODY_GRACE) + self.idle);
            match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut body)).await {
                Ok(Some(Ok(bytes))) => {
                    let n = received + bytes.len() as u64;
                    Some((Ok(bytes), (body, n, false)))
                }
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), (body, received, true))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stopped coming or came too slowly",
                    )),
                    (body, received, true),
                )),
            }
        })
    }
}

impl ApiError {
    /// The envelope with a status other than the code's own (405 for a known path with an
    /// unknown method).
    fn with_status(self, status: StatusCode) -> Response {
        let mut resp = self.into_response();
        *resp.status_mut() = status;
        resp
    }
}
