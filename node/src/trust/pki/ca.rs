//! The cluster root CA: generating and loading it, signing node CSRs, issuing admin client
//! certificates. The CA decides every field of what it signs; a CSR contributes its public
//! key only.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use x509_parser::time::ASN1Time;

use super::{
    first_cert_der, generate_key, hex, non_empty, parse_cert, san, sha256, IssuedCert, PkiError, PrivateKeyPem, Role,
    CA_COMMON_NAME, CA_VALIDITY, CLOCK_SKEW_SECS, SERIAL_LEN,
};

/// The cluster root CA: ECDSA P-256, valid 20 years, CN "Coffer Root CA", O = cluster id.
///
/// `Debug` shows the SHA-256 of the certificate, never the key.
pub struct ClusterCa {
    cert_pem: String,
    digest: [u8; 32],
    pub(super) issuer: Issuer<'static, KeyPair>,
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
        // A locked manager's certificate serves and nothing else: its key sits beside the
        // store under the key file, so whoever copies the data dir has it.
        params.extended_key_usages = match role {
            Role::Manager => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Role::Locked => vec![ExtendedKeyUsagePurpose::ServerAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| PkiError::Cert(e.to_string()))?;
        issued(cert.pem(), cert.der())
    }

    /// Signs an operator's CSR as an admin client certificate: CN = `name`, OU =
    /// [`super::OU_ADMIN`], O = `cluster_id`, EKU ClientAuth only, no SANs. As for nodes,
    /// only the CSR's public key is used: the key stays with the operator.
    ///
    /// # Errors
    /// When the CSR is invalid, `name` or `cluster_id` is empty, or `validity` is out of range.
    pub fn sign_admin_csr(
        &self,
        csr_pem: &str,
        name: &str,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        non_empty(name, "admin name")?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = leaf_params(name, Role::Admin, cluster_id, validity)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
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
