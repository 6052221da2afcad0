//! A node's own key pair and its certificate signing requests.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::{generate_key, san, PkiError, PrivateKeyPem};

/// A node's own key pair (ECDSA P-256), generated locally: the key never leaves the node,
/// only CSRs do. `Debug` is redacted.
pub struct NodeKey {
    pub(super) key: KeyPair,
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
