//! What a verified peer certificate says about its holder, and the digest a join token pins.

use super::{first_cert_der, hex, parse_cert, sha256, PkiError, Role};

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
        Role::Manager | Role::Worker | Role::Locked => Some(
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
