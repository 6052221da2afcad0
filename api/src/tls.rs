//! Client-side TLS shared by every Coffer client (CLI, tests, managers calling each other):
//! rustls 0.23 with aws-lc-rs, the cluster CA as the only root, pooled reqwest clients.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};

/// ALPN for every Coffer connection: HTTP/2 first (multiplexed Raft RPC), then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate PEM: {0}")]
    Pem(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("tls configuration: {0}")]
    Config(String),
}

/// Installs the process-wide crypto provider (aws-lc-rs). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

pub fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Pem(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate and key, loaded for rustls.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(cert_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::Key("not a PEM private key".into()))?;
    let signer = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A fixed client certificate (an admin bundle's).
#[derive(Debug)]
pub struct StaticCert(pub Arc<CertifiedKey>);

impl ResolvesClientCert for StaticCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config trusting only the cluster CA, presenting `cert` when given.
pub fn client_config(ca_pem: &str, cert: Option<Arc<dyn ResolvesClientCert>>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match cert {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A reqwest client over `config`, with pooled connections (one TLS handshake per peer,
/// not per request), checked with HTTP/2 pings while requests are in flight.
pub fn http_client(config: ClientConfig) -> Result<reqwest::Client, TlsError> {
    http_client_idle(config, std::time::Duration::from_secs(90))
}

/// [`http_client`], letting a pooled connection go once it was idle for `idle`.
pub fn http_client_idle(config: ClientConfig, idle: std::time::Duration) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .tls_info(true)
        .pool_idle_timeout(idle)
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(3))
        // A pooled connection to a peer that went away (a partition, a paused process)
        // keeps every request on it waiting for its own timeout, up to 40 s for a worker's
        // long poll: HTTP/2 pings find it dead within seconds, and the pool drops it.
        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(4))
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}
