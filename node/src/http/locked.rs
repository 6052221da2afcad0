//! What a locked manager serves (autolock): `/healthz`, `/readyz` (not ready: `locked`),
//! `/v1/ca`, `/metrics` (its lock state) and `POST /v1/unlock` for admin certificates;
//! every other call answers `locked`. Wrong keys are paced: after each, the next attempt
//! waits twice as long (up to a minute), and early attempts are refused unread.
//!
//! The locked manager has no state to check a certificate's revocation against: the unlock
//! key, not the certificate, is what unlocks it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use coffer_api::cluster::UnlockRequest;
use coffer_api::error::{CodedError, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::server::PeerAddr;
use crate::local::unlock_key::UnlockKey;
use crate::manager::unlock::Attempt;
use crate::trust::pki::Role;

const MAX_WAIT: Duration = Duration::from_secs(60);

/// Hands operators' unlock attempts to the waiting manager, one at a time, paced.
#[derive(Debug)]
pub struct Unlocker {
    tx: mpsc::Sender<Attempt>,
    cluster_id: String,
    pace: Mutex<Pace>,
}

#[derive(Debug, Default)]
struct Pace {
    failures: u32,
    not_before: Option<Instant>,
    /// One attempt at a time: the pause after a wrong key must not be raced by attempts
    /// sent together.
    in_flight: bool,
}

impl Unlocker {
    pub fn new(tx: mpsc::Sender<Attempt>, cluster_id: &str) -> Arc<Self> {
        Arc::new(Self { tx, cluster_id: cluster_id.to_string(), pace: Mutex::default() })
    }
}

fn locked() -> ApiError {
    ApiError::with_code(
        ErrorCode::Locked,
        "this manager is locked (autolock): unlock it with `coffer cluster unlock --addr HOST:PORT`".into(),
    )
}

/// The router of a locked manager.
pub fn router(ca_pem: String, unlocker: Arc<Unlocker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { locked() }))
        .route("/v1/ca", get(move || async move { ca_pem }))
        .route("/v1/unlock", post(unlock))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(4096))
        .fallback(|| async { locked() })
        .with_state(unlocker)
}

fn admin_of(req: &Request, cluster_id: &str) -> Result<(), ApiError> {
    match req.extensions().get::<Caller>().and_then(|c| c.0.as_ref()) {
        Some(id) if id.role == Role::Admin && id.cluster_id == cluster_id => Ok(()),
        Some(_) => Err(ApiError::forbidden("an admin client certificate of this cluster is needed")),
        None => Err(ApiError::unauthenticated("an admin client certificate of this cluster is needed")),
    }
}

async fn metrics(State(u): State<Arc<Unlocker>>, req: Request) -> Result<Response, ApiError> {
    admin_of(&req, &u.cluster_id)?;
    let text = "# HELP coffer_locked 1 while this manager waits for its unlock key\n# TYPE coffer_locked gauge\ncoffer_locked 1\n# EOF\n";
    Ok(([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn unlock(
    State(u): State<Arc<Unlocker>>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<UnlockRequest>,
) -> Result<StatusCode, ApiError> {
    match caller.as_ref() {
        Some(id) if id.role == Role::Admin && id.cluster_id == u.cluster_id => {}
        Some(_) => return Err(ApiError::forbidden("an admin client certificate of this cluster is needed")),
        None => return Err(ApiError::unauthenticated("an admin client certificate of this cluster is needed")),
    }
    let key = UnlockKey::parse(&body.key).map_err(|e| ApiError::invalid(e.to_string()))?;
    {
        let mut pace = u.pace.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(at) = pace.not_before.filter(|at| now < *at) {
            return Err(ApiError::with_code(
                ErrorCode::UnlockFailed,
                format!("too soon after a wrong key; retry in {} s", (at - now).as_secs() + 1),
            ));
        }
        if pace.in_flight {
            return Err(ApiError::with_code(
                ErrorCode::UnlockFailed,
                "another unlock attempt is being checked; retry in a moment".into(),
            ));
        }
        pace.in_flight = true;
    }
    let (reply, answer) = oneshot::channel();
    let sent = u.tx.send(Attempt { key, reply }).await;
    let r = match sent {
        Ok(()) => answer.await.map_err(|_| ApiError::unavailable("this manager is shutting down")),
        Err(_) => Err(ApiError::unavailable("this manager is shutting down")),
    };
    let mut pace = u.pace.lock().unwrap_or_else(|p| p.into_inner());
    pace.in_flight = false;
    let r = r?;
    match r {
        Ok(()) => {
            *pace = Pace::default();
            tracing::info!(%peer, "unlocked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            if e.code == ErrorCode::UnlockFailed {
                pace.failures += 1;
                let wait = Duration::from_secs(1u64 << pace.failures.min(6)).min(MAX_WAIT);
                pace.not_before = Some(Instant::now() + wait);
                tracing::warn!(%peer, failures = pace.failures, "a wrong unlock key");
            }
            Err(ApiError(e))
        }
    }
}
