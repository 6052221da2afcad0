//! The typed async client of the Coffer API, used by the `coffer` CLI, the worker agent, the
//! tests and the benchmarks: the error envelope is decoded here and nowhere else. Authenticates with the admin client bundle (`ca.pem`, `client.pem`,
//! `client.key`) or with an API token; trusts only the cluster CA.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::{
    AdminInfo, AdminIssue, AdminIssued, AdminList, Availability, ClusterStatus, JoinTokenResponse, NodeInfo, NodeList,
    NodeRole, NodeUpdate, RenewRequest, RenewResponse,
};
use crate::error::{ErrorBody, ErrorCode};
use crate::secrets::{SecretCreate, SecretInfo, SecretLabels, SecretList, SecretRotate, SecretVersionCreated};
use crate::services::{ServiceCreate, ServiceInfo, ServiceList, ServiceUpdate};
use crate::tls::{self, StaticCert};
use crate::tokens::{ApiTokenCreate, ApiTokenCreated, ApiTokenList, TokenScope};
use crate::worker::{
    Assignment, Grant, GrantList, GrantRequest, HeartbeatReply, RedeemRequest, Redeemed, StatusRecorded, StatusReport,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the client bundle in {dir}: {reason}")]
    Bundle { dir: String, reason: String },
    #[error("cannot reach {addr}: {reason}")]
    Transport { addr: String, reason: String },
    #[error("{message} ({code:?}, HTTP {status})")]
    Api { status: u16, code: ErrorCode, message: String },
}

impl ClientError {
    /// The API error code, when the cluster answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The error an answer that is not a success carries: the envelope's, or the first words
/// of whatever came instead.
fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api { status: status.as_u16(), code: b.error.code, message: b.error.message },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: ErrorCode::Internal,
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

/// The lines of `GET /v1/events`, decoded as they arrive.
#[derive(Debug)]
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    addr: String,
}

impl EventStream {
    /// The next change; `None` when the manager ended the stream.
    ///
    /// # Errors
    /// A cut connection, or a line that is not an event.
    pub async fn next(&mut self) -> Result<Option<crate::events::ChangeEvent>, ClientError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).map_err(|e| ClientError::Transport {
                    addr: self.addr.clone(),
                    reason: format!("unexpected event line: {e}"),
                });
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() }),
            }
        }
    }
}

/// One client per manager address; connections are pooled and reused.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    bearer: Option<zeroize::Zeroizing<String>>,
    /// Per-request deadline; none by default (the CLI waits as long as the cluster takes).
    timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Client {
    /// A client for the manager at `addr`, with the admin bundle in `client_dir`.
    ///
    /// # Errors
    /// When the bundle cannot be read.
    pub fn from_dir(client_dir: &Path, addr: &str) -> Result<Self, ClientError> {
        tls::install_provider();
        let bad = |reason: String| ClientError::Bundle { dir: client_dir.display().to_string(), reason };
        let read = |name: &str| std::fs::read_to_string(client_dir.join(name)).map_err(|e| bad(format!("{name}: {e}")));
        let ca = read("ca.pem")?;
        let cert = read("client.pem")?;
        let key = zeroize::Zeroizing::new(read("client.key")?);
        let certified = tls::certified_key(&cert, &key).map_err(|e| bad(e.to_string()))?;
        Self::with_tls(&ca, Some(Arc::new(StaticCert(certified))), addr).map_err(|e| bad(e.to_string()))
    }

    /// A client presenting `cert` (or none), trusting `ca_pem`. Tests use it to knock on
    /// doors they must not open.
    ///
    /// # Errors
    /// When the TLS configuration is invalid.
    pub fn with_tls(
        ca_pem: &str,
        cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
        addr: &str,
    ) -> Result<Self, tls::TlsError> {
        tls::install_provider();
        let http = tls::http_client(tls::client_config(ca_pem, cert)?)?;
        Ok(Self { http, addr: addr.to_string(), bearer: None, timeout: None })
    }

    /// [`Client::with_tls`], whose pooled connections are let go once idle for `idle`.
    ///
    /// # Errors
    /// When the TLS configuration is invalid.
    pub fn with_tls_idle(
        ca_pem: &str,
        cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
        addr: &str,
        idle: std::time::Duration,
    ) -> Result<Self, tls::TlsError> {
        tls::install_provider();
        let http = tls::http_client_idle(tls::client_config(ca_pem, cert)?, idle)?;
        Ok(Self { http, addr: addr.to_string(), bearer: None, timeout: None })
    }

    /// The same credentials and connection pool, pointed at the manager at `addr`: a worker
    /// moves between managers without a new TLS configuration.
    pub fn at(&self, addr: &str) -> Self {
        Self { addr: addr.to_string(), ..self.clone() }
    }

    /// Every request fails after `timeout` without an answer.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A client that authenticates with an API token instead of a certificate.
    ///
    /// # Errors
    /// When the TLS configuration is invalid.
    pub fn with_token(ca_pem: &str, token: &str, addr: &str) -> Result<Self, tls::TlsError> {
        let mut c = Self::with_tls(ca_pem, None, addr)?;
        c.bearer = Some(zeroize::Zeroizing::new(token.to_string()));
        Ok(c)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = self.timeout {
            r = r.timeout(t);
        }
        match &self.bearer {
            Some(t) => r.bearer_auth(t.as_str()),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(body).map_err(|e| ClientError::Transport {
                addr: self.addr.clone(),
                reason: format!("unexpected reply: {e}"),
            });
        }
        Err(refusal(status, &bytes))
    }

    /// `GET /v1/snapshot`: the export stream, chunk by chunk as it arrives (the frames are
    /// `coffer_raft_store::backup::stream`'s). An error answer is decoded as any other.
    ///
    /// # Errors
    /// Transport failures and refusals (not an admin certificate, no quorum).
    pub async fn snapshot_stream(&self) -> Result<reqwest::Response, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() };
        let resp = self.request(reqwest::Method::GET, "/v1/snapshot").send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        Err(refusal(status, &bytes))
    }

    /// `GET /v1/events`: the changes after `since` (or from now on), as they are applied.
    ///
    /// # Errors
    /// Transport failures and refusals (`gone` when `since` is no longer kept).
    pub async fn events(&self, since: Option<u64>) -> Result<EventStream, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() };
        let path = match since {
            Some(s) => format!("/v1/events?since={s}"),
            None => "/v1/events".to_string(),
        };
        let resp = self.request(reqwest::Method::GET, &path).send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(EventStream { resp, buf: Vec::new(), addr: self.addr.clone() });
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        Err(refusal(status, &bytes))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::PATCH, path).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::PUT, path).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `/metrics`, as the Prometheus text the manager serves.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() };
        let resp = self.request(reqwest::Method::GET, "/metrics").send().await.map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => Err(ClientError::Api { status: status.as_u16(), code: b.error.code, message: b.error.message }),
            Err(_) => Err(ClientError::Api { status: status.as_u16(), code: ErrorCode::Internal, message: text }),
        }
    }

    // -- cluster -----------------------------------------------------------------------

    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/cluster/status").await
    }

    /// A digest of the applied state of the manager this client talks to.
    pub async fn state_digest(&self) -> Result<crate::cluster::StateDigestInfo, ClientError> {
        self.get("/v1/cluster/digest").await
    }

    /// Builds a Raft snapshot on this manager now and purges its log up to it.
    pub async fn compact(&self) -> Result<crate::cluster::Compacted, ClientError> {
        self.post("/v1/cluster/compact", &()).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get::<NodeList>("/v1/nodes").await.map(|l| l.nodes)
    }

    pub async fn node(&self, id: u64) -> Result<NodeInfo, ClientError> {
        self.get(&format!("/v1/nodes/{id}")).await
    }

    pub async fn promote(&self, id: u64) -> Result<(), ClientError> {
        self.post(&format!("/v1/nodes/{id}/promote"), &()).await
    }

    pub async fn demote(&self, id: u64) -> Result<(), ClientError> {
        self.post(&format!("/v1/nodes/{id}/demote"), &()).await
    }

    pub async fn remove(&self, id: u64) -> Result<(), ClientError> {
        self.delete(&format!("/v1/nodes/{id}")).await
    }

    /// `GET /readyz`: `Ok` when the manager is ready; its refusal (`unavailable`, `locked`)
    /// otherwise.
    pub async fn ready(&self) -> Result<(), ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() };
        let resp = self.request(reqwest::Method::GET, "/readyz").send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refusal(status, &bytes))
        }
    }

    /// Unlocks a locked manager (autolock) with `key` (`COFFER-KEY-1-...`).
    pub async fn unlock(&self, key: &str) -> Result<(), ClientError> {
        self.post("/v1/unlock", &crate::cluster::UnlockRequest { key: key.to_string() }).await
    }

    /// Turns autolock on (the answer holds the new unlock key) or off.
    pub async fn set_autolock(&self, enabled: bool) -> Result<crate::cluster::UnlockKeyIssued, ClientError> {
        self.patch("/v1/cluster/autolock", &crate::cluster::AutolockUpdate { enabled }).await
    }

    /// A new unlock key; every manager re-wraps its store under it.
    pub async fn rotate_unlock_key(&self) -> Result<crate::cluster::UnlockKeyIssued, ClientError> {
        self.post("/v1/cluster/unlock-key/rotate", &()).await
    }

    /// `node rm --force`: also a manager that still votes.
    pub async fn remove_forced(&self, id: u64) -> Result<(), ClientError> {
        self.delete(&format!("/v1/nodes/{id}?force=true")).await
    }

    pub async fn set_availability(&self, id: u64, availability: Availability) -> Result<(), ClientError> {
        self.update_node(id, &NodeUpdate { availability: Some(availability), ..Default::default() }).await
    }

    /// Changes a node's availability and labels.
    pub async fn update_node(&self, id: u64, update: &NodeUpdate) -> Result<(), ClientError> {
        self.patch(&format!("/v1/nodes/{id}"), update).await
    }

    pub async fn rotate_token(&self, role: NodeRole) -> Result<JoinTokenResponse, ClientError> {
        self.post(&format!("/v1/join-tokens/{}/rotate", role_path(role)), &()).await
    }

    pub async fn show_token(&self, role: NodeRole) -> Result<JoinTokenResponse, ClientError> {
        self.get(&format!("/v1/join-tokens/{}", role_path(role))).await
    }

    // -- secrets -----------------------------------------------------------------------

    /// Creates a secret from raw bytes (encoded here; never logged).
    pub async fn create_secret(
        &self,
        name: &str,
        value: &[u8],
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<SecretVersionCreated, ClientError> {
        let data = base64::engine::general_purpose::STANDARD.encode(value);
        self.post("/v1/secrets", &SecretCreate { name: name.into(), data, labels }).await
    }

    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, ClientError> {
        self.get::<SecretList>("/v1/secrets").await.map(|l| l.secrets)
    }

    /// Secrets filtered by name prefix and labels (`K=V` or `K`).
    pub async fn secrets_filtered(
        &self,
        name: Option<&str>,
        labels: &[String],
    ) -> Result<Vec<SecretInfo>, ClientError> {
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(n) = name {
            q.push(("name", n));
        }
        for l in labels {
            q.push(("label", l));
        }
        self.send(self.request(reqwest::Method::GET, "/v1/secrets").query(&q)).await.map(|l: SecretList| l.secrets)
    }

    /// A secret by id or name.
    pub async fn secret(&self, secret: &str) -> Result<SecretInfo, ClientError> {
        self.get(&format!("/v1/secrets/{secret}")).await
    }

    pub async fn rotate_secret(&self, secret: &str, value: &[u8]) -> Result<SecretVersionCreated, ClientError> {
        let data = base64::engine::general_purpose::STANDARD.encode(value);
        self.post(&format!("/v1/secrets/{secret}/rotate"), &SecretRotate { data }).await
    }

    pub async fn set_secret_labels(
        &self,
        secret: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<SecretInfo, ClientError> {
        self.put(&format!("/v1/secrets/{secret}/labels"), &SecretLabels { labels }).await
    }

    pub async fn remove_secret(&self, secret: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/secrets/{secret}")).await
    }

    // -- services ----------------------------------------------------------------------

    pub async fn create_service(&self, spec: &ServiceCreate) -> Result<ServiceInfo, ClientError> {
        self.post("/v1/services", spec).await
    }

    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.get::<ServiceList>("/v1/services").await.map(|l| l.services)
    }

    pub async fn service(&self, service: &str) -> Result<ServiceInfo, ClientError> {
        self.get(&format!("/v1/services/{service}")).await
    }

    pub async fn update_service(&self, service: &str, update: &ServiceUpdate) -> Result<ServiceInfo, ClientError> {
        self.patch(&format!("/v1/services/{service}"), update).await
    }

    /// Where a service's replicas run (`coffer service ps`).
    pub async fn service_tasks(&self, service: &str) -> Result<Vec<crate::worker::TaskInfo>, ClientError> {
        self.get::<crate::worker::TaskList>(&format!("/v1/services/{service}/tasks")).await.map(|l| l.tasks)
    }

    pub async fn remove_service(&self, service: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/services/{service}")).await
    }

    // -- API tokens --------------------------------------------------------------------

    pub async fn create_api_token(&self, name: &str, scope: TokenScope) -> Result<ApiTokenCreated, ClientError> {
        self.post("/v1/tokens", &ApiTokenCreate { name: name.into(), scope }).await
    }

    pub async fn api_tokens(&self) -> Result<ApiTokenList, ClientError> {
        self.get("/v1/tokens").await
    }

    pub async fn revoke_api_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/tokens/{id}")).await
    }
}

impl Client {
    // -- the worker session (worker certificates) ---------------------------------------

    /// The tasks assigned to this worker; waits up to the manager's long-poll period for a
    /// change when `since` is the fingerprint of what the worker has.
    pub async fn assignments(&self, since: Option<&str>) -> Result<Assignment, ClientError> {
        let mut req = self.request(reqwest::Method::GET, "/v1/worker/assignments");
        if let Some(fp) = since {
            req = req.query(&[("since", fp)]);
        }
        self.send(req).await
    }

    pub async fn heartbeat(&self) -> Result<HeartbeatReply, ClientError> {
        self.post("/v1/worker/heartbeat", &()).await
    }

    /// Grants for `task_ids`, from the leader.
    pub async fn grants(&self, task_ids: &[String]) -> Result<GrantList, ClientError> {
        self.post("/v1/worker/grants", &GrantRequest { task_ids: task_ids.to_vec() }).await
    }

    pub async fn redeem(&self, grant: Grant) -> Result<Redeemed, ClientError> {
        self.post("/v1/worker/redeem", &RedeemRequest { grant }).await
    }

    /// Reports the states of this worker's tasks.
    pub async fn report_status(&self, report: &StatusReport) -> Result<StatusRecorded, ClientError> {
        self.post("/v1/worker/status", report).await
    }

    /// A new certificate for this node's CSR (managers and workers).
    pub async fn renew(&self, csr_pem: String) -> Result<RenewResponse, ClientError> {
        self.post("/v1/renew", &RenewRequest { csr_pem }).await
    }
}

impl Client {
    // -- admin credentials ----------------------------------------------------------------

    pub async fn issue_admin(&self, req: &AdminIssue) -> Result<AdminIssued, ClientError> {
        self.post("/v1/admins", req).await
    }

    pub async fn admins(&self) -> Result<Vec<AdminInfo>, ClientError> {
        self.get::<AdminList>("/v1/admins").await.map(|l| l.admins)
    }

    /// Revokes an admin credential: refused by every reachable manager once this returns.
    pub async fn revoke_admin(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/admins/{name}")).await
    }
}

fn role_path(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}
