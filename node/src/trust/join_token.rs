//! Join tokens: what an operator hands a new node so that it can join the cluster.
//!
//! The text form is `COFFER-1-<CA digest>-<secret>`, both parts unpadded uppercase base32:
//! the CA digest is the SHA-256 of the root CA certificate (DER), which the joining node pins
//! before trusting anything the cluster sends; the secret is 128 random bits that prove the
//! node was invited.
//!
//! The cluster stores only [`JoinToken::hash`] of the secret and compares in constant time
//! ([`JoinToken::matches`]). The secret is zeroized on drop, never shown by `Debug`, and its
//! text only exists in the output of [`JoinToken::reveal`]. Parse errors say which part is
//! wrong and never echo the input.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Prefix of every token of this version.
const PREFIX: &str = "COFFER-1-";
/// Length in base32 characters of the 32-byte CA digest.
const DIGEST_CHARS: usize = 52;
/// Length in base32 characters of the 16-byte secret.
const SECRET_CHARS: usize = 26;
/// Total length of a token.
const TOKEN_CHARS: usize = PREFIX.len() + DIGEST_CHARS + 1 + SECRET_CHARS;
/// Domain separation for [`JoinToken::hash`].
const HASH_DOMAIN: &[u8] = b"coffer-join-token-v1\0";

/// Why a token text was rejected. Messages never contain the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The text is not a well-formed token; the message says which part is wrong.
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    /// The text is a Coffer token of a version this node does not understand.
    #[error("unsupported join token version (this node understands COFFER-1 tokens)")]
    UnsupportedVersion,
}

/// A join token: the pinned CA digest and the secret.
///
/// `Debug` shows a prefix of the CA digest and `[redacted]` for the secret.
pub struct JoinToken {
    ca_digest: [u8; 32],
    secret: Zeroizing<[u8; 16]>,
}

impl JoinToken {
    /// A new token for the CA whose certificate digest is `ca_digest`
    /// (see [`crate::trust::pki::cert_digest`]), with a secret from the OS RNG.
    pub fn generate(ca_digest: [u8; 32]) -> Self {
        let mut secret = Zeroizing::new([0u8; 16]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        Self { ca_digest, secret }
    }

    /// SHA-256 of the root CA certificate (DER) this token pins.
    pub fn ca_digest(&self) -> [u8; 32] {
        self.ca_digest
    }

    /// The token text, to show an operator once. The returned String is zeroized on drop.
    pub fn reveal(&self) -> Zeroizing<String> {
        // Allocated once at its final size, so no partial copy is left behind by a realloc.
        let mut text = Zeroizing::new(String::with_capacity(TOKEN_CHARS));
        text.push_str(PREFIX);
        BASE32_NOPAD.encode_append(&self.ca_digest, &mut text);
        text.push('-');
        BASE32_NOPAD.encode_append(self.secret.as_ref(), &mut text);
        text
    }

    /// SHA-256 over the secret, domain-separated: what the cluster stores instead of the
    /// token.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update(self.secret.as_ref());
        hasher.finalize().into()
    }

    /// Whether this token's [`hash`](Self::hash) is `stored_hash`, compared in constant time.
    pub fn matches(&self, stored_hash: &[u8; 32]) -> bool {
        self.hash().ct_eq(stored_hash).into()
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.ca_digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("JoinToken")
            .field("ca_digest", &format_args!("{prefix}…"))
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    /// Parses `COFFER-1-<CA digest>-<secret>`, ignoring surrounding whitespace. Strict:
    /// exact lengths, canonical uppercase base32, nothing extra.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix("COFFER-").ok_or(TokenError::Malformed("it does not start with COFFER-"))?;
        let (version, rest) = rest.split_once('-').ok_or(TokenError::Malformed("it has too few parts"))?;
        if version != "1" {
            return Err(if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
                TokenError::UnsupportedVersion
            } else {
                TokenError::Malformed("the version is not a number")
            });
        }
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::Malformed("it has too few parts"))?;
        if secret.contains('-') {
            return Err(TokenError::Malformed("it has too many parts"));
        }
        if digest.len() != DIGEST_CHARS {
            return Err(TokenError::Malformed("the CA digest part has the wrong length"));
        }
        if secret.len() != SECRET_CHARS {
            return Err(TokenError::Malformed("the secret part has the wrong length"));
        }
        let mut ca_digest = [0u8; 32];
        BASE32_NOPAD
            .decode_mut(digest.as_bytes(), &mut ca_digest)
            .map_err(|_| TokenError::Malformed("the CA digest part is not valid base32"))?;
        let mut secret_bytes = Zeroizing::new([0u8; 16]);
        BASE32_NOPAD
            .decode_mut(secret.as_bytes(), secret_bytes.as_mut())
            .map_err(|_| TokenError::Malformed("the secret part is not valid base32"))?;
        Ok(Self { ca_digest, secret: secret_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn round_trip() {
        let token = JoinToken::generate(digest(7));
        let text = token.reveal();
        assert_eq!(text.len(), TOKEN_CHARS);
        assert!(text.starts_with(PREFIX));
        let parsed: JoinToken = text.parse().expect("revealed token parses");
        assert_eq!(parsed.ca_digest(), digest(7));
        assert_eq!(parsed.hash(), token.hash());
        assert_eq!(*parsed.reveal(), *text);
        let padded: JoinToken = format!("  {}\n", text.as_str()).parse().expect("surrounding whitespace is trimmed");
        assert_eq!(padded.hash(), token.hash());
    }

    #[test]
    fn matches_only_its_own_hash() {
        let token = JoinToken::generate(digest(1));
        let other = JoinToken::generate(digest(1));
        assert!(token.matches(&token.hash()));
        assert!(!token.matches(&other.hash()));
        assert_ne!(token.hash(), other.hash());
        // The hash is domain-separated, not a bare SHA-256 of the secret.
        assert_ne!(token.hash(), <[u8; 32]>::from(Sha256::digest(token.secret.as_ref())));
    }

    #[test]
    fn malformed_tokens_are_rejected_without_echo() {
        let good = JoinToken::generate(digest(2)).reveal();
        let (head, secret) = good.rsplit_once('-').expect("token has parts");
        let digest_part = &head[PREFIX.len()..];
        let cases = [
            (format!("TOKEN-1-{digest_part}-{secret}"), "prefix"),
            (format!("coffer-1-{digest_part}-{secret}"), "prefix"),
            (format!("COFFER-2-{digest_part}-{secret}"), "version"),
            (format!("COFFER-X-{digest_part}-{secret}"), "version"),
            (good[..good.len() - 1].to_owned(), "secret"),
            (format!("COFFER-1-{}-{secret}", &digest_part[1..]), "digest"),
            (format!("COFFER-1-{digest_part}"), "parts"),
            (format!("COFFER-1-{digest_part}-{}1", &secret[..SECRET_CHARS - 1]), "secret base32"),
            (format!("COFFER-1-{}-{secret}", digest_part.to_lowercase()), "digest base32"),
            (format!("{}-{secret}", good.as_str()), "extra part"),
            (format!("{} {secret}", good.as_str()), "extra text"),
            (String::new(), "empty"),
        ];
        for (input, what) in cases {
            let err = input.parse::<JoinToken>().map(|_| ()).expect_err(what);
            let msg = err.to_string();
            assert!(!msg.contains(secret), "{what}: {msg}");
            assert!(!msg.contains(digest_part), "{what}: {msg}");
            assert!(input.is_empty() || !msg.contains(input.trim()), "{what}: {msg}");
        }
        assert_eq!(
            format!("COFFER-2-{digest_part}-{secret}").parse::<JoinToken>().map(|_| ()),
            Err(TokenError::UnsupportedVersion)
        );
    }

    #[test]
    fn non_canonical_trailing_bits_are_rejected() {
        // 26 base32 chars carry 130 bits; the last 2 must be zero for a 16-byte secret.
        let good = JoinToken::generate(digest(3)).reveal();
        let mut bad = good.to_string();
        let last = bad.pop().expect("non-empty");
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let index = alphabet.find(last).expect("base32 symbol");
        bad.push(alphabet.as_bytes()[index | 1] as char);
        assert!(bad.parse::<JoinToken>().is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = JoinToken::generate(digest(0xab));
        let text = token.reveal();
        let (_, secret) = text.rsplit_once('-').expect("token has parts");
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(!debug.contains(text.as_str()), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(debug.contains("abababab"), "{debug}");
    }
}
