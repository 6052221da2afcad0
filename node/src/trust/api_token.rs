//! API tokens: `COFFER-API-<id>-<secret>`. The id (16 hex digits) finds the record; the
//! 128-bit secret (base32) is checked against the stored hash in constant time. Only the
//! hash is ever stored, so a token is shown once, at creation.

use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const PREFIX: &str = "COFFER-API-";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 16;

pub struct ApiToken {
    id: String,
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken").field("id", &self.id).field("secret", &"[redacted]").finish()
    }
}

impl ApiToken {
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        Self { id: crate::local::ids::random_hex(ID_LEN / 2), secret }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text to hand to the operator, once.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}-{}", self.id, data_encoding::BASE32_NOPAD.encode(self.secret.as_ref())))
    }

    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"coffer-api-token-v1\0");
        h.update(self.secret.as_ref());
        h.finalize().into()
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        self.hash().ct_eq(stored).into()
    }
}

/// Why a presented token is not one. Never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed API token")]
pub struct MalformedToken;

impl FromStr for ApiToken {
    type Err = MalformedToken;

    fn from_str(s: &str) -> Result<Self, MalformedToken> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(MalformedToken)?;
        let (id, secret) = rest.split_once('-').ok_or(MalformedToken)?;
        if id.len() != ID_LEN || !id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return Err(MalformedToken);
        }
        let bytes = Zeroizing::new(data_encoding::BASE32_NOPAD.decode(secret.as_bytes()).map_err(|_| MalformedToken)?);
        let arr: [u8; SECRET_LEN] = bytes.as_slice().try_into().map_err(|_| MalformedToken)?;
        Ok(Self { id: id.to_string(), secret: Zeroizing::new(arr) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let t = ApiToken::generate();
        let text = t.reveal();
        let back: ApiToken = text.parse().expect("parse");
        assert_eq!(back.id(), t.id());
        assert!(back.matches(&t.hash()));
        assert!(!ApiToken::generate().matches(&t.hash()));
        assert!(!format!("{t:?}").contains(text.rsplit('-').next().expect("secret part")));
        for bad in ["", "COFFER-API-", "COFFER-API-zz-AAAA", &text[..text.len() - 1], &format!("{}A", text.as_str())] {
            assert!(bad.parse::<ApiToken>().is_err(), "{bad:?}");
        }
    }
}
