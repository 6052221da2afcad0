//! Encryption at rest: every value this crate writes to disk passes through [`Sealer`].
//!
//! Owns the per-manager *data key* (DEK) and the XChaCha20-Poly1305 framing of sealed
//! values. The data key itself is stored only wrapped by a [`KeyEncryptionKey`] (KEK); where
//! the KEK comes from (a key file beside the data dir, or a key derived from the cluster's
//! unlock key under autolock) is the caller's business, which is why it is a trait.
//!
//! Invariant: a sealed value is `nonce (24 bytes) || ciphertext || tag (16 bytes)` and its
//! associated data names exactly where it lives ([`Aad`]); moving a ciphertext to another
//! column family or key, or flipping any bit of it, makes [`Sealer::open`] fail. It never
//! yields wrong plaintext.
//!
//! Must never: log, format or persist a key or a plaintext. Key types redact `Debug` and
//! zeroize on drop.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a data key or a key-encryption key, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Why a sealed value could not be opened. Deliberately coarse: the AEAD does not say
/// whether the key, the associated data or the bytes were wrong, and neither do we.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is {0} bytes, shorter than the {SEAL_OVERHEAD}-byte minimum")]
    TooShort(usize),
    #[error("authentication failed: the value was altered, moved, or sealed under another key")]
    Unauthentic,
    #[error("encryption failed")]
    Encrypt,
}

/// 32 bytes of key material that never print and are wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyBytes([u8; KEY_LEN]);

impl KeyBytes {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Takes ownership of raw key bytes (the caller's copy should be zeroized by the caller).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key from a slice, refusing any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The raw bytes, for handing to a cipher or writing wrapped. Never log them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes([redacted])")
    }
}

/// Associated data: binds a ciphertext to the place it belongs.
///
/// Built as `coffer/v1/<domain>\0<location>`; the domain is a column family or a file kind,
/// the location is the key (or chunk coordinates) within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    pub fn new(domain: &str, location: &[u8]) -> Self {
        let mut v = Vec::with_capacity(10 + domain.len() + 1 + location.len());
        v.extend_from_slice(b"coffer/v1/");
        v.extend_from_slice(domain.as_bytes());
        v.push(0);
        v.extend_from_slice(location);
        Self(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Seals and opens values under one key with XChaCha20-Poly1305 and random 192-bit nonces
/// (random nonces are safe at this size: no counter to persist, no reuse across restarts).
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    pub fn new(key: &KeyBytes) -> Self {
        Self { cipher: XChaCha20Poly1305::new(key.expose().into()) }
    }

    /// Seals `plaintext` for the place `aad` names.
    ///
    /// # Errors
    /// Only if the AEAD refuses (it does not for inputs under 256 GiB).
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Like [`Sealer::seal`], appending to `out` (lets callers reuse one buffer).
    pub fn seal_into(&self, aad: &Aad, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| SealError::Encrypt)?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(())
    }

    /// Opens a value sealed for `aad`. The plaintext is zeroized when dropped.
    ///
    /// # Errors
    /// [`SealError::TooShort`] for a truncated value, [`SealError::Unauthentic`] for any
    /// altered byte, wrong place or wrong key.
    pub fn open(&self, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::TooShort(sealed.len()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Unauthentic)
    }
}

/// Wraps and unwraps the data key. Implementations decide where their own key lives.
///
/// Boundary: the storage code only ever calls these two methods; adding a KEK source (an
/// unlock key under autolock, an HSM, a cloud KMS) never touches the storage code.
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// A short, stable, non-secret name of this KEK kind, recorded beside the wrapped key so
    /// that a store opened with the wrong kind of KEK says so.
    fn kind(&self) -> &'static str;

    /// Seals the data key.
    ///
    /// # Errors
    /// When the backend cannot seal (never, for the local implementation).
    fn wrap(&self, data_key: &KeyBytes) -> Result<Vec<u8>, SealError>;

    /// Opens a wrapped data key.
    ///
    /// # Errors
    /// [`SealError::Unauthentic`] when this KEK did not wrap it (wrong key, wrong unlock key).
    fn unwrap(&self, wrapped: &[u8]) -> Result<KeyBytes, SealError>;

    /// Seals a small file that lives beside the store (a node's TLS key), bound to `what`.
    ///
    /// # Errors
    /// When the backend cannot seal.
    fn seal_file(&self, what: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;

    /// Opens what [`KeyEncryptionKey::seal_file`] sealed for the same `what`.
    ///
    /// # Errors
    /// [`SealError::Unauthentic`] for another key, another `what`, or altered bytes.
    fn open_file(&self, what: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// A KEK held in memory: the key of a local key file, or one derived from an unlock key.
#[derive(Debug)]
pub struct LocalKek {
    sealer: Sealer,
    kind: &'static str,
}

impl LocalKek {
    /// A KEK from 32 bytes of key material; `kind` names its source (e.g. `"key-file"`).
    pub fn new(key: &KeyBytes, kind: &'static str) -> Self {
        Self { sealer: Sealer::new(key), kind }
    }

    fn aad() -> Aad {
        Aad::new("data-key", b"")
    }
}

impl KeyEncryptionKey for LocalKek {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn wrap(&self, data_key: &KeyBytes) -> Result<Vec<u8>, SealError> {
        self.sealer.seal(&Self::aad(), data_key.expose())
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<KeyBytes, SealError> {
        let plain = self.sealer.open(&Self::aad(), wrapped)?;
        KeyBytes::from_slice(&plain).ok_or(SealError::Unauthentic)
    }

    fn seal_file(&self, what: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.sealer.seal(&Aad::new("file", what.as_bytes()), plaintext)
    }

    fn open_file(&self, what: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.sealer.open(&Aad::new("file", what.as_bytes()), sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&KeyBytes::generate());
        let here = Aad::new("sm", b"secret/1");
        let sealed = s.seal(&here, b"hunter2").expect("seal");
        assert_eq!(&s.open(&here, &sealed).expect("open")[..], b"hunter2");
        // Same bytes, other place: refused.
        assert_eq!(s.open(&Aad::new("sm", b"secret/2"), &sealed), Err(SealError::Unauthentic));
        assert_eq!(s.open(&Aad::new("log", b"secret/1"), &sealed), Err(SealError::Unauthentic));
        // Any flipped bit: refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(s.open(&here, &bad), Err(SealError::Unauthentic), "byte {i}");
        }
        assert_eq!(s.open(&here, &sealed[..10]), Err(SealError::TooShort(10)));
        // Other key: refused.
        let other = Sealer::new(&KeyBytes::generate());
        assert_eq!(other.open(&here, &sealed), Err(SealError::Unauthentic));
    }

    #[test]
    fn kek_wraps_and_refuses_the_wrong_kek() {
        let kek = LocalKek::new(&KeyBytes::generate(), "test");
        let dek = KeyBytes::generate();
        let wrapped = kek.wrap(&dek).expect("wrap");
        assert!(!wrapped.windows(KEY_LEN).any(|w| w == dek.expose()), "wrapped key holds the plain key");
        assert_eq!(kek.unwrap(&wrapped).expect("unwrap").expose(), dek.expose());
        let wrong = LocalKek::new(&KeyBytes::generate(), "test");
        assert_eq!(wrong.unwrap(&wrapped).map(|_| ()), Err(SealError::Unauthentic));
    }

    #[test]
    fn keys_do_not_print() {
        let k = KeyBytes::from_bytes([0x41; KEY_LEN]);
        let shown = format!("{k:?} {:?}", Sealer::new(&k));
        assert!(!shown.contains("65") && !shown.contains("AAAA"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
