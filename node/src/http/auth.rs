//! Who is calling: the identity in the caller's client certificate, checked against the
//! cluster's applied state on every request.
//!
//! rustls has already verified the chain to the cluster CA (or the caller sent no
//! certificate). Here each endpoint states the role it needs with an extractor:
//! [`ManagerCaller`] (Raft RPC, forwarding), [`NodeCaller`] (renewal, worker sessions),
//! [`AdminCaller`] (cluster administration, admin certificates only), [`Operator`] and
//! [`Writer`] (secrets and services: admin certificates or API tokens). Every node
//! extractor also refuses a certificate of
//! another cluster and a node that was removed, even though its certificate is unexpired.

use coffer_api::error::CodedError;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::http::error::ApiError;
use crate::manager::Manager;
use crate::trust::pki::{PeerIdentity, Role};

/// The identity of a connection's client certificate, attached by the accept loop.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Arc<PeerIdentity>>);

fn identity(parts: &Parts) -> Result<Arc<PeerIdentity>, ApiError> {
    parts
        .extensions
        .get::<Caller>()
        .and_then(|c| c.0.clone())
        .ok_or_else(|| ApiError::unauthenticated("a client certificate of this cluster is required"))
}

/// Checks cluster and removal for a node (manager or worker) certificate.
fn check_node(m: &Manager, id: &PeerIdentity) -> Result<u64, ApiError> {
    check_node_record(m, id).map(|(node_id, _)| node_id)
}

/// [`check_node`], also saying whether the certificate is the one the node record names
/// (one read of the record: this is on every worker request's path).
fn check_node_record(m: &Manager, id: &PeerIdentity) -> Result<(u64, bool), ApiError> {
    if id.cluster_id != m.cluster_id {
        return Err(ApiError::unauthenticated("certificate belongs to another cluster"));
    }
    let node_id = id.node_id.ok_or_else(|| ApiError::forbidden("not a node certificate"))?;
    match m.reader.node(node_id)? {
        Some(rec) if rec.removed => Err(ApiError::forbidden(format!("node {node_id} was removed from the cluster"))),
        Some(rec) => Ok((node_id, rec.cert_serial == id.serial_hex)),
        None => Ok((node_id, true)),
    }
}

/// Whether a worker's certificate is its current one, or the one its last renewal replaced
/// while that is still in its grace period.
fn current_cert(m: &Manager, node_id: u64, id: &PeerIdentity) -> Result<bool, ApiError> {
    let Some(rec) = m.reader.node(node_id)? else { return Ok(true) };
    if rec.cert_serial == id.serial_hex {
        return Ok(true);
    }
    let retiring = m.reader.retiring_cert(node_id)?;
    Ok(retiring.is_some_and(|r| r.serial_hex == id.serial_hex && coffer_api::time::now_millis() < r.until))
}

/// A worker's certificate replaced by a renewal is refused once its grace period is over.
/// A manager that has not applied the renewal yet looks again on a current view before it
/// refuses. (Managers' own certificates are not checked so: a follower must never refuse
/// the Raft RPC that carries the renewal of its leader's certificate.)
async fn check_worker_cert(m: &Manager, node_id: u64, id: &PeerIdentity) -> Result<(), ApiError> {
    if current_cert(m, node_id, id)? {
        return Ok(());
    }
    m.linearizable().await?;
    if current_cert(m, node_id, id)? {
        return Ok(());
    }
    Err(ApiError::forbidden("this certificate was replaced by a renewal; use the new one"))
}

/// An admin certificate is accepted while it is the current certificate of its name's
/// credential and that credential is not revoked. (A cluster made before credentials were
/// recorded has none: its admin certificates are accepted until the first is recorded.)
fn check_admin_credential(m: &Manager, id: &PeerIdentity) -> Result<(), ApiError> {
    let refused = || ApiError::unauthenticated("this admin credential was revoked or replaced");
    match m.reader.admin_credential(&id.name)? {
        Some(rec) if !rec.revoked && rec.serial_hex == id.serial_hex => Ok(()),
        Some(_) => Err(refused()),
        None if m.reader.admin_credentials()?.is_empty() => Ok(()),
        None => Err(refused()),
    }
}

/// Whether a verified certificate's identity is still one of this cluster's, on this
/// manager's state: of this cluster, not a removed node, a worker's current (or retiring)
/// certificate, an admin credential that is not revoked or replaced. The accept loop gives
/// no connection slot to one that is not.
pub(crate) fn still_valid(m: &Manager, id: &PeerIdentity) -> bool {
    if id.cluster_id != m.cluster_id {
        return false;
    }
    match (id.role, id.node_id) {
        // A locked manager's certificate is refused by rustls as a client certificate
        // already (its EKU is ServerAuth alone); it is no caller of anything either way.
        (Role::Locked, _) => false,
        (Role::Admin, _) => check_admin_credential(m, id).is_ok(),
        // A serial this manager does not know yet may be a renewal it has not applied:
        // the request's own check looks again on a current view. Known retired ones go.
        (Role::Worker, Some(node)) => {
            check_node(m, id).is_ok()
                && !m
                    .reader
                    .retiring_cert(node)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.serial_hex == id.serial_hex && coffer_api::time::now_millis() >= r.until)
        }
        (_, _) => check_node(m, id).is_ok(),
    }
}

/// A manager of this cluster that has not been removed.
#[derive(Debug)]
pub struct ManagerCaller;

impl FromRequestParts<Arc<Manager>> for ManagerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        let id = identity(parts)?;
        if id.role != Role::Manager {
            return Err(ApiError::forbidden("this endpoint is for managers only"));
        }
        check_node(m, &id).map(|_| ManagerCaller)
    }
}

/// A manager or worker of this cluster that has not been removed.
#[derive(Debug)]
pub struct NodeCaller {
    pub node_id: u64,
    pub role: Role,
    /// The validity of the certificate presented (seconds since the Unix epoch).
    pub cert_validity: (i64, i64),
}

impl FromRequestParts<Arc<Manager>> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        let id = identity(parts)?;
        if !matches!(id.role, Role::Manager | Role::Worker) {
            return Err(ApiError::forbidden("this endpoint is for cluster nodes only"));
        }
        let (node_id, current) = check_node_record(m, &id)?;
        if id.role == Role::Worker && !current {
            check_worker_cert(m, node_id, &id).await?;
        }
        Ok(NodeCaller { node_id, role: id.role, cert_validity: (id.not_before_unix, id.not_after_unix) })
    }
}

/// An operator with an admin client certificate of this cluster.
#[derive(Debug)]
pub struct AdminCaller;

impl FromRequestParts<Arc<Manager>> for AdminCaller {
    type Rejection = ApiError;

    /// Checked on this manager's state (`cluster status` must answer on a manager that
    /// lost its quorum): a revocation waits until every reachable manager has applied it.
    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        admin_identity(parts, m).map(|_| AdminCaller)
    }
}

/// An admin changing the cluster (nodes, tokens, credentials): its credential is checked
/// again on a linearizable view, so that a manager that lags cannot honour one the cluster
/// has already revoked. (A change needs a quorum anyway.)
#[derive(Debug)]
pub struct AdminWriter(pub String);

impl FromRequestParts<Arc<Manager>> for AdminWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        let id = admin_identity(parts, m)?;
        m.linearizable().await?;
        check_admin_credential(m, &id)?;
        Ok(AdminWriter(id.name.clone()))
    }
}

/// An admin certificate of this cluster whose credential this manager's state accepts.
fn admin_identity(parts: &Parts, m: &Manager) -> Result<Arc<PeerIdentity>, ApiError> {
    let id = identity(parts)?;
    if id.cluster_id != m.cluster_id {
        return Err(ApiError::unauthenticated("certificate belongs to another cluster"));
    }
    if id.role != Role::Admin {
        return Err(ApiError::forbidden("node certificates are not admin credentials; use the admin client bundle"));
    }
    check_admin_credential(m, &id)?;
    Ok(id)
}

/// An operator or a tool: an admin client certificate (may write), or an API token (may
/// write if its scope is read-write). Used by the secrets and services API.
#[derive(Debug)]
pub struct Operator {
    pub can_write: bool,
    credential: Credential,
}

/// What an [`Operator`] authenticated with, to check again during a long answer.
#[derive(Debug, Clone)]
enum Credential {
    Token(String),
    Admin(Arc<PeerIdentity>),
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::trim)
}

impl Operator {
    /// The operator, also named in the request's span (an admin certificate's name or a
    /// token's name; never the token).
    fn named(name: String, can_write: bool, credential: Credential) -> Self {
        tracing::Span::current().record("operator", name.as_str());
        Operator { can_write, credential }
    }

    /// Whether this is an admin certificate (which sees the cluster's nodes), not a token.
    pub fn is_admin(&self) -> bool {
        matches!(self.credential, Credential::Admin(_))
    }

    /// Whether the credential is still accepted on this manager's state: a stream that
    /// outlives a revocation checks it as it goes.
    pub fn still_accepted(&self, m: &Manager) -> bool {
        match &self.credential {
            Credential::Token(id) => m.reader.api_token(id).ok().flatten().is_some_and(|r| !r.revoked),
            Credential::Admin(id) => check_admin_credential(m, id).is_ok(),
        }
    }
}

impl FromRequestParts<Arc<Manager>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        if let Some(text) = bearer(parts) {
            let token: crate::trust::api_token::ApiToken =
                text.parse().map_err(|_| ApiError::unauthenticated("malformed API token"))?;
            let rec = m.reader.api_token(token.id())?;
            // One answer for unknown, revoked and wrong tokens: nothing to probe with.
            let Some(rec) = rec.filter(|r| !r.revoked && token.matches(&r.hash)) else {
                return Err(ApiError::unauthenticated("invalid or revoked API token"));
            };
            let can_write = rec.scope == coffer_raft_store::model::TokenScope::ReadWrite;
            return Ok(Operator::named(format!("token {}", rec.name), can_write, Credential::Token(rec.id.clone())));
        }
        // On this manager's state: secrets and services writes are the hot path, and a
        // revocation waits until every reachable manager has applied it.
        admin_identity(parts, m).map(|id| Operator::named(id.name.clone(), true, Credential::Admin(id)))
    }
}

/// An [`Operator`] allowed to change things.
#[derive(Debug)]
pub struct Writer;

impl FromRequestParts<Arc<Manager>> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager>) -> Result<Self, ApiError> {
        let op = Operator::from_request_parts(parts, m).await?;
        if !op.can_write {
            return Err(ApiError::forbidden("this API token is read-only"));
        }
        Ok(Writer)
    }
}
