//! The cluster's unlock key under autolock (`COFFER-KEY-1-...`: 256 random bits), and the
//! key-encryption key each manager derives from it for its own store.
//!
//! Invariant: the unlock key is never written to disk in plaintext and never logged; a
//! manager's KEK is HKDF-SHA256 of the unlock key bound to the cluster and the manager, so
//! one manager's KEK opens no other manager's store.

use coffer_raft_store::seal::{KeyBytes, LocalKek};
use zeroize::Zeroizing;

/// The `kind` recorded in a store sealed under an unlock key.
pub const KIND: &str = "unlock-key";
const PREFIX: &str = "COFFER-KEY-1-";

/// An unlock key. Redacted in `Debug`; wiped on drop.
#[derive(Clone)]
pub struct UnlockKey(KeyBytes);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey([redacted])")
    }
}

/// Why a text is not an unlock key (never quoting it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an unlock key: expected {PREFIX} followed by 52 base32 characters")]
pub struct NotAnUnlockKey;

impl UnlockKey {
    pub fn generate() -> Self {
        Self(KeyBytes::generate())
    }

    pub fn from_key(key: KeyBytes) -> Self {
        Self(key)
    }

    pub fn key(&self) -> &KeyBytes {
        &self.0
    }

    /// The text shown to the operator once.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(self.0.expose())))
    }

    /// Reads a key as the operator types or pipes it (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`NotAnUnlockKey`] for anything else.
    pub fn parse(text: &str) -> Result<Self, NotAnUnlockKey> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(NotAnUnlockKey)?;
        let bytes = Zeroizing::new(data_encoding::BASE32_NOPAD.decode(body.as_bytes()).map_err(|_| NotAnUnlockKey)?);
        KeyBytes::from_slice(&bytes).map(Self).ok_or(NotAnUnlockKey)
    }

    /// The key-encryption key of manager `node_id` of cluster `cluster_id`.
    pub fn kek_for(&self, cluster_id: &str, node_id: u64) -> LocalKek {
        let mut info = b"coffer/v1/autolock-kek\0".to_vec();
        info.extend_from_slice(cluster_id.as_bytes());
        info.push(0);
        info.extend_from_slice(&node_id.to_be_bytes());
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"coffer autolock"), self.0.expose());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail.
        let _ = hk.expand(&info, out.as_mut_slice());
        LocalKek::new(&KeyBytes::from_bytes(*out), KIND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_raft_store::seal::KeyEncryptionKey;

    #[test]
    fn keys_read_back_and_bind_each_manager() {
        let k = UnlockKey::generate();
        let text = k.reveal();
        assert!(text.starts_with("COFFER-KEY-1-") && text.len() == 13 + 52, "{}", text.len());
        let back = UnlockKey::parse(&format!("  {}\n", text.as_str())).expect("parse");
        let wrapped = k.kek_for("c1", 7).wrap(&KeyBytes::generate()).expect("wrap");
        assert!(back.kek_for("c1", 7).unwrap(&wrapped).is_ok(), "the same key and manager");
        assert!(back.kek_for("c1", 8).unwrap(&wrapped).is_err(), "another manager");
        assert!(back.kek_for("c2", 7).unwrap(&wrapped).is_err(), "another cluster");
        assert!(UnlockKey::generate().kek_for("c1", 7).unwrap(&wrapped).is_err(), "another key");
        for bad in ["", "COFFER-KEY-1-", "COFFER-KEY-2-AAAA", &text[..text.len() - 1], "hunter2"] {
            assert!(UnlockKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{k:?}").contains(&text[13..]));
    }
}
