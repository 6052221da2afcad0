//! The admin client: the typed HTTPS client the CLI and the tests use, authenticated with
//! the admin client bundle (`ca.pem`, `client.pem`, `client.key`) that `manager init` writes.

use std::path::Path;

use coffer_api::cluster::{Availability, ClusterStatus, JoinTokenResponse, NodeInfo, NodeList, NodeRole, NodeUpdate};
use coffer_api::error::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::{self, NodeCert};

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

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    addr: String,
}

impl AdminClient {
    /// A client for the manager at `addr`, with the bundle in `client_dir`.
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
        Self::with_tls(&ca, Some(NodeCert::new(certified)), addr).map_err(|e| bad(e.to_string()))
    }

    /// A client with any (or no) certificate: tests use it to knock on doors they must not open.
    ///
    /// # Errors
    /// When the TLS configuration is invalid.
    pub fn with_tls(ca_pem: &str, cert: Option<std::sync::Arc<NodeCert>>, addr: &str) -> Result<Self, tls::TlsError> {
        let cert = cert.map(|c| c as std::sync::Arc<dyn rustls::client::ResolvesClientCert>);
        let http = tls::http_client(tls::client_config(ca_pem, cert)?)?;
        Ok(Self { http, addr: addr.to_string() })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp =
            req.send().await.map_err(|e| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Transport { addr: self.addr.clone(), reason: e.to_string() })?;
        if status.is_success() {
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(body).map_err(|e| ClientError::Transport {
                addr: self.addr.clone(),
                reason: format!("unexpected reply: {e}"),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => Err(ClientError::Api { status: status.as_u16(), code: b.error.code, message: b.error.message }),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                code: ErrorCode::Internal,
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/cluster/status").await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get::<NodeList>("/v1/nodes").await.map(|l| l.nodes)
    }

    pub async fn node(&self, id: u64) -> Result<NodeInfo, ClientError> {
        self.get(&format!("/v1/nodes/{id}")).await
    }

    pub async fn promote(&self, id: u64) -> Result<(), ClientError> {
        self.post::<_, ()>(&format!("/v1/nodes/{id}/promote"), &()).await
    }

    pub async fn demote(&self, id: u64) -> Result<(), ClientError> {
        self.post::<_, ()>(&format!("/v1/nodes/{id}/demote"), &()).await
    }

    pub async fn remove(&self, id: u64) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&format!("/v1/nodes/{id}")))).await
    }

    pub async fn set_availability(&self, id: u64, availability: Availability) -> Result<(), ClientError> {
        let body = NodeUpdate { availability: Some(availability) };
        self.send(self.http.patch(self.url(&format!("/v1/nodes/{id}"))).json(&body)).await
    }

    pub async fn rotate_token(&self, role: NodeRole) -> Result<JoinTokenResponse, ClientError> {
        self.post(&format!("/v1/join-tokens/{}/rotate", role_path(role)), &()).await
    }

    pub async fn show_token(&self, role: NodeRole) -> Result<JoinTokenResponse, ClientError> {
        self.get(&format!("/v1/join-tokens/{}", role_path(role))).await
    }
}

fn role_path(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}
