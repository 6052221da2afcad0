//! TLS for every connection Coffer makes or accepts: rustls 0.23 with aws-lc-rs, the
//! cluster CA as the only root, node certificates that can be swapped at run time (renewal).
//!
//! The server asks every client for a certificate but accepts connections without one
//! (`allow_unauthenticated`): the join and CA endpoints must serve nodes that have no
//! certificate yet. Each endpoint then checks the caller's role (`http::auth`).
//!
//! Must never: trust any root but the cluster CA, except [`ca_fetch_config`], which is
//! used once, to download the CA certificate whose digest the join token then checks.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

pub use coffer_api::tls::{
    certified_key, certs_from_pem, client_config, http_client, install_provider, roots, TlsError,
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// This node's certificate, swappable when it is renewed; serves as both the server
/// certificate and the client certificate.
#[derive(Debug)]
pub struct NodeCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCert {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(key) })
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is intact.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

use coffer_api::tls::ALPN;

/// ALPN of a manager-to-manager link (`manager::link`), served on the API port beside
/// HTTP. Only the listener offers it with the others; a link's client offers it alone.
pub const LINK_ALPN: &[u8] = b"coffer-link/1";

/// The listener's config: our certificate, client certificates optional but verified
/// against the cluster CA when present.
pub fn server_config(ca_pem: &str, cert: Arc<NodeCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = ALPN.iter().chain([&LINK_ALPN]).map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The client config of a manager's calls to other managers: the cluster CA, this node's
/// certificate, and a server that must show a *manager's* certificate. A locked manager's
/// (autolock) is refused in the handshake, before a request is sent: its key lies beside its
/// store, so whoever copied a data dir could pose with it, and a connection pooled while a
/// peer was locked would go on showing it after the unlock.
pub fn peer_client_config(ca_pem: &str, cert: Arc<NodeCert>) -> Result<ClientConfig, TlsError> {
    let mut cfg = client_config(ca_pem, Some(cert))?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.dangerous().set_certificate_verifier(Arc::new(ManagerServer(inner)));
    Ok(cfg)
}

/// [`peer_client_config`] for a link (`manager::link`): it offers the link's protocol alone.
pub fn link_client_config(ca_pem: &str, cert: Arc<NodeCert>) -> Result<ClientConfig, TlsError> {
    let mut cfg = peer_client_config(ca_pem, cert)?;
    cfg.alpn_protocols = vec![LINK_ALPN.to_vec()];
    Ok(cfg)
}

/// Chain, name and validity checked by webpki; then the role.
#[derive(Debug)]
struct ManagerServer(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ManagerServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match crate::trust::pki::parse_peer(end_entity) {
            Ok(id) if id.role == crate::trust::pki::Role::Manager => Ok(verified),
            Ok(id) => Err(rustls::Error::General(format!("the server is a {}, not a manager", id.role.word()))),
            Err(e) => Err(rustls::Error::General(format!("the server's certificate: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// For the first step of a join only: accepts any server certificate, so that a joiner
/// can download the CA certificate and check it against the digest in its token before
/// it sends anything secret. Nothing else may use it.
pub fn ca_fetch_config() -> ClientConfig {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    cfg
}

#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
