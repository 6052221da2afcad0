//! The cluster PKI: the root CA of a cluster, the key pairs of its nodes, and what a peer
//! certificate says about its holder.
//!
//! This module owns certificate *issuance* and *reading*: generating and loading the cluster
//! CA, signing node CSRs and admin client certificates with it, generating node keys and
//! their CSRs, and parsing the identity (role, node id, cluster) out of a peer certificate.
//! Chain verification is rustls's job, not this module's: [`parse_peer`] trusts its input to
//! have been verified already.
//!
//! Private keys must never be logged or Debug-printed: every type here that holds one
//! ([`ClusterCa`], [`NodeKey`], [`PrivateKeyPem`]) has a redacting `Debug`, and PEM text of a
//! key only leaves through [`PrivateKeyPem`], which zeroizes it on drop. Error messages never
//! contain key material.
//!
//! Identity lives in the subject of a certificate: CN = node id (decimal) or admin name,
//! OU = role ([`OU_MANAGER`], [`OU_WORKER`], [`OU_ADMIN`], [`OU_LOCKED`]), O = cluster id. The CA decides
//! all of it; whatever a CSR asks for is ignored.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::X509Certificate;
use zeroize::Zeroizing;

mod ca;
mod node_key;
mod peer;

pub use ca::ClusterCa;
pub use node_key::NodeKey;
pub use peer::{cert_digest, parse_peer, PeerIdentity};

/// The OU of a manager node's certificate.
pub const OU_MANAGER: &str = "coffer-manager";
/// The OU of a worker node's certificate.
pub const OU_WORKER: &str = "coffer-worker";
/// The OU of an admin client certificate.
pub const OU_ADMIN: &str = "coffer-admin";
/// The OU of the certificate a locked manager serves with (autolock): it proves which
/// manager answers, and nothing more.
pub const OU_LOCKED: &str = "coffer-locked";

/// Common name of the cluster root CA.
const CA_COMMON_NAME: &str = "Coffer Root CA";
/// Lifetime of the cluster root CA: 20 years (of 365.25 days).
const CA_VALIDITY: Duration = Duration::from_secs(20 * 36525 * 864);
/// Certificates start this long before "now", to tolerate clock skew between nodes.
const CLOCK_SKEW_SECS: i64 = 5 * 60;
/// Length of a random serial number, in bytes.
const SERIAL_LEN: usize = 16;

/// What can go wrong issuing, loading or reading certificates and keys.
///
/// Messages never contain private key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The CSR could not be parsed, its signature is invalid, or it asks for something
    /// unsupported.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// A certificate or CSR could not be generated.
    #[error("cannot generate certificate: {0}")]
    Cert(String),
    /// A certificate could not be parsed, or does not carry a valid Coffer identity.
    #[error("cannot read certificate: {0}")]
    Parse(String),
    /// A private key could not be generated or loaded, or does not match its certificate.
    #[error("private key: {0}")]
    Key(String),
    /// The caller asked for a certificate that cannot be issued (bad name, SAN or validity).
    #[error("invalid certificate request: {0}")]
    Invalid(String),
}

/// The role a certificate grants its holder; it is the certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// A manager node: a Raft member.
    Manager,
    /// A worker node.
    Worker,
    /// An operator's client certificate.
    Admin,
    /// A locked manager's server certificate (autolock). Its key is sealed under the key
    /// file beside the store, so a copy of the data dir yields it: it must grant nothing.
    /// Its EKU is ServerAuth alone (rustls refuses it as a client certificate), and no
    /// endpoint accepts the role.
    Locked,
}

impl Role {
    /// The role as one lowercase word, for logs and messages.
    pub fn word(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Locked => "locked manager",
        }
    }

    /// The OU that encodes this role in a certificate subject.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => OU_MANAGER,
            Role::Worker => OU_WORKER,
            Role::Admin => OU_ADMIN,
            Role::Locked => OU_LOCKED,
        }
    }

    fn from_ou(ou: &str) -> Option<Self> {
        [Role::Manager, Role::Worker, Role::Admin, Role::Locked].into_iter().find(|r| r.ou() == ou)
    }
}

/// When a certificate with this `not_before` was issued: certificates start a little
/// before their issue, to tolerate clock skew between nodes.
pub fn issued_at(not_before_unix: i64) -> i64 {
    not_before_unix.saturating_add(CLOCK_SKEW_SECS)
}

/// A private key in PEM. `Debug` prints `[redacted]`; the text is zeroized on drop.
pub struct PrivateKeyPem(Zeroizing<String>);

impl PrivateKeyPem {
    /// The PEM text, to be written to a file of mode 0600 or handed to rustls.
    /// Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Wraps PEM text read from disk (not checked here; loading it as a key does that).
    pub fn from_pem(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem([redacted])")
    }
}

/// A certificate issued by the cluster CA, with the facts the cluster records about it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// Lowercase hex of the raw serial number bytes (as [`PeerIdentity::serial_hex`]).
    pub serial_hex: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Key(e.to_string()))
}

/// An IP SAN if `s` parses as an IP address (rustls matches IPs only against IP SANs), else a
/// DNS name.
fn san(s: &str) -> Result<SanType, PkiError> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) if !s.is_empty() => s
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| PkiError::Invalid(format!("SAN {s:?} is neither an IP address nor an ASCII name"))),
        Err(_) => Err(PkiError::Invalid("empty SAN".into())),
    }
}

fn non_empty(value: &str, what: &str) -> Result<(), PkiError> {
    if value.is_empty() {
        return Err(PkiError::Invalid(format!("the {what} is empty")));
    }
    Ok(())
}

fn first_cert_der(cert_pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("no PEM certificate found: {e}")))
}

/// Parses one whole certificate; trailing bytes are an error.
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::Parse("trailing data after the certificate".into())),
        Err(e) => Err(PkiError::Parse(e.to_string())),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
    use std::time::{SystemTime, UNIX_EPOCH};

    const CLUSTER: &str = "c0ffee-cluster";
    const DAY: Duration = Duration::from_secs(86_400);

    fn provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        first_cert_der(pem).expect("PEM certificate")
    }

    fn roots(ca: &ClusterCa) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).expect("CA is a valid trust anchor");
        Arc::new(roots)
    }

    fn verify_client(ca: &ClusterCa, cert_pem: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder(roots(ca)).build().expect("verifier");
        verifier.verify_client_cert(&der(cert_pem), &[], UnixTime::now()).map(|_| ())
    }

    fn verify_server(ca: &ClusterCa, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder(roots(ca)).build().expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn now() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
    }

    fn node_cert(ca: &ClusterCa, id: u64, role: Role) -> IssuedCert {
        let csr = NodeKey::generate().expect("generate node key").csr_pem(&["127.0.0.1".into()]).expect("CSR");
        ca.sign_csr(&csr, id, role, CLUSTER, &["127.0.0.1".into(), "node1.example".into()], DAY).expect("sign CSR")
    }

    #[test]
    fn node_cert_parses_back_to_its_identity() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        for (id, role) in [(1, Role::Manager), (18_446_744_073_709_551_615, Role::Worker)] {
            let cert = node_cert(&ca, id, role);
            let peer = parse_peer(&der(&cert.cert_pem)).expect("parse peer");
            assert_eq!(peer.role, role);
            assert_eq!(peer.node_id, Some(id));
            assert_eq!(peer.name, id.to_string());
            assert_eq!(peer.cluster_id, CLUSTER);
            assert_eq!(peer.serial_hex, cert.serial_hex);
            assert_eq!(peer.serial_hex.len(), 32);
            assert_eq!(peer.not_before_unix, cert.not_before_unix);
            assert_eq!(peer.not_after_unix, cert.not_after_unix);
        }
    }

    #[test]
    fn serials_are_random() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        assert_ne!(node_cert(&ca, 1, Role::Manager).serial_hex, node_cert(&ca, 1, Role::Manager).serial_hex);
    }

    #[test]
    fn csr_subject_and_extensions_are_overridden() {
        provider();
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let key = NodeKey::generate().expect("generate node key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "evil");
        params.distinguished_name.push(DnType::OrganizationalUnitName, OU_ADMIN);
        params.distinguished_name.push(DnType::OrganizationName, "other-cluster");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.subject_alt_names = vec![san("evil.example").expect("SAN")];
        let csr = params.serialize_request(&key.key).and_then(|csr| csr.pem()).expect("CSR");

        let cert = ca.sign_csr(&csr, 7, Role::Worker, CLUSTER, &["127.0.0.1".into()], DAY).expect("sign CSR");
        let peer = parse_peer(&der(&cert.cert_pem)).expect("parse peer");
        assert_eq!((peer.role, peer.node_id, peer.name.as_str()), (Role::Worker, Some(7), "7"));
        assert_eq!(peer.cluster_id, CLUSTER);
        let d = der(&cert.cert_pem);
        let parsed = parse_cert(&d).expect("parse cert");
        assert!(!parsed.is_ca());
        let sans = parsed.subject_alternative_name().expect("SAN extension").expect("SANs present");
        assert_eq!(sans.value.general_names.len(), 1);
        assert!(verify_server(&ca, &cert.cert_pem, "evil.example").is_err());
        // A worker certificate is a client certificate only: it never passes as a server,
        // whatever address it names.
        let e = verify_server(&ca, &cert.cert_pem, "127.0.0.1").expect_err("worker as a server");
        assert!(format!("{e:?}").contains("ServerAuth"), "{e:?}");
        verify_client(&ca, &cert.cert_pem).expect("worker as a client");
        let manager = ca.sign_csr(&csr, 8, Role::Manager, CLUSTER, &["127.0.0.1".into()], DAY).expect("sign CSR");
        assert!(verify_server(&ca, &manager.cert_pem, "127.0.0.1").is_ok());
    }

    #[test]
    fn a_locked_managers_certificate_serves_but_is_no_client() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let csr = NodeKey::generate().expect("generate node key").csr_pem(&[]).expect("CSR");
        let cert = ca.sign_csr(&csr, 9, Role::Locked, CLUSTER, &["127.0.0.1".into()], DAY).expect("sign CSR");
        let peer = parse_peer(&der(&cert.cert_pem)).expect("parse peer");
        assert_eq!((peer.role, peer.node_id), (Role::Locked, Some(9)));
        assert!(verify_server(&ca, &cert.cert_pem, "127.0.0.1").is_ok());
        let e = verify_client(&ca, &cert.cert_pem).expect_err("a locked certificate as a client");
        assert!(format!("{e:?}").contains("ClientAuth"), "{e:?}");
    }

    #[test]
    fn validity_window_is_what_was_asked() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let before = now();
        let csr = NodeKey::generate().expect("generate node key").csr_pem(&[]).expect("CSR");
        let cert = ca.sign_csr(&csr, 3, Role::Manager, CLUSTER, &[], 30 * DAY).expect("sign CSR");
        let after = now();
        assert!((before - CLOCK_SKEW_SECS..=after - CLOCK_SKEW_SECS).contains(&cert.not_before_unix));
        assert_eq!(cert.not_after_unix - cert.not_before_unix, 30 * 86_400 + CLOCK_SKEW_SECS);

        let ca_cert = der(ca.cert_pem());
        let ca_parsed = parse_cert(&ca_cert).expect("parse CA cert");
        let ca_years = (ca_parsed.validity().not_after.timestamp() - now()) / (365 * 86_400);
        assert_eq!(ca_years, 20);
        assert!(ca_parsed.is_ca());
        let cn: Vec<_> = ca_parsed.subject().iter_common_name().map(|a| a.as_str().expect("string")).collect();
        let o: Vec<_> = ca_parsed.subject().iter_organization().map(|a| a.as_str().expect("string")).collect();
        assert_eq!((cn, o), (vec![CA_COMMON_NAME], vec![CLUSTER]));
    }

    #[test]
    fn absurd_validity_is_an_error() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let csr = NodeKey::generate().expect("generate node key").csr_pem(&[]).expect("CSR");
        let err = ca
            .sign_csr(&csr, 1, Role::Manager, CLUSTER, &[], Duration::from_secs(u64::MAX))
            .expect_err("absurd validity");
        assert!(matches!(err, PkiError::Invalid(_)), "{err}");
    }

    #[test]
    fn node_cert_chains_to_its_ca_only() {
        provider();
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let other = ClusterCa::generate(CLUSTER).expect("generate CA");
        let cert = node_cert(&ca, 1, Role::Manager);
        verify_client(&ca, &cert.cert_pem).expect("client cert verifies");
        verify_server(&ca, &cert.cert_pem, "127.0.0.1").expect("server cert verifies for its IP");
        verify_server(&ca, &cert.cert_pem, "node1.example").expect("server cert verifies for its name");
        assert!(verify_server(&ca, &cert.cert_pem, "127.0.0.2").is_err());
        assert!(verify_client(&other, &cert.cert_pem).is_err());
        assert!(verify_server(&other, &cert.cert_pem, "127.0.0.1").is_err());
    }

    #[test]
    fn ip_san_is_an_ip_address() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let cert = node_cert(&ca, 1, Role::Manager);
        let d = der(&cert.cert_pem);
        let parsed = parse_cert(&d).expect("parse cert");
        let names =
            &parsed.subject_alternative_name().expect("SAN extension").expect("SANs present").value.general_names;
        assert!(names.contains(&x509_parser::extensions::GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(names.contains(&x509_parser::extensions::GeneralName::DNSName("node1.example")));
    }

    #[test]
    fn admin_cert_is_client_only() {
        provider();
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let (cert, key) = ca.issue_admin("alice", CLUSTER, DAY).expect("issue admin");
        let peer = parse_peer(&der(&cert.cert_pem)).expect("parse peer");
        assert_eq!((peer.role, peer.node_id, peer.name.as_str()), (Role::Admin, None, "alice"));
        assert_eq!(peer.serial_hex, cert.serial_hex);
        verify_client(&ca, &cert.cert_pem).expect("client cert verifies");
        assert!(matches!(
            verify_server(&ca, &cert.cert_pem, "alice"),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose | rustls::CertificateError::InvalidPurposeContext { .. }
            ))
        ));
        NodeKey::from_pem(key.expose()).expect("admin key loads");
        let csr = NodeKey::generate().expect("generate node key").csr_pem(&[]).expect("CSR");
        assert!(ca.sign_csr(&csr, 1, Role::Admin, CLUSTER, &[], DAY).is_err());
    }

    #[test]
    fn debug_never_shows_private_keys() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let key = NodeKey::generate().expect("generate node key");
        let pem = key.key_pem();
        assert!(pem.expose().contains("PRIVATE KEY"));
        for debug in [format!("{ca:?}"), format!("{key:?}"), format!("{pem:?}"), format!("{:?}", ca.key_pem())] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
    }

    #[test]
    fn ca_round_trips_through_pem() {
        provider();
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem().expose()).expect("CA loads from PEM");
        let cert = node_cert(&loaded, 2, Role::Manager);
        verify_client(&ca, &cert.cert_pem).expect("client cert verifies");
        verify_server(&ca, &cert.cert_pem, "127.0.0.1").expect("server cert verifies for its IP");
        let key = NodeKey::generate().expect("generate node key");
        let reloaded = NodeKey::from_pem(key.key_pem().expose()).expect("node key reloads");
        assert_eq!(reloaded.key_pem().expose(), key.key_pem().expose());
    }

    #[test]
    fn ca_from_pem_rejects_mismatched_key_and_non_ca() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let other = ClusterCa::generate(CLUSTER).expect("generate CA");
        let err = ClusterCa::from_pem(ca.cert_pem(), other.key_pem().expose()).expect_err("mismatched key");
        assert!(matches!(err, PkiError::Key(_)), "{err}");
        let (leaf, leaf_key) = ca.issue_admin("bob", CLUSTER, DAY).expect("issue admin");
        assert!(matches!(ClusterCa::from_pem(&leaf.cert_pem, leaf_key.expose()), Err(PkiError::Parse(_))));
        assert!(ClusterCa::from_pem("not pem", ca.key_pem().expose()).is_err());
    }

    #[test]
    fn cert_digest_is_stable_and_distinct() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let other = ClusterCa::generate(CLUSTER).expect("generate CA");
        let d = cert_digest(ca.cert_pem()).expect("digest");
        assert_eq!(d, cert_digest(ca.cert_pem()).expect("digest"));
        assert_eq!(d, sha256(&der(ca.cert_pem())));
        let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem().expose()).expect("CA loads from PEM");
        assert_eq!(d, cert_digest(loaded.cert_pem()).expect("digest"));
        assert_ne!(d, cert_digest(other.cert_pem()).expect("digest"));
        assert!(cert_digest("garbage").is_err());
    }

    #[test]
    fn parse_peer_rejects_foreign_subjects() {
        let ca = ClusterCa::generate(CLUSTER).expect("generate CA");
        let key = generate_key().expect("generate key");
        let sign = |cn: Option<&str>, ou: Option<&str>, o: Option<&str>| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            for (ty, v) in
                [(DnType::CommonName, cn), (DnType::OrganizationalUnitName, ou), (DnType::OrganizationName, o)]
            {
                if let Some(v) = v {
                    params.distinguished_name.push(ty, v);
                }
            }
            params.signed_by(&key, &ca.issuer).expect("sign").der().to_vec()
        };
        assert!(parse_peer(&sign(Some("1"), Some(OU_MANAGER), Some(CLUSTER))).is_ok());
        for bad in [
            sign(Some("1"), Some("coffer-root"), Some(CLUSTER)),
            sign(None, Some(OU_MANAGER), Some(CLUSTER)),
            sign(Some("1"), None, Some(CLUSTER)),
            sign(Some("1"), Some(OU_WORKER), None),
            sign(Some("one"), Some(OU_WORKER), Some(CLUSTER)),
            sign(Some("01"), Some(OU_WORKER), Some(CLUSTER)),
            sign(Some("+1"), Some(OU_MANAGER), Some(CLUSTER)),
        ] {
            assert!(matches!(parse_peer(&bad), Err(PkiError::Parse(_))));
        }
        assert!(parse_peer(b"not der").is_err());
    }
}
