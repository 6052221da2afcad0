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
//! OU = role ([`OU_MANAGER`], [`OU_WORKER`], [`OU_ADMIN`]), O = cluster id. The CA decides
//! all of it; whatever a CSR asks for is ignored.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::X509Certificate;
use x509_parser::time::ASN1Time;
use zeroize::Zeroizing;

/// The OU of a manager node's certificate.
pub const OU_MANAGER: &str = "coffer-manager";
/// The OU of a worker node's certificate.
pub const OU_WORKER: &str = "coffer-worker";
/// The OU of an admin client certificate.
pub const OU_ADMIN: &str = "coffer-admin";

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
}

impl Role {
    /// The OU that encodes this role in a certificate subject.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => OU_MANAGER,
            Role::Worker => OU_WORKER,
            Role::Admin => OU_ADMIN,
        }
    }

    fn from_ou(ou: &str) -> Option<Self> {
        [Role::Manager, Role::Worker, Role::Admin].into_iter().find(|r| r.ou() == ou)
    }
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

/// The cluster root CA: ECDSA P-256, valid 20 years, CN "Coffer Root CA", O = cluster id.
///
/// `Debug` shows the SHA-256 of the certificate, never the key.
pub struct ClusterCa {
    cert_pem: String,
    digest: [u8; 32],
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_sha256", &hex(&self.digest)).field("key", &"[redacted]").finish()
    }
}

impl ClusterCa {
    /// Generates a new root CA for the cluster `cluster_id`.
    ///
    /// # Errors
    /// When `cluster_id` is empty, or key or certificate generation fails.
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        non_empty(cluster_id, "cluster id")?;
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name.push(DnType::OrganizationName, cluster_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key).map_err(|e| PkiError::Cert(e.to_string()))?;
        let cert_pem = cert.pem();
        let digest = sha256(cert.der());
        Ok(Self { cert_pem, digest, issuer: Issuer::new(params, key) })
    }

    /// Loads a CA from its certificate and private key, both PEM.
    ///
    /// # Errors
    /// When the certificate cannot be parsed or is not a CA, or the key cannot be parsed or
    /// is not the certificate's key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = first_cert_der(cert_pem)?;
        let cert = parse_cert(&der)?;
        if !cert.is_ca() {
            return Err(PkiError::Parse("the CA certificate is not a CA (basic constraints)".into()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Key(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::Key("the CA private key does not match the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(Self { cert_pem: cert_pem.to_owned(), digest: sha256(&der), issuer })
    }

    /// The CA certificate in PEM: what every node and client trusts as its only root.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM, to persist (encrypted or mode 0600) on managers.
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem::from_pem(self.issuer.key().serialize_pem())
    }

    /// Signs a node's CSR: CN = node id (decimal), OU = `role.ou()`, O = `cluster_id`,
    /// SANs = `sans` (IP addresses or DNS names), EKU ServerAuth and ClientAuth for managers, ClientAuth only for workers, validity
    /// now - 5 min .. now + `validity`, random 16-byte positive serial.
    ///
    /// Only the CSR's public key is used (after its signature is verified); whatever subject,
    /// SANs or extensions it asked for are ignored.
    ///
    /// # Errors
    /// When the CSR is invalid, `role` is [`Role::Admin`] (admin certificates come from
    /// [`ClusterCa::issue_admin`]), `cluster_id` is empty, a SAN is neither an IP address nor
    /// an ASCII name, or `validity` is out of range.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: u64,
        role: Role,
        cluster_id: &str,
        sans: &[String],
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if role == Role::Admin {
            return Err(PkiError::Invalid("node CSRs cannot be signed for the admin role".into()));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = leaf_params(&node_id.to_string(), role, cluster_id, validity)?;
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        // Only managers serve TLS. A worker's certificate (and anyone who holds the worker
        // token can get one, with the SAN of its choice) must never pass as a server: its
        // EKU is ClientAuth alone, so rustls refuses it on the client side of a handshake.
        params.extended_key_usages = match role {
            Role::Manager => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| PkiError::Cert(e.to_string()))?;
        issued(cert.pem(), cert.der())
    }

    /// Issues an admin client certificate with a key generated here: CN = `name`,
    /// OU = [`OU_ADMIN`], O = `cluster_id`, EKU ClientAuth only, no SANs.
    ///
    /// # Errors
    /// When `name` or `cluster_id` is empty, `validity` is out of range, or generation fails.
    pub fn issue_admin(
        &self,
        name: &str,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<(IssuedCert, PrivateKeyPem), PkiError> {
        non_empty(name, "admin name")?;
        let key = generate_key()?;
        let mut params = leaf_params(name, Role::Admin, cluster_id, validity)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| PkiError::Cert(e.to_string()))?;
        Ok((issued(cert.pem(), cert.der())?, PrivateKeyPem::from_pem(key.serialize_pem())))
    }
}

/// A node's own key pair (ECDSA P-256), generated locally: the key never leaves the node,
/// only CSRs do. `Debug` is redacted.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").field("key", &"[redacted]").finish()
    }
}

impl NodeKey {
    /// Generates a new P-256 key pair.
    ///
    /// # Errors
    /// When the crypto provider fails to generate a key.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self { key: generate_key()? })
    }

    /// Loads a key pair from PEM (PKCS#8).
    ///
    /// # Errors
    /// When the PEM is not a supported private key.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Ok(Self { key: KeyPair::from_pem(pem).map_err(|e| PkiError::Key(e.to_string()))? })
    }

    /// The private key in PEM, to persist with mode 0600.
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem::from_pem(self.key.serialize_pem())
    }

    /// A CSR (PEM) for this key. Its (empty) subject and `sans` are advisory: the CA
    /// overrides them.
    ///
    /// # Errors
    /// When a SAN is neither an IP address nor an ASCII name, or signing fails.
    pub fn csr_pem(&self, sans: &[String]) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        let csr = params.serialize_request(&self.key).map_err(|e| PkiError::Cert(e.to_string()))?;
        csr.pem().map_err(|e| PkiError::Cert(e.to_string()))
    }
}

/// SHA-256 of the DER of the first certificate in `cert_pem` (what a join token pins).
///
/// # Errors
/// When `cert_pem` holds no PEM certificate.
pub fn cert_digest(cert_pem: &str) -> Result<[u8; 32], PkiError> {
    Ok(sha256(&first_cert_der(cert_pem)?))
}

/// What a peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role, from the OU.
    pub role: Role,
    /// The node id, from the CN, for managers and workers; `None` for admins.
    pub node_id: Option<u64>,
    /// The CN as written (node id in decimal, or admin name).
    pub name: String,
    /// The cluster id, from the O.
    pub cluster_id: String,
    /// Lowercase hex of the raw serial number bytes.
    pub serial_hex: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Reads the identity out of a peer certificate (DER).
///
/// This does not verify the certificate: call it only on a certificate rustls has already
/// verified against the cluster CA.
///
/// # Errors
/// When the DER cannot be parsed, or the subject lacks exactly one CN, OU and O, the OU is not
/// a Coffer role, or a manager's or worker's CN is not a canonical decimal node id.
pub fn parse_peer(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let cert = parse_cert(cert_der)?;
    let subject = cert.subject();
    let name = single(subject.iter_common_name(), "common name (CN)")?;
    let ou = single(subject.iter_organizational_unit(), "organizational unit (OU)")?;
    let cluster_id = single(subject.iter_organization(), "organization (O)")?;
    let role = Role::from_ou(ou).ok_or_else(|| PkiError::Parse("the OU is not a Coffer role".into()))?;
    let node_id = match role {
        Role::Admin => None,
        Role::Manager | Role::Worker => Some(
            name.parse::<u64>()
                .ok()
                .filter(|id| id.to_string() == name)
                .ok_or_else(|| PkiError::Parse("the CN of a node certificate is not a node id".into()))?,
        ),
    };
    Ok(PeerIdentity {
        role,
        node_id,
        name: name.to_owned(),
        cluster_id: cluster_id.to_owned(),
        serial_hex: hex(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// Parameters shared by every leaf certificate: subject, not a CA, key usage, random serial,
/// validity. EKUs and SANs are the caller's.
fn leaf_params(cn: &str, role: Role, cluster_id: &str, validity: Duration) -> Result<CertificateParams, PkiError> {
    non_empty(cluster_id, "cluster id")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.ou());
    params.distinguished_name.push(DnType::OrganizationName, cluster_id);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity)?;
    Ok(params)
}

/// Sets validity to now - [`CLOCK_SKEW_SECS`] .. now + `validity` (whole seconds).
fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), PkiError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| PkiError::Invalid("the system clock is before 1970".into()))?;
    let too_long = || PkiError::Invalid("validity is too long".into());
    let not_after = i64::try_from(validity.as_secs()).ok().and_then(|v| now.checked_add(v)).ok_or_else(too_long)?;
    params.not_before = ASN1Time::from_timestamp(now - CLOCK_SKEW_SECS).map_err(|_| too_long())?.to_datetime();
    params.not_after = ASN1Time::from_timestamp(not_after).map_err(|_| too_long())?.to_datetime();
    Ok(())
}

/// A random positive serial of exactly [`SERIAL_LEN`] bytes: the top bit is cleared (positive)
/// and the next one set (so DER keeps all 16 bytes and the raw serial equals these bytes).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
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

/// The facts about a certificate just issued, read back from its DER so that they agree with
/// what [`parse_peer`] will report.
fn issued(cert_pem: String, der: &[u8]) -> Result<IssuedCert, PkiError> {
    let cert = parse_cert(der)?;
    Ok(IssuedCert {
        serial_hex: hex(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        cert_pem,
    })
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

/// The one attribute of a kind in a subject, as a string.
fn single<'a, 'b: 'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
    what: &str,
) -> Result<&'a str, PkiError> {
    let value = values.next().ok_or_else(|| PkiError::Parse(format!("the subject has no {what}")))?;
    if values.next().is_some() {
        return Err(PkiError::Parse(format!("the subject has more than one {what}")));
    }
    value.as_str().map_err(|_| PkiError::Parse(format!("the {what} is not a string")))
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
